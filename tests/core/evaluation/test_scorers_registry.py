"""The scorer families' uniform interface: every family declares its files, runner, metrics and headline."""

from __future__ import annotations

import inspect

import pytest

from core.evaluation.scorers import FAMILIES, ScorerInputError, data_listing

RUNNERS = {"short_answer", "letter", "caption", "long_answer"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_interface(name: str) -> None:
    family = FAMILIES[name]
    assert family.name == name and family.runner in RUNNERS
    assert family.headline in family.metrics and len(set(family.metrics)) == len(family.metrics)
    assert family.files and all(f.role and f.name and f.source for f in family.files)
    assert list(inspect.signature(family.read).parameters)[0] == "paths"
    score_params = list(inspect.signature(family.score).parameters)
    assert score_params[:2] == ["samples", "predictions"]
    assert ("judge" in score_params) == family.needs_judge
    lines = data_listing(name)
    assert len(lines) == len(family.files) and all(" <- " in line for line in lines)


def test_the_papers_benchmarks_are_all_registered() -> None:
    assert {
        "vqav2",
        "vizwiz",
        "mmbench",
        "mmbench_cn",
        "mme",
        "mmvp",
        "ocrbench",
        "seedbench",
        "mmmu",
    } <= set(FAMILIES)
    assert {"coco_caption", "mmvet", "llava_wild"} <= set(FAMILIES)


def test_unknown_family_is_named() -> None:
    with pytest.raises(ScorerInputError, match="unknown benchmark family 'mmbench_jp'"):
        data_listing("mmbench_jp")

"""sea.words.source: the caption regex, a file, the 2of12 list, parsed noun phrases, and the EMNLP join."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import yaml

from core.config import TrialConfig, WordsConfig
from core.labels.step import label_words
from core.labels.syntax import syntactic_words
from core.labels.word_sources import WORD_SOURCES, WordsRequest, source_words
from core.labels.words import TWO_OF_TWELVE_COUNT, caption_words, join_words, read_2of12
from core.pipeline import label_steps
from grid.cli import main

CAPTIONS = [
    "A small red dog sits on the green grass.",
    "The red dog runs next to two wooden chairs.",
    "Two wooden chairs stand on the green grass near a man.",
    "A man on a bicycle.",
]


def _captions(tmp_path: Path) -> Path:
    records = [
        {"id": str(k), "image": f"{k}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the dog and the chairs."}, {"from": "gpt", "value": c}]}
        for k, c in enumerate(CAPTIONS)
    ]  # fmt: skip
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(records))
    return path


def _two_of_twelve(tmp_path: Path, count: int = TWO_OF_TWELVE_COUNT) -> Path:
    # A generated stand-in with the real list's size; "dog" and "grass" overlap the captions' terms.
    words = ["dog", "grass", *(f"w{k}" for k in range(count - 2))]
    path = tmp_path / "2of12.txt"
    path.write_text("\r\n".join(words) + "\r\n")  # 12dicts ships DOS line ends
    return path


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_noun_phrases_from_the_parser(tmp_path: Path) -> None:
    words = syntactic_words(_captions(tmp_path), min_count=2)
    # Nouns, adjectives and multi-word noun phrases that occur twice; sorted by count then alphabet.
    # "small" occurs once but is an attribute word, kept as caption_words keeps it.
    assert words == [
        "chairs", "dog", "grass", "green", "green grass", "man", "red", "wooden", "wooden chairs", "small"
    ]  # fmt: skip
    # The regex over the same captions keeps verbs and numbers-as-words and has no phrases.
    regex = caption_words(_captions(tmp_path), min_count=2)
    assert "two" in regex and "two" not in words
    assert not {w for w in regex if " " in w}
    rare = syntactic_words(_captions(tmp_path), min_count=1, max_words=12)
    assert "bicycle" in syntactic_words(_captions(tmp_path), min_count=1) and len(rare) == 12
    assert "sits" not in syntactic_words(_captions(tmp_path), min_count=1)  # a verb, outside every NP
    assert "small red dog" in syntactic_words(_captions(tmp_path), min_count=1)
    with pytest.raises(ValueError, match="no noun phrase survives min_count=9"):
        syntactic_words(_captions(tmp_path), min_count=9, attribute_words=())


def test_2of12_is_checked_for_the_papers_count(tmp_path: Path) -> None:
    words = read_2of12(_two_of_twelve(tmp_path))
    assert len(words) == TWO_OF_TWELVE_COUNT and words[:2] == ["dog", "grass"]
    with pytest.raises(
        ValueError, match=f"41241 words, but the papers' 2of12 list has {TWO_OF_TWELVE_COUNT}"
    ):
        read_2of12(_two_of_twelve(tmp_path, TWO_OF_TWELVE_COUNT - 1))
    with pytest.raises(ValueError, match="no such file; put the 2of12 list there"):
        read_2of12(tmp_path / "absent.txt")


def test_every_source_builds_its_list(tmp_path: Path) -> None:
    captions, listed = _captions(tmp_path), _two_of_twelve(tmp_path)
    request = WordsRequest(captions, str(listed), 2, None)
    built = {source: source_words(source, request) for source in WORD_SOURCES}
    assert built["captions"] == caption_words(captions)
    assert built["2of12"] == built["file"] == read_2of12(listed)
    assert built["syntactic"] == syntactic_words(captions)
    # EMNLP: the corpus' terms first, then the 2of12 words they lack (dog, grass not repeated).
    joined = built["syntactic+2of12"]
    assert joined[: len(built["syntactic"])] == built["syntactic"]
    assert len(joined) == len(built["syntactic"]) + TWO_OF_TWELVE_COUNT - 2
    assert join_words(["b", "a"], ["a", "c"]) == ["b", "a", "c"]


def test_config_sources_match_the_registry() -> None:
    allowed = typing.get_args(WordsConfig.model_fields["source"].annotation)
    assert set(allowed) == set(WORD_SOURCES)
    assert WordsConfig().source == "captions"  # tiny offline specs (and their pinned ids) keep the regex


def test_a_trial_labels_with_its_configured_source(tmp_path: Path) -> None:
    captions = _captions(tmp_path)
    cfg = TrialConfig.model_validate({
        "method": {"name": "sea", "sea": {"words": {"source": "syntactic"}}},
        "data": {"stage1": {"source": "llava", "name": "c", "json_path": str(captions), "image_root": str(tmp_path)}},
    })  # fmt: skip
    step = label_steps(cfg)[0]
    assert label_words(step.config, captions) == syntactic_words(captions)
    regex = cfg.model_copy(update={"method": cfg.method.model_copy(update={"sea": cfg.method.sea.model_copy(
        update={"words": WordsConfig()})})})  # fmt: skip
    assert label_steps(regex)[0].hash != step.hash  # a different list is a different store


def test_data_check_counts_the_2of12_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    captions = _captions(tmp_path)
    (tmp_path / "0.png").write_bytes(b"")
    listed = _two_of_twelve(tmp_path, 100)
    spec = {"name": "w", "base": {
        "method": {"name": "sea", "sea": {"words": {"source": "syntactic+2of12", "path": str(listed)}}},
        "data": {"stage1": {"source": "llava", "name": "c", "json_path": str(captions), "image_root": str(tmp_path)}},
    }}  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["data", str(path)]) == 1
    out = capsys.readouterr().out
    assert "[MISSING] SEA 2of12 word list (41,242 words)" in out and "100 words, but" in out
    assert "12dicts" in out
    _two_of_twelve(tmp_path)
    main(["data", str(path)])
    assert "[ok] SEA 2of12 word list" in capsys.readouterr().out

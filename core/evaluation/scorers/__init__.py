"""Benchmark families scored as their official evaluation code does (one module per family).

Interface (every family is a `common.Family`, listed once in `FAMILIES` below):

- `files`: the `DataFile`s it needs (role, usual name, where to get it); `just data SPEC` lists them and
  `read` names the missing one.
- `read(paths: Mapping[role, Path]) -> list[Sample]`: the benchmark's official files -> typed, frozen
  samples, each with a unique `id` (str) and its image (`image: Path`, MMBench: encoded bytes, MMMU:
  `images`). A malformed file raises `ScorerInputError` naming the file, the row and the field.
- `prompt(sample) -> str`: the user text LLaVA-1.5 (or, where LLaVA has none, lmms-eval) asks, without the
  image token or chat template (the runner adds both). Multiple-choice samples carry their `options` in
  the order shown; the prompt already lists them as "A. ...".
- `runner`: how to generate: "short_answer" (greedy, a word or phrase), "letter" (greedy, an option
  letter), "caption" (greedy, one sentence), "long_answer" (greedy, free text up to ~1024 tokens).
  CircularEval needs nothing special from the runner: `mmbench.read` returns every rotated pass as its own
  sample (ids index + r * 1e6, MMBench's numbering), so the runner asks each sample once.
- `score(samples, predictions: dict[id, raw generated text]) -> dict[str, float]`: the official
  parsing and aggregation; every sample needs a prediction. Judged families (`needs_judge`) take
  `judge=judge.Judge(...)` and return `judge.JudgedMetrics`, whose `judge_model` belongs in the result.
- Options a spec may pass through: `mmbench.read(paths, lang)`, `scienceqa.read(paths, split)`,
  `mmmu.score(..., seed)` (the fallback letter's seed), `seedbench.score(..., first_character)`,
  `captions.score(..., spice)`.
- `metrics`: the fixed metric names (declared once as constants in the family's module; per-category
  names are `<PREFIX><name>`); `headline`: the number a paper table shows.
- Submission files for the evaluation servers: `vqa.write_vqav2_submission`, `vqa.write_vizwiz_submission`,
  `mmbench.write_submission` (xlsx).
"""

from __future__ import annotations

from core.evaluation.scorers import (
    captions,
    llava_wild,
    mmbench,
    mme,
    mmmu,
    mmvet,
    mmvp,
    ocrbench,
    scienceqa,
    seedbench,
    vqa,
)
from core.evaluation.scorers.common import DataFile, Family, ScorerInputError

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        vqa.VQAV2,
        vqa.VIZWIZ,
        mmbench.EN,
        mmbench.CN,
        mme.FAMILY,
        mmvp.FAMILY,
        ocrbench.FAMILY,
        seedbench.FAMILY,
        mmmu.FAMILY,
        scienceqa.FAMILY,
        captions.FAMILY,
        mmvet.FAMILY,
        llava_wild.FAMILY,
    )
}


def data_listing(name: str) -> list[str]:
    """One line per file a family needs, for `just data`: role, usual name, where to get it."""
    if name not in FAMILIES:
        raise ScorerInputError(f"unknown benchmark family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return [f"{f.role}: {f.name} <- {f.source}" for f in FAMILIES[name].files]


__all__ = ["FAMILIES", "DataFile", "Family", "ScorerInputError", "data_listing"]

"""MME: the release folder's question files, the yes/no prompt, and acc / acc+ / score per subtask with the totals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.evaluation.scorers.common import (
    SHORT_ANSWER_INSTRUCTION,
    DataFile,
    Family,
    ScorerInputError,
    predictions_for,
    require,
)

PERCEPTION = "perception"
COGNITION = "cognition"
TOTAL = "total"
SUBTASK_PREFIX = "subtask/"
# Per subtask: f"{SUBTASK_PREFIX}{name}/{ACC}" etc. acc and acc+ in percent, score = acc + acc+ (max 200).
ACC = "acc"
ACC_PLUS = "acc_plus"
SCORE = "score"
METRICS: tuple[str, ...] = (PERCEPTION, COGNITION, TOTAL)

PERCEPTION_SUBTASKS = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION_SUBTASKS = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")

FILES = (
    DataFile(
        "root",
        "MME_Benchmark_release_version/ (one folder per subtask: images + question .txt files)",
        "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation (apply by e-mail)",
    ),
)
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")
MME_SUFFIX = "Please answer yes or no."


@dataclass(frozen=True)
class MmeSample:
    """One yes/no question; an image carries two (one "yes", one "no")."""

    id: str
    subtask: str
    image: Path
    question: str
    answer: str  # "yes" | "no"


def _question_files(folder: Path) -> list[tuple[Path, Path]]:
    # Two layouts in the release: images/ + questions_answers_YN/, or image and .txt side by side.
    qa = folder / "questions_answers_YN"
    if qa.is_dir():
        return [(t, folder / "images") for t in sorted(qa.glob("*.txt"))]
    return [(t, folder) for t in sorted(folder.glob("*.txt"))]


def _image_for(txt: Path, image_dir: Path) -> Path:
    for suffix in _IMAGE_SUFFIXES:
        candidate = image_dir / f"{txt.stem}{suffix}"
        if candidate.exists():
            return candidate
    raise ScorerInputError(f"{txt}: no image {txt.stem}.jpg/.png in {image_dir}")


def _read_subtask(folder: Path) -> list[MmeSample]:
    out = []
    for txt, image_dir in _question_files(folder):
        image = _image_for(txt, image_dir)
        lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
        for k, line in enumerate(lines):
            parts = line.split("\t")
            if len(parts) != 2 or parts[1].strip().lower() not in ("yes", "no"):
                raise ScorerInputError(f"{txt}:{k + 1}: expected 'question<TAB>Yes|No'")
            sid = f"{folder.name}/{image.name}/{k}"
            out.append(MmeSample(sid, folder.name, image, parts[0].strip(), parts[1].strip().lower()))
    return out


def read(paths: Mapping[str, Path]) -> list[MmeSample]:
    """Every subtask folder present under the release root (all 14 for the totals)."""
    root = require(paths, FILES)["root"]
    out = []
    for name in PERCEPTION_SUBTASKS + COGNITION_SUBTASKS:
        if (root / name).is_dir():
            out.extend(_read_subtask(root / name))
    if not out:
        raise ScorerInputError(f"{root}: no MME subtask folders (existence/, count/, ...)")
    return out


def prompt(sample: MmeSample) -> str:
    """LLaVA-1.5's MME prompt (llava_mme.jsonl): MME's " Please answer yes or no." replaced by the
    short-answer instruction on its own line."""
    question = sample.question
    if question.endswith(MME_SUFFIX):
        question = question[: -len(MME_SUFFIX)]
    return f"{question.strip()}\n{SHORT_ANSWER_INSTRUCTION}"


def parse_yes_no(prediction: str) -> str:
    """MME's calculation.py: lower case; exactly "yes"/"no", else "yes" or "no" within the first 4
    characters ("yes" checked first), else "other" (always wrong)."""
    text = prediction.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _subtask_scores(items: list[tuple[MmeSample, bool]]) -> dict[str, float]:
    per_image: dict[Path, list[bool]] = {}
    for s, ok in items:
        per_image.setdefault(s.image, []).append(ok)
    acc = 100.0 * sum(ok for _, ok in items) / len(items)
    acc_plus = 100.0 * sum(all(v) for v in per_image.values()) / len(per_image)
    return {ACC: acc, ACC_PLUS: acc_plus, SCORE: acc + acc_plus}


def score(samples: Sequence[MmeSample], predictions: Mapping[str, str]) -> dict[str, float]:
    """Per subtask acc (questions right), acc+ (images with both right), score = acc + acc+ (percent);
    perception = sum of its subtasks' scores (max 2000), cognition likewise (max 800)."""
    preds = predictions_for(samples, predictions)
    by_task: dict[str, list[tuple[MmeSample, bool]]] = {}
    for s, p in zip(samples, preds, strict=True):
        by_task.setdefault(s.subtask, []).append((s, parse_yes_no(p) == s.answer))
    out: dict[str, float] = {}
    totals = {PERCEPTION: 0.0, COGNITION: 0.0}
    for task, items in by_task.items():
        scores = _subtask_scores(items)
        out.update({f"{SUBTASK_PREFIX}{task}/{k}": v for k, v in scores.items()})
        totals[PERCEPTION if task in PERCEPTION_SUBTASKS else COGNITION] += scores[SCORE]
    out.update(totals)
    out[TOTAL] = totals[PERCEPTION] + totals[COGNITION]
    return out


FAMILY = Family("mme", FILES, read, prompt, score, METRICS, PERCEPTION, "short_answer")

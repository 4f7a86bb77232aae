"""MMVP: Questions.csv + images, a two-option letter prompt, the answer letter, and pair accuracy."""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.evaluation.scorers.common import (
    LETTER_INSTRUCTION,
    DataFile,
    Family,
    ScorerInputError,
    option_block,
    predictions_for,
    require,
)

PAIR_ACCURACY = "pair_accuracy"
QUESTION_ACCURACY = "question_accuracy"
METRICS: tuple[str, ...] = (PAIR_ACCURACY, QUESTION_ACCURACY)

FILES = (
    DataFile("questions", "Questions.csv", "https://huggingface.co/datasets/MMVP/MMVP"),
    DataFile("images", "MMVP Images/ (1.jpg ... 300.jpg)", "https://huggingface.co/datasets/MMVP/MMVP"),
)

_OPTION = re.compile(r"\(([a-z])\)\s*([^(]+?)(?=\s*\([a-z]\)|$)", re.IGNORECASE)
# lmms-eval's letter extraction, tried in order (case-insensitive); the first match wins.
_LETTER_PATTERNS = (
    re.compile(r"^\s*\(?([AB])\)?\.?\s*$", re.IGNORECASE),  # the letter alone
    re.compile(r"^\s*\(?([AB])\)?[\.\s]", re.IGNORECASE),  # the letter first
    re.compile(r"answer\s+is\s+\(?([AB])\)?", re.IGNORECASE),
    re.compile(r"option\s+\(?([AB])\)?", re.IGNORECASE),
    re.compile(r"\(?([AB])\)?(?:\s|$)", re.IGNORECASE),  # any A/B followed by a space or the end
)


@dataclass(frozen=True)
class MmvpSample:
    """One question; questions 2k-1 and 2k (1-based Index) share a pair."""

    id: str
    pair: int
    image: Path
    question: str
    options: tuple[str, ...]
    answer: str  # "A" | "B"


def _answer_letter(value: str, where: str) -> str:
    text = value.strip().lower()
    for letter in "ab":
        if text in (letter, f"({letter})"):
            return letter.upper()
    raise ScorerInputError(f"{where}: 'Correct Answer' must be (a) or (b), got {value!r}")


def read(paths: Mapping[str, Path]) -> list[MmvpSample]:
    files = require(paths, FILES)
    with files["questions"].open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for n, row in enumerate(rows, 2):
        where = f"{files['questions']}:{n}"
        try:
            index = int(row["Index"])
            options = tuple(m.group(2).strip() for m in _OPTION.finditer(row["Options"]))
            answer = _answer_letter(row["Correct Answer"], where)
        except (KeyError, ValueError, TypeError) as err:
            if isinstance(err, ScorerInputError):
                raise
            raise ScorerInputError(
                f"{where}: needs Index, Question, Options, Correct Answer ({err})"
            ) from err
        if len(options) != 2:
            raise ScorerInputError(f"{where}: Options must be '(a) ... (b) ...', got {row['Options']!r}")
        image = files["images"] / f"{index}.jpg"
        out.append(MmvpSample(str(index), (index - 1) // 2, image, row["Question"].strip(), options, answer))
    if not out:
        raise ScorerInputError(f"{files['questions']}: no questions")
    return out


def prompt(sample: MmvpSample) -> str:
    return f"{sample.question}\n{option_block(sample.options)}\n{LETTER_INSTRUCTION}"


def extract_letter(prediction: str) -> str | None:
    text = prediction.strip()
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1).upper()
    return None


def score(samples: Sequence[MmvpSample], predictions: Mapping[str, str]) -> dict[str, float]:
    """Pair accuracy: a pair counts only if both its questions are right (MMVP's headline); and per question."""
    preds = predictions_for(samples, predictions)
    pairs: dict[int, list[bool]] = {}
    for s, p in zip(samples, preds, strict=True):
        pairs.setdefault(s.pair, []).append(extract_letter(p) == s.answer)
    incomplete = [k for k, v in pairs.items() if len(v) != 2]
    if incomplete:
        raise ScorerInputError(
            f"MMVP pairs {incomplete[:5]} do not have exactly two questions; score whole pairs"
        )
    flat = [ok for v in pairs.values() for ok in v]
    return {
        PAIR_ACCURACY: sum(all(v) for v in pairs.values()) / len(pairs),
        QUESTION_ACCURACY: sum(flat) / len(flat),
    }


FAMILY = Family("mmvp", FILES, read, prompt, score, METRICS, PAIR_ACCURACY, "letter")

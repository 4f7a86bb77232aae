"""ScienceQA(-IMG): problems.json + pid_splits.json, LLaVA-1.5's CQM prompt, LLaVA's answer parsing, accuracy."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.evaluation.scorers.common import (
    LETTER_INSTRUCTION,
    DataFile,
    Family,
    answer_letter,
    field,
    load_json,
    option_block,
    predictions_for,
    require,
)

IMG_ACCURACY = "img_accuracy"  # SQA-IMG, the column the papers report
ACCURACY = "accuracy"  # every question read (with image or not)
METRICS: tuple[str, ...] = (IMG_ACCURACY, ACCURACY)
LETTERS = ("A", "B", "C", "D", "E")  # eval_science_qa.py's --options (whole-letter membership)

SOURCE = "https://github.com/lupantech/ScienceQA (data/scienceqa + images)"
FILES = (
    DataFile("problems", "scienceqa/problems.json", SOURCE),
    DataFile("splits", "scienceqa/pid_splits.json", SOURCE),
    DataFile("images", "scienceqa/images/test/ (one folder per problem id)", SOURCE),
)
_ANSWER_IS_DOT = re.compile(r"The answer is ([A-E])\.")
_ANSWER_IS = re.compile(r"The answer is ([A-E])")


@dataclass(frozen=True)
class SqaSample:
    id: str
    image: Path | None
    context: str
    question: str
    options: tuple[str, ...]
    answer: str


def read(paths: Mapping[str, Path], split: str = "test") -> list[SqaSample]:
    files = require(paths, FILES)
    problems = load_json(files["problems"])
    ids = field(load_json(files["splits"]), split, str(files["splits"]))
    out = []
    for pid in ids:
        where = f"{files['problems']}: {pid}"
        prob = field(problems, pid, str(files["problems"]))
        choices = tuple(str(c) for c in field(prob, "choices", where))
        answer = answer_letter(int(field(prob, "answer", where)), len(choices), "".join(LETTERS), where)
        image = files["images"] / pid / prob["image"] if prob.get("image") else None
        out.append(SqaSample(pid, image, prob.get("hint") or "", prob["question"], choices, answer))
    return out


def prompt(sample: SqaSample) -> str:
    """LLaVA's CQM-A question (convert_sqa_to_llava): context (N/A when empty), question, lettered
    choices, then the single-prediction instruction of model_vqa_science.py."""
    context = sample.context or "N/A"
    text = f"Context: {context}\n{sample.question}\n{option_block(sample.options)}".replace("  ", " ").strip()
    return f"{text}\n{LETTER_INSTRUCTION}"


def parse_answer(prediction: str, n_options: int) -> str | None:
    """eval_science_qa.py: newlines read as ". "; the whole answer a letter A-E, or a letter then ". ",
    or "The answer is X." / "The answer is X"; a letter beyond the problem's choices is wrong (None)."""
    text = prediction.replace("\n", ". ")
    letter: str | None = None
    if text.strip() in LETTERS:  # a tuple: "" and "AB" are not letters
        letter = text.strip()
    elif len(text) >= 3 and text[0] in LETTERS and text[1:3] == ". ":
        letter = text[0]
    elif "The answer is " in text:
        m = _ANSWER_IS_DOT.search(text) or _ANSWER_IS.search(text)
        letter = m.group(1) if m else None
    return letter if letter is not None and letter in LETTERS[:n_options] else None


def score(samples: Sequence[SqaSample], predictions: Mapping[str, str]) -> dict[str, float]:
    preds = predictions_for(samples, predictions)
    right = [parse_answer(p, len(s.options)) == s.answer for s, p in zip(samples, preds, strict=True)]
    with_image = [ok for s, ok in zip(samples, right, strict=True) if s.image is not None]
    out = {ACCURACY: sum(right) / len(right)}
    if with_image:
        out[IMG_ACCURACY] = sum(with_image) / len(with_image)
    return out


FAMILY = Family("scienceqa", FILES, read, prompt, score, METRICS, IMG_ACCURACY, "letter")

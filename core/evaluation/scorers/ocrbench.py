"""OCRBench: OCRBench.json, the question as prompt, the containment rule, and the count right out of 1,000."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.evaluation.scorers.common import (
    DataFile,
    Family,
    field,
    load_json_list,
    predictions_for,
    require,
)

SCORE = "score"  # the number right (out of 1,000 on the full set)
ACCURACY = "accuracy"
TYPE_PREFIX = "type/"
TEXT_RECOGNITION = "text_recognition"  # the six recognition types together (out of 300)
METRICS: tuple[str, ...] = (SCORE, ACCURACY, TEXT_RECOGNITION)

HANDWRITTEN_MATH_DATASET = "HME100k"
RECOGNITION_TYPES = (
    "Regular Text Recognition",
    "Irregular Text Recognition",
    "Artistic Text Recognition",
    "Handwriting Recognition",
    "Digit String Recognition",
    "Non-Semantic Text Recognition",
)

FILES = (
    DataFile(
        "annotations", "OCRBench/OCRBench.json", "https://github.com/Yuliang-Liu/MultimodalOCR (OCRBench)"
    ),
    DataFile("images", "OCRBench_Images/", "https://github.com/Yuliang-Liu/MultimodalOCR (OCRBench)"),
)


@dataclass(frozen=True)
class OcrSample:
    id: str
    image: Path
    question: str
    answers: tuple[str, ...]
    dataset: str
    type: str


def read(paths: Mapping[str, Path]) -> list[OcrSample]:
    files = require(paths, FILES)
    data = load_json_list(files["annotations"])
    out = []
    for i, row in enumerate(data):
        where = f"{files['annotations']}[{i}]"
        answers = field(row, "answers", where)
        answers = (answers,) if isinstance(answers, str) else tuple(str(a) for a in answers)
        out.append(
            OcrSample(
                id=str(row.get("id", i)),
                image=files["images"] / field(row, "image_path", where),
                question=field(row, "question", where),
                answers=answers,
                dataset=field(row, "dataset_name", where),
                type=field(row, "type", where),
            )
        )
    return out


def prompt(sample: OcrSample) -> str:
    """The question as given (OCRBench's own evaluation adds nothing)."""
    return sample.question.strip()


def is_correct(prediction: str, answers: Sequence[str], dataset: str) -> bool:
    """OCRBench's rule: right if a reference occurs in the prediction. Handwritten maths (HME100k): every
    space and newline removed on both sides, case kept; otherwise both lower-cased, newlines as spaces."""
    if dataset == HANDWRITTEN_MATH_DATASET:
        pred = prediction.strip().replace("\n", " ").replace(" ", "")
        return any(a.strip().replace("\n", " ").replace(" ", "") in pred for a in answers)
    pred = prediction.lower().strip().replace("\n", " ")
    return any(a.lower().strip().replace("\n", " ") in pred for a in answers)


def score(samples: Sequence[OcrSample], predictions: Mapping[str, str]) -> dict[str, float]:
    preds = predictions_for(samples, predictions)
    right = [is_correct(p, s.answers, s.dataset) for s, p in zip(samples, preds, strict=True)]
    by_type: dict[str, int] = {}
    for s, ok in zip(samples, right, strict=True):
        by_type[s.type] = by_type.get(s.type, 0) + int(ok)
    out = {SCORE: float(sum(right)), ACCURACY: sum(right) / len(right)}
    out[TEXT_RECOGNITION] = float(sum(by_type.get(t, 0) for t in RECOGNITION_TYPES))
    out.update({f"{TYPE_PREFIX}{t}": float(v) for t, v in sorted(by_type.items())})
    return out


FAMILY = Family("ocrbench", FILES, read, prompt, score, METRICS, SCORE, "short_answer")

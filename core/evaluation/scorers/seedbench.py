"""SEED-Bench: SEED-Bench.json, LLaVA-1.5's letter prompt, LLaVA's exact-letter rule (or lmms-eval's), accuracy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.evaluation.scorers.common import (
    LETTER_INSTRUCTION,
    DataFile,
    Family,
    ScorerInputError,
    answer_letter,
    field,
    load_json,
    option_block,
    predictions_for,
    require,
)

ALL = "all"
IMAGE = "image"
VIDEO = "video"
QUESTION_TYPE_PREFIX = "question_type/"
METRICS: tuple[str, ...] = (ALL, IMAGE)

FILES = (
    DataFile("annotations", "SEED-Bench.json", "https://huggingface.co/datasets/AILab-CVC/SEED-Bench"),
    DataFile("images", "SEED-Bench-image/", "https://huggingface.co/datasets/AILab-CVC/SEED-Bench"),
)
# Optional role "video_frames": a folder of each video question's middle frame, <question_id>.png (LLaVA's
# extract_video_frames.py); without it only the image questions (SEED-IMG) are read.


@dataclass(frozen=True)
class SeedSample:
    id: str
    image: Path
    question: str
    options: tuple[str, str, str, str]
    answer: str
    data_type: str  # "image" | "video"
    question_type: str


def read(paths: Mapping[str, Path]) -> list[SeedSample]:
    files = require(paths, FILES)
    frames = Path(paths["video_frames"]) if "video_frames" in paths else None
    data = load_json(files["annotations"])
    type_names = {int(v): k for k, v in data.get("question_type", {}).items()}
    out = []
    for i, q in enumerate(field(data, "questions", str(files["annotations"]))):
        where = f"{files['annotations']}: questions[{i}]"
        kind = field(q, "data_type", where)
        if kind == VIDEO and frames is None:
            continue
        qid = str(field(q, "question_id", where))
        image = files["images"] / q["data_id"] if kind == IMAGE else frames / f"{qid}.png"  # type: ignore[operator]
        options = tuple(str(field(q, f"choice_{c}", where)) for c in "abcd")
        answer = answer_letter(str(field(q, "answer", where)).strip(), len(options), "ABCD", where)
        qtype = type_names.get(int(q.get("question_type_id", -1)), str(q.get("question_type_id", "")))
        out.append(SeedSample(qid, image, q["question"], options, answer, kind, qtype))  # type: ignore[arg-type]
    if not out:
        raise ScorerInputError(f"{files['annotations']}: no questions read")
    return out


def prompt(sample: SeedSample) -> str:
    """LLaVA-1.5's SEED prompt (llava-seed-bench.jsonl): question, A..D options, the letter instruction."""
    return f"{sample.question}\n{option_block(sample.options)}\n{LETTER_INSTRUCTION}"


def extract_letter(prediction: str, first_character: bool = False) -> str:
    """LLaVA's convert_seed_for_submission.py: the (stripped) answer must be the letter itself.
    `first_character`: lmms-eval's looser rule, the stripped answer's first character ("A." reads as A)."""
    text = prediction.strip()
    return text[:1] if first_character else text


def score(
    samples: Sequence[SeedSample], predictions: Mapping[str, str], first_character: bool = False
) -> dict[str, float]:
    """Accuracy overall, per data type (image = SEED-IMG) and per question type."""
    preds = predictions_for(samples, predictions)
    right = [extract_letter(p, first_character) == s.answer for s, p in zip(samples, preds, strict=True)]
    groups: dict[str, list[bool]] = {ALL: right}
    for s, ok in zip(samples, right, strict=True):
        groups.setdefault(s.data_type, []).append(ok)
        groups.setdefault(f"{QUESTION_TYPE_PREFIX}{s.question_type}", []).append(ok)
    return {k: sum(v) / len(v) for k, v in groups.items()}


FAMILY = Family("seedbench", FILES, read, prompt, score, METRICS, IMAGE, "letter")

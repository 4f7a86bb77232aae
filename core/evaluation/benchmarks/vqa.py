"""VQA-style benchmarks (VQAv2, GQA, TextVQA, VizWiz): generated short answers against reference answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data import synthetic_eval as syn
from core.data.text_files import read_text_file
from core.evaluation.benchmarks.context import RunContext, fill_prompt, limit
from core.evaluation.benchmarks.files import (
    BenchFiles,
    BenchmarkFileError,
    ImageRef,
    at,
    field_of,
    question_id_of,
    read_jsonl,
    require,
)
from core.evaluation.benchmarks.kind import BenchmarkKind, Scored
from core.evaluation.config import BenchmarkConfig
from core.metrics.vqa import normalize_vqa_answer, vqa_accuracy


@dataclass(frozen=True)
class VqaItem:
    question_id: str
    image: ImageRef | None
    text: str
    answers: tuple[str, ...]


def _answer_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value:
        raise BenchmarkFileError(f"{where}: field 'answers' must be a non-empty list, got {value!r}")
    out = []
    for k, a in enumerate(value):
        if isinstance(a, dict):
            a = a.get("answer")
        if not isinstance(a, str):
            raise BenchmarkFileError(
                f"{where}: answers[{k}] must be a string or {{'answer': string}}, got {value[k]!r}"
            )
        out.append(a)
    return tuple(out)


def _annotation_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) of an answers file: VQAv2/TextVQA JSON, a JSON list, or jsonl."""
    text = read_text_file(path, "annotation file")
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is None or (isinstance(data, dict) and "question_id" in data):
        for number, obj in read_jsonl(path):
            yield at(path, number), obj
        return
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "answer" in v for v in data.values()):
        # GQA's own files (testdev_balanced_questions.json): {question_id: {"answer": ..., ...}}.
        for qid, obj in data.items():
            yield f"{path} question {qid}", {**obj, "question_id": qid}
        return
    if isinstance(data, dict):
        for key in ("annotations", "data"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            raise BenchmarkFileError(
                f"{path}: a JSON object needs an 'annotations' (VQAv2) or 'data' (TextVQA) list; "
                f"found keys {sorted(data)}"
            )
    if not isinstance(data, list):
        raise BenchmarkFileError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for k, obj in enumerate(data):
        where = f"{path} record #{k}"
        if not isinstance(obj, dict):
            raise BenchmarkFileError(f"{where}: expected an object, got {type(obj).__name__}")
        yield where, obj


def read_vqa(question_file: str | Path, annotation_file: str | Path) -> list[VqaItem]:
    """VQA-style questions (jsonl: question_id, image, text) with their reference answers.

    Answers come from a VQAv2-style JSON (`{"annotations": [{"question_id", "answers": [{"answer"}]}]}`),
    TextVQA's (`{"data": [{"question_id", "answers": [str]}]}`), a JSON list, or jsonl lines with
    `answers` (strings or {"answer": ...}) or a single `answer` (GQA-style). Joined by question_id;
    every question needs answers, extra annotations are ignored.
    """
    qpath = Path(question_file)
    apath = require(Path(annotation_file), "VQA annotation file")
    answers: dict[str, tuple[str, ...]] = {}
    for where, obj in _annotation_records(apath):
        qid = question_id_of(obj, where)
        if "answers" in obj:
            answers[qid] = _answer_list(obj["answers"], where)
        elif "answer" in obj:
            answers[qid] = (field_of(obj, "answer", where),)
        else:
            raise BenchmarkFileError(f"{where}: missing field 'answers' (or 'answer')")
    items = []
    for number, obj in read_jsonl(qpath):
        where = at(qpath, number)
        qid = question_id_of(obj, where)
        if qid not in answers:
            raise BenchmarkFileError(f"{where}: question_id {qid} has no answers in {apath}")
        image = obj.get("image")
        if image is not None and not isinstance(image, str):
            raise BenchmarkFileError(f"{where}: field 'image' must be a string path, got {image!r}")
        items.append(
            VqaItem(qid, ImageRef(image) if image else None, field_of(obj, "text", where), answers[qid])
        )
    if not items:
        raise BenchmarkFileError(f"{qpath}: no questions")
    return items


def read(bench: BenchmarkConfig, files: BenchFiles) -> list[VqaItem]:
    assert files.question_file is not None and files.annotation_file is not None
    return limit(read_vqa(files.question_file, files.annotation_file), bench.max_samples)


def ask(ctx: RunContext, bench: BenchmarkConfig, items: list[VqaItem]) -> list[str]:
    return ctx.generate(
        [(fill_prompt(bench.prompt, it.text), it.image, f"VQA question {it.question_id}") for it in items]
    )


def score(bench: BenchmarkConfig, items: list[VqaItem], answers: list[str]) -> Scored:
    """VQA accuracy (min(#matching references / 3, 1)) or exact match of the normalised answer."""
    scores = []
    preds = []
    for it, a in zip(items, answers, strict=True):
        if bench.vqa_metric == "vqa":
            value = vqa_accuracy(a, it.answers)
        else:
            value = float(normalize_vqa_answer(a) in {normalize_vqa_answer(r) for r in it.answers})
        scores.append(value)
        preds.append(
            {
                "question_id": it.question_id,
                "image": it.image.path if it.image else None,
                "text": it.text,
                "answer": a,
                "answers": list(it.answers),
                "score": value,
            }
        )
    return {"": sum(scores) / len(scores)}, preds


def synthetic(d: Path) -> BenchFiles:
    return BenchFiles(d / syn.VQA_QUESTIONS, d / syn.VQA_ANNOTATIONS, None, d / syn.IMAGES_DIR)


def metric_names(bench: BenchmarkConfig) -> tuple[str, ...]:
    return ("",)


VQA: BenchmarkKind[VqaItem, str] = BenchmarkKind(read, ask, score, synthetic, metric_names)

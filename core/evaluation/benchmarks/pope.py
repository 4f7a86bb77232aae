"""POPE (object hallucination): yes/no questions per split, scored by F1 (LLaVA's eval_pope.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from core.data import synthetic_eval as syn
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
from core.metrics.pope import POPE_SPLITS, parse_yes_no, pope_headline, pope_metrics

# What `pope_metrics` gives per split (reported as `<split>/<name>`).
SPLIT_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


@dataclass(frozen=True)
class PopeItem:
    question_id: str
    split: str
    image: ImageRef
    text: str
    label: str  # "yes" / "no"


def _label(obj: dict[str, Any], where: str) -> str:
    label = field_of(obj, "label", where).strip().lower()
    if label not in ("yes", "no"):
        raise BenchmarkFileError(f"{where}: field 'label' must be 'yes' or 'no', got {obj['label']!r}")
    return label


def read_pope(
    annotation_dir: str | Path,
    question_file: str | Path | None = None,
    splits: Sequence[str] = POPE_SPLITS,
) -> dict[str, list[PopeItem]]:
    """POPE questions with labels per split.

    `annotation_dir` holds `coco_pope_<split>.json`, one JSON object per line with `question_id`,
    `label` ("yes"/"no") and, when there is no question file, `image` and `text`. With LLaVA's
    `question_file` (`{"question_id", "image", "text", "category"}` per line, category = split), the
    questions of each split are joined to that split's labels by question_id; when the ids differ
    (COCO POPE files number each split from 1) and the counts match, by order, as LLaVA's
    eval_pope.py does, checking the image names agree where both files give one.
    """
    root = require(Path(annotation_dir), "POPE annotation directory")
    qpath = Path(question_file) if question_file is not None else None
    questions = _questions_by_category(qpath) if qpath is not None else {}
    out: dict[str, list[PopeItem]] = {}
    for split in splits:
        apath = require(root / f"coco_pope_{split}.json", f"POPE labels of split {split!r}")
        labels = read_jsonl(apath)
        if not labels:
            raise BenchmarkFileError(f"{apath}: no lines; a POPE split needs at least one question")
        if qpath is None:
            out[split] = [_labelled_item(split, obj, at(apath, number)) for number, obj in labels]
        else:
            out[split] = _joined(split, questions, labels, qpath, apath)
    return out


def _questions_by_category(qpath: Path) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """LLaVA's question file by category (= split), each line checked."""
    questions: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for number, obj in read_jsonl(qpath):
        where = at(qpath, number)
        category = field_of(obj, "category", where)
        for key in ("image", "text"):
            field_of(obj, key, where)
        question_id_of(obj, where)
        questions.setdefault(category, []).append((number, obj))
    return questions


def _labelled_item(split: str, obj: dict[str, Any], where: str) -> PopeItem:
    """A label line that carries its own question (no question file)."""
    return PopeItem(
        question_id_of(obj, where),
        split,
        ImageRef(field_of(obj, "image", where)),
        field_of(obj, "text", where),
        _label(obj, where),
    )


def _joined(
    split: str,
    questions: dict[str, list[tuple[int, dict[str, Any]]]],
    labels: list[tuple[int, dict[str, Any]]],
    qpath: Path,
    apath: Path,
) -> list[PopeItem]:
    """A split's questions joined to its labels: by question_id, else by order when the counts match."""
    qs = questions.get(split, [])
    if not qs:
        raise BenchmarkFileError(f"{qpath}: no question has category {split!r}; found {sorted(questions)}")
    by_id = {question_id_of(obj, at(apath, n)): (n, obj) for n, obj in labels}
    q_ids = [str(obj["question_id"]) for _, obj in qs]
    if all(q in by_id for q in q_ids):
        pairs = [(qn, q, *by_id[str(q["question_id"])]) for qn, q in qs]
    elif len(qs) == len(labels):
        pairs = [(qn, q, an, a) for (qn, q), (an, a) in zip(qs, labels, strict=True)]
    else:
        missing = [q for q in q_ids if q not in by_id][:5]
        raise BenchmarkFileError(
            f"{qpath}: {len(qs)} questions of split {split!r} but {apath} has {len(labels)} labels and "
            f"lacks question_ids {missing}; use the label files that belong to this question file"
        )
    items = []
    for qn, q, an, a in pairs:
        qwhere, awhere = at(qpath, qn), at(apath, an)
        if "image" in a and a["image"] != q["image"]:
            raise BenchmarkFileError(
                f"{qwhere}: image {q['image']!r} but its label at {awhere} is for {a['image']!r}; "
                "the question and label files are not aligned"
            )
        items.append(
            PopeItem(str(q["question_id"]), split, ImageRef(q["image"]), q["text"], _label(a, awhere))
        )
    return items


def read(bench: BenchmarkConfig, files: BenchFiles) -> list[PopeItem]:
    """Every split's questions (the first `max_samples` of each), split after split."""
    assert files.annotation_dir is not None
    splits = read_pope(files.annotation_dir, files.question_file, bench.splits)
    return [it for items in splits.values() for it in limit(items, bench.max_samples)]


def _by_split(items: Sequence[PopeItem]) -> Iterator[tuple[str, list[PopeItem]]]:
    for split, group in groupby(items, key=lambda it: it.split):
        yield split, list(group)


def ask(ctx: RunContext, bench: BenchmarkConfig, items: list[PopeItem]) -> list[str]:
    """The generated answers, one model call per split."""
    answers: list[str] = []
    for split, group in _by_split(items):
        answers += ctx.generate(
            [
                (fill_prompt(bench.prompt, it.text), it.image, f"POPE {split} question {it.question_id}")
                for it in group
            ]
        )
    return answers


def score(bench: BenchmarkConfig, items: list[PopeItem], answers: list[str]) -> Scored:
    """Per split `pope_metrics`; the headline is their mean F1, `yes_ratio` over all answers."""
    metrics: dict[str, float] = {}
    per_split: dict[str, dict[str, float]] = {}
    preds: list[dict[str, Any]] = []
    start = 0
    for split, group in _by_split(items):
        got, start = answers[start : start + len(group)], start + len(group)
        per_split[split] = pope_metrics(got, [it.label for it in group])
        metrics.update({f"{split}/{key}": value for key, value in per_split[split].items()})
        preds += [_prediction(it, a) for it, a in zip(group, got, strict=True)]
    metrics[""] = pope_headline(per_split)
    metrics["yes_ratio"] = sum(parse_yes_no(a) == "yes" for a in answers) / len(answers)
    return metrics, preds


def _prediction(it: PopeItem, answer: str) -> dict[str, Any]:
    return {
        "question_id": it.question_id,
        "split": it.split,
        "image": it.image.path,
        "text": it.text,
        "answer": answer,
        "parsed": parse_yes_no(answer),
        "label": it.label,
    }


def synthetic(d: Path) -> BenchFiles:
    return BenchFiles(d / syn.POPE_QUESTIONS, None, d / syn.POPE_ANNOTATION_DIR, d / syn.IMAGES_DIR)


def metric_names(bench: BenchmarkConfig) -> tuple[str, ...]:
    return ("", "yes_ratio", *(f"{split}/{m}" for split in bench.splits for m in SPLIT_METRICS))


POPE: BenchmarkKind[PopeItem, str] = BenchmarkKind(read, ask, score, synthetic, metric_names)

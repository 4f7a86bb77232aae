"""VQAv2 and VizWiz: readers, LLaVA-1.5 prompts, the official VQA accuracy and the evaluation servers' answer files."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.evaluation.scorers.common import (
    SHORT_ANSWER_INSTRUCTION,
    DataFile,
    Family,
    ScorerInputError,
    field,
    load_json,
    load_json_list,
    predictions_for,
    require,
)
from core.metrics.vqa import normalize_vqa_answer

ACCURACY = "accuracy"
# VQAv2 reports accuracy per answer type too; VizWiz per answer type and for answerable questions.
ANSWER_TYPE_PREFIX = "answer_type/"
METRICS: tuple[str, ...] = (ACCURACY,)

VIZWIZ_INSTRUCTION = "When the provided information is insufficient, respond with 'Unanswerable'."


@dataclass(frozen=True)
class VqaSample:
    """One question; `answers` are the raw human answers (10 for VQAv2 and VizWiz; empty on test splits)."""

    id: str
    image: Path
    question: str
    answers: tuple[str, ...]
    answer_type: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Answer processing (EvalAI's processor, the official VQA evaluator's conditional normalisation)
# ---------------------------------------------------------------------------------------------------------


def evalai_answer(text: str) -> str:
    """What the evaluation servers receive (LLaVA's convert_*_for_submission.py apply EvalAI's processor):
    lower case, ',' and '?' removed, "'s" split off, then the evaluator's punctuation/number/article/
    contraction normalisation."""
    tokenized = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_vqa_answer(tokenized)


def _leave_one_out(pred: str, refs: Sequence[str]) -> float:
    # Reference i is left out by position; the other refs equal to pred count, capped at 3 (= 1.0).
    hits = [r == pred for r in refs]
    total = sum(hits)
    return sum(min(1.0, (total - int(h)) / 3.0) for h in hits) / len(refs)


def vqav2_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The official VQA evaluator on an EvalAI-processed prediction.

    References are stripped (newline/tab -> space); only when they are not all identical are the
    references and the prediction passed through punctuation/number/article normalisation, as in
    vqaEval.py. Leave-one-out over the references, min(1, matches / 3), averaged.
    """
    if not answers:
        raise ScorerInputError("a VQAv2 question has no reference answers; val/train annotations carry 10")
    pred = evalai_answer(prediction)
    refs = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
    if len(set(refs)) > 1:
        refs = [normalize_vqa_answer(r) for r in refs]
        pred = normalize_vqa_answer(pred)
    return _leave_one_out(pred, refs)


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VizWiz val accuracy: prediction and every reference through EvalAI's processor, then leave-one-out."""
    if not answers:
        raise ScorerInputError("a VizWiz question has no reference answers; val annotations carry 10")
    return _leave_one_out(evalai_answer(prediction), [evalai_answer(a) for a in answers])


def _score(samples: Sequence[VqaSample], predictions: Mapping[str, str], rule) -> dict[str, float]:
    preds = predictions_for(samples, predictions)
    accs = [rule(p, s.answers) for s, p in zip(samples, preds, strict=True)]
    out = {ACCURACY: sum(accs) / len(accs)}
    by_type: dict[str, list[float]] = {}
    for s, a in zip(samples, accs, strict=True):
        if s.answer_type:
            by_type.setdefault(s.answer_type, []).append(a)
    out.update({f"{ANSWER_TYPE_PREFIX}{t}": sum(v) / len(v) for t, v in sorted(by_type.items())})
    return out


# ---------------------------------------------------------------------------------------------------------
# VQAv2
# ---------------------------------------------------------------------------------------------------------

VQAV2_FILES = (
    DataFile(
        "questions",
        "v2_OpenEnded_mscoco_{val2014,test-dev2015}_questions.json",
        "https://visualqa.org/download.html (Questions)",
    ),
    DataFile(
        "annotations",
        "v2_mscoco_val2014_annotations.json (val only; test-dev has none)",
        "https://visualqa.org/download.html (Annotations)",
    ),
    DataFile("images", "COCO val2014/ or test2015/ image folder", "https://cocodataset.org/#download"),
)


def _coco_image(folder: Path, image_id: int, split_name: str) -> Path:
    return folder / f"COCO_{split_name}_{image_id:012d}.jpg"


def read_vqav2(paths: Mapping[str, Path]) -> list[VqaSample]:
    """VQAv2 questions (+ annotations when given: val); `paths` = questions, images[, annotations]."""
    files = require(paths, [f for f in VQAV2_FILES if f.role != "annotations" or "annotations" in paths])
    qdata = load_json(files["questions"])
    questions = field(qdata, "questions", str(files["questions"]))
    split_name = qdata.get("data_subtype", "val2014")
    image_split = "test2015" if str(split_name).startswith("test") else split_name
    answers: dict[int, tuple[tuple[str, ...], str | None]] = {}
    if "annotations" in files:
        for ann in field(load_json(files["annotations"]), "annotations", str(files["annotations"])):
            raw = [a["answer"] for a in field(ann, "answers", str(files["annotations"]))]
            answers[int(ann["question_id"])] = (tuple(raw), ann.get("answer_type"))
    out = []
    for q in questions:
        qid = int(field(q, "question_id", str(files["questions"])))
        refs, atype = answers.get(qid, ((), None))
        if "annotations" in files and not refs:
            raise ScorerInputError(f"{files['annotations']}: question_id {qid} has no annotation")
        image = _coco_image(files["images"], int(q["image_id"]), image_split)
        out.append(VqaSample(str(qid), image, q["question"], refs, atype))
    if not out:
        raise ScorerInputError(f"{files['questions']}: no questions")
    return out


def prompt_vqav2(sample: VqaSample) -> str:
    """LLaVA-1.5's VQAv2 prompt (llava_vqav2_mscoco_test-dev2015.jsonl)."""
    return f"{sample.question}\n{SHORT_ANSWER_INSTRUCTION}"


def score_vqav2(samples: Sequence[VqaSample], predictions: Mapping[str, str]) -> dict[str, float]:
    return _score(samples, predictions, vqav2_accuracy)


def write_vqav2_submission(samples: Sequence[VqaSample], predictions: Mapping[str, str], path: Path) -> Path:
    """The test-dev answer file EvalAI accepts: `[{"question_id": int, "answer": str}]`, answers processed.

    Every question of the file read gets an entry (the server wants the full test2015 set even for
    test-dev; LLaVA fills the questions it did not ask with ""): pass test2015 questions to the reader
    and predictions for the test-dev subset.
    """
    if not samples:
        raise ScorerInputError("no VQAv2 questions to write")
    rows = [{"question_id": int(s.id), "answer": evalai_answer(predictions.get(s.id, ""))} for s in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def unanswered(samples: Sequence[VqaSample]) -> bool:
    """A test split: no question carries reference answers (VQAv2 test-dev, VizWiz test)."""
    return not any(s.answers for s in samples)


VQAV2 = Family(
    name="vqav2",
    files=VQAV2_FILES,
    read=read_vqav2,
    prompt=prompt_vqav2,
    score=score_vqav2,
    metrics=METRICS,
    headline=ACCURACY,
    runner="short_answer",
    submit=write_vqav2_submission,
    submission_suffix=".json",
    unanswered=unanswered,
)

# ---------------------------------------------------------------------------------------------------------
# VizWiz
# ---------------------------------------------------------------------------------------------------------

VIZWIZ_FILES = (
    DataFile(
        "annotations", "Annotations/val.json or test.json", "https://vizwiz.org/tasks-and-datasets/vqa/"
    ),
    DataFile("images", "val/ or test/ image folder", "https://vizwiz.org/tasks-and-datasets/vqa/"),
)


def read_vizwiz(paths: Mapping[str, Path]) -> list[VqaSample]:
    """VizWiz val.json/test.json (a list of {image, question[, answers, answer_type]}); id = image name."""
    files = require(paths, VIZWIZ_FILES)
    data = load_json_list(files["annotations"], "questions")
    out = []
    for i, q in enumerate(data):
        where = f"{files['annotations']}[{i}]"
        image = str(field(q, "image", where))
        refs = tuple(str(a["answer"]) for a in q.get("answers", []))
        out.append(
            VqaSample(image, files["images"] / image, field(q, "question", where), refs, q.get("answer_type"))
        )
    return out


def prompt_vizwiz(sample: VqaSample) -> str:
    """LLaVA-1.5's VizWiz prompt (llava_test.jsonl)."""
    return f"{sample.question}\n{VIZWIZ_INSTRUCTION}\n{SHORT_ANSWER_INSTRUCTION}"


def score_vizwiz(samples: Sequence[VqaSample], predictions: Mapping[str, str]) -> dict[str, float]:
    return _score(samples, predictions, vizwiz_accuracy)


def write_vizwiz_submission(samples: Sequence[VqaSample], predictions: Mapping[str, str], path: Path) -> Path:
    """The test answer file the VizWiz server accepts: `[{"image": "VizWiz_test_....jpg", "answer": str}]`."""
    preds = predictions_for(samples, predictions)
    rows = [{"image": s.id, "answer": evalai_answer(p)} for s, p in zip(samples, preds, strict=True)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


VIZWIZ = Family(
    name="vizwiz",
    files=VIZWIZ_FILES,
    read=read_vizwiz,
    prompt=prompt_vizwiz,
    score=score_vizwiz,
    metrics=METRICS,
    headline=ACCURACY,
    runner="short_answer",
    submit=write_vizwiz_submission,
    submission_suffix=".json",
    unanswered=unanswered,
)

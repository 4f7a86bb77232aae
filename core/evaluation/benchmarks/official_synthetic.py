"""The synthetic evaluation set's VQA and multiple-choice questions in the official files' formats."""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.data import synthetic_eval as syn
from core.evaluation.benchmarks.files import BenchFiles

OFFICIAL_DIR = "official"


def _vqa_rows(d: Path) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(question, annotation) of the synthetic VQA set, the instruction taken off (the family adds its own)."""
    questions = [json.loads(line) for line in (d / syn.VQA_QUESTIONS).read_text().splitlines() if line]
    annotations = {
        a["question_id"]: a for a in json.loads((d / syn.VQA_ANNOTATIONS).read_text())["annotations"]
    }
    for q in questions:
        q["text"] = q["text"].removesuffix(f"\n{syn.SHORT_ANSWER}")
    return [(q, annotations[q["question_id"]]) for q in questions]


def _write_once(target: Path, write: Callable[[Path], None]) -> Path:
    """`write` into a fresh folder renamed to `target`: concurrent trials sharing the set never see half."""
    if target.exists():
        return target
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    write(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another writer won: its files are the same
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _vqav2(d: Path) -> BenchFiles:
    def write(out: Path) -> None:
        rows = _vqa_rows(d)
        image_ids = {name: k + 1 for k, name in enumerate(sorted({q["image"] for q, _ in rows}))}
        (out / "images").mkdir()
        for name, image_id in image_ids.items():
            # VQAv2's reader names images by COCO id: a link per synthetic image under that name.
            (out / "images" / f"COCO_val2014_{image_id:012d}.jpg").symlink_to(
                (d / syn.IMAGES_DIR / name).resolve()
            )
        questions = [
            {"question_id": q["question_id"], "image_id": image_ids[q["image"]], "question": q["text"]}
            for q, _ in rows
        ]
        annotations = [
            {"question_id": a["question_id"], "answers": a["answers"], "answer_type": a["question_type"]}
            for _, a in rows
        ]
        (out / "questions.json").write_text(json.dumps({"data_subtype": "val2014", "questions": questions}))
        (out / "annotations.json").write_text(json.dumps({"annotations": annotations}))

    root = _write_once(d / OFFICIAL_DIR / "vqav2", write)
    return BenchFiles(root / "questions.json", root / "annotations.json", None, root / "images")


def _vizwiz(d: Path) -> BenchFiles:
    def write(out: Path) -> None:
        # VizWiz ids are image names: one question per image (the first), as in VizWiz.
        seen: dict[str, dict[str, Any]] = {}
        for q, a in _vqa_rows(d):
            seen.setdefault(
                q["image"],
                {"image": q["image"], "question": q["text"], "answers": a["answers"], "answer_type": "other"},
            )
        (out / "val.json").write_text(json.dumps(list(seen.values())))

    root = _write_once(d / OFFICIAL_DIR / "vizwiz", write)
    return BenchFiles(None, root / "val.json", None, d / syn.IMAGES_DIR)


def _mmbench(d: Path) -> BenchFiles:
    def write(out: Path) -> None:
        rows = [json.loads(line) for line in (d / syn.MC_QUESTIONS).read_text().splitlines() if line]
        with (out / "mmbench_dev.tsv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, delimiter="\t")
            w.writerow(
                [
                    "index",
                    "question",
                    "hint",
                    "A",
                    "B",
                    "C",
                    "D",
                    "answer",
                    "category",
                    "l2-category",
                    "image",
                ]
            )
            for r in rows:
                image = base64.b64encode((d / syn.IMAGES_DIR / r["image"]).read_bytes()).decode()
                w.writerow(
                    [
                        r["question_id"],
                        r["question"],
                        r.get("hint", "nan"),
                        *r["options"],
                        r["answer"],
                        "position",
                        "spatial",
                        image,
                    ]
                )

    root = _write_once(d / OFFICIAL_DIR / "mmbench", write)
    return BenchFiles(root / "mmbench_dev.tsv")


SYNTHETIC: dict[str, Callable[[Path], BenchFiles]] = {
    "vqav2": _vqav2,
    "vizwiz": _vizwiz,
    "mmbench_en": _mmbench,
    "mmbench_cn": _mmbench,  # the same questions; the family asks with MMBench-CN's instruction
}

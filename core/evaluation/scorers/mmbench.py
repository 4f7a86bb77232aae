"""MMBench EN/CN: the tsv reader, LLaVA-1.5's letter prompt, CircularEval scoring and the test-split xlsx submission."""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.evaluation.scorers.common import (
    LETTER_INSTRUCTION,
    DataFile,
    Family,
    ScorerInputError,
    option_block,
    predictions_for,
    require,
)

OVERALL = "overall"
CATEGORY_PREFIX = "category/"
L2_PREFIX = "l2_category/"
METRICS: tuple[str, ...] = (OVERALL,)

CN_INSTRUCTION = "请直接回答选项字母。"
# MMBench's legacy tsv files store the circular copies of question q as rows q + g * 1e6.
CIRCULAR_STRIDE = 1_000_000
_OPTION_COLUMNS = "ABCD"
# VLMEvalKit's rule-based matcher: these characters are read as separators around an option letter.
_SEPARATORS = ".()[],:;!*#{}"
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)


@dataclass(frozen=True)
class MmbSample:
    """One pass of a question: options as shown in this pass; `group` is the question all passes share."""

    id: str
    group: int
    index: int
    image: bytes
    question: str
    hint: str | None
    options: tuple[str, ...]
    answer: str | None  # this pass's correct letter; None on the test split
    category: str
    l2_category: str
    lang: str


FILES = (
    DataFile(
        "tsv",
        "mmbench_dev_20230712.tsv / mmbench_test_en_20231003.tsv (CN: mmbench_dev_cn_20231003.tsv)",
        "https://github.com/open-compass/MMBench (download links; LLaVA's playground/data/eval/mmbench)",
    ),
)


def _missing(value: str | None) -> bool:
    # LLaVA's is_none: empty, "nan" and "none" cells mean no option / no hint.
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


def _rows(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)  # the image column holds whole base64 images
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows:
        raise ScorerInputError(f"{path}: no questions")
    for col in ("index", "question", "image", "A", "B"):
        if col not in rows[0]:
            raise ScorerInputError(f"{path}:1: header has no column {col!r}; is this an MMBench tsv?")
    return rows


def _image(row: dict[str, str], where: str) -> bytes:
    try:
        return base64.b64decode(row["image"], validate=True)
    except (binascii.Error, ValueError) as err:
        raise ScorerInputError(f"{where}: column 'image' is not valid base64 ({err})") from err


def _passes(row: dict[str, str], where: str, lang: str, expand: bool) -> list[MmbSample]:
    options = []
    for col in _OPTION_COLUMNS:
        if _missing(row.get(col)):
            break  # options stop at the first empty column, as LLaVA's get_options
        options.append(row[col])
    index = int(row["index"])
    answer = None if _missing(row.get("answer")) else row["answer"].strip()
    if answer is not None and answer not in _OPTION_COLUMNS[: len(options)]:
        raise ScorerInputError(f"{where}: answer {answer!r} is not one of the {len(options)} options")
    common: dict[str, Any] = dict(
        image=_image(row, where),
        question=row["question"],
        hint=None if _missing(row.get("hint")) else row["hint"],
        category=row.get("category", ""),
        l2_category=row.get("l2-category", ""),
        lang=lang,
    )
    rounds = range(len(options)) if expand else range(1)
    out = []
    for r in rounds:
        # Pass r shows the options rotated left by r; the right answer's letter moves with its text.
        shown = options[r:] + options[:r]
        gold = None if answer is None else _OPTION_COLUMNS[(_OPTION_COLUMNS.index(answer) - r) % len(options)]
        idx = index + r * CIRCULAR_STRIDE
        out.append(
            MmbSample(str(idx), index % CIRCULAR_STRIDE, idx, options=tuple(shown), answer=gold, **common)
        )
    return out


def read(paths: Mapping[str, Path], lang: str = "en") -> list[MmbSample]:
    """All passes of every question. A tsv that already holds the circular copies (indices >= 1e6, MMBench's
    legacy files that LLaVA uses) is read row by row; otherwise each question is expanded into one pass
    per option, rotated (index + r * 1e6, MMBench's own numbering)."""
    files = require(paths, FILES)
    rows = _rows(files["tsv"])
    has_copies = any(int(r["index"]) >= CIRCULAR_STRIDE for r in rows)
    out = []
    for n, row in enumerate(rows, 2):
        out.extend(_passes(row, f"{files['tsv']}:{n}", lang, expand=not has_copies))
    return out


def read_cn(paths: Mapping[str, Path]) -> list[MmbSample]:
    return read(paths, lang="cn")


def prompt(sample: MmbSample) -> str:
    """LLaVA-1.5's MMBench prompt (model_vqa_mmbench.py --single-pred-prompt): hint, question, lettered
    options, then the instruction in the benchmark's language."""
    question = sample.question if sample.hint is None else f"{sample.hint}\n{sample.question}"
    instruction = CN_INSTRUCTION if sample.lang == "cn" else LETTER_INSTRUCTION
    return f"{question}\n{option_block(sample.options)}\n{instruction}"


def infer_option(answer: str, options: Sequence[str]) -> str | None:
    """MMBench's rule-based answer matching (VLMEvalKit can_infer, without the ChatGPT fallback).

    First the letters: separators become spaces; if exactly one option letter is a whole word it is the
    answer (a refusal or a lone "Z" means no option). Otherwise the option texts: if exactly one option's
    text occurs in the lower-cased answer, that option. Anything else is unmatched (None: wrong).
    """
    letters = _OPTION_COLUMNS[: len(options)]
    if any(r in answer for r in _REFUSALS):
        return None
    cleaned = answer
    for ch in _SEPARATORS:
        cleaned = cleaned.replace(ch, " ")
    words = cleaned.split()
    found = [c for c in letters if c in words]
    if len(found) == 1:
        return found[0]
    if not found and "Z" in words:
        return None
    lowered = answer.lower()
    by_text = [c for c, opt in zip(letters, options, strict=False) if str(opt).lower() in lowered]
    return by_text[0] if len(by_text) == 1 else None


def _ratio(hits: list[bool]) -> float:
    return sum(hits) / len(hits)


def score(samples: Sequence[MmbSample], predictions: Mapping[str, str]) -> dict[str, float]:
    """CircularEval: a question counts only if every one of its passes matched the right letter.

    Overall and per-category (and per-L2-category) accuracy over questions.
    """
    preds = predictions_for(samples, predictions)
    groups: dict[int, list[bool]] = {}
    meta: dict[int, MmbSample] = {}
    for s, p in zip(samples, preds, strict=True):
        if s.answer is None:
            raise ScorerInputError(
                f"MMBench sample {s.id} has no answer (test split): write a submission instead"
            )
        groups.setdefault(s.group, []).append(infer_option(p, s.options) == s.answer)
        meta.setdefault(s.group, s)
    correct = {g: all(v) for g, v in groups.items()}
    out = {OVERALL: _ratio(list(correct.values()))}
    for prefix, key in ((CATEGORY_PREFIX, "category"), (L2_PREFIX, "l2_category")):
        per: dict[str, list[bool]] = {}
        for g, ok in correct.items():
            name = getattr(meta[g], key)
            if name:
                per.setdefault(name, []).append(ok)
        out.update({f"{prefix}{k}": _ratio(v) for k, v in sorted(per.items())})
    return out


def write_submission(samples: Sequence[MmbSample], predictions: Mapping[str, str], path: Path) -> Path:
    """The xlsx the MMBench server scores (LLaVA's convert_mmbench_for_submission.py layout): one row per
    pass with index, question, A..D as shown in that pass, and the raw prediction."""
    from openpyxl import Workbook

    preds = predictions_for(samples, predictions)
    width = max(len(s.options) for s in samples)
    book = Workbook()
    sheet = book.active
    sheet.append(["index", "question", *_OPTION_COLUMNS[:width], "prediction"])
    for s, p in zip(samples, preds, strict=True):
        opts = list(s.options) + [""] * (width - len(s.options))
        sheet.append([s.index, s.question, *opts, p])
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return path


def unanswered(samples: Sequence[MmbSample]) -> bool:
    """The test split: no pass carries its correct letter."""
    return all(s.answer is None for s in samples)


EN = Family(
    "mmbench", FILES, read, prompt, score, METRICS, OVERALL, "letter",
    submit=write_submission, submission_suffix=".xlsx", unanswered=unanswered,
)  # fmt: skip
CN = dataclasses.replace(EN, name="mmbench_cn", read=read_cn)

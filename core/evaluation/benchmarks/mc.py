"""Multiple choice (MMBench, ScienceQA-IMG, SEED, MMLU as text): by generated letter or by option likelihood."""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data import synthetic_eval as syn
from core.data.text_files import open_text_file
from core.evaluation.benchmarks.context import RunContext, fill_prompt, limit
from core.evaluation.benchmarks.files import (
    BenchFiles,
    BenchmarkFileError,
    ImageRef,
    at,
    field_of,
    read_jsonl,
    require,
)
from core.evaluation.benchmarks.kind import BenchmarkKind, Scored
from core.evaluation.config import BenchmarkConfig
from core.metrics.choice import mc_accuracy, parse_choice_letter, pick_option_by_loglik

LETTERS = "ABCDEFGHIJ"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
# One item's output: the generated answer, or (log-likelihood, token count) of each option.
McOutput = str | list[tuple[float, int]]


@dataclass(frozen=True)
class McItem:
    """A multiple-choice question; `answer` is the correct option's letter (A = options[0])."""

    question_id: str
    question: str
    options: tuple[str, ...]
    answer: str
    image: ImageRef | None = None
    hint: str | None = None


def _letter(value: Any, n_options: int, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < n_options:
            raise BenchmarkFileError(f"{where}: field 'answer' index {value} is outside 0..{n_options - 1}")
        return LETTERS[value]
    if isinstance(value, str) and value.strip().upper() in LETTERS[:n_options] and len(value.strip()) == 1:
        return value.strip().upper()
    raise BenchmarkFileError(
        f"{where}: field 'answer' must be a letter in {LETTERS[:n_options]} or an index 0..{n_options - 1}, "
        f"got {value!r}"
    )


def _options(values: Sequence[Any], where: str) -> tuple[str, ...]:
    opts = tuple(str(v).strip() for v in values)
    if len(opts) < 2 or len(opts) > len(LETTERS):
        raise BenchmarkFileError(f"{where}: needs 2..{len(LETTERS)} options, got {len(opts)}")
    if any(not o for o in opts):
        raise BenchmarkFileError(f"{where}: an option is empty: {list(opts)}")
    return opts


def _mc_from_json(obj: dict[str, Any], where: str, number: int) -> McItem:
    question = field_of(obj, "question", where)
    if "options" in obj or "choices" in obj:
        key = "options" if "options" in obj else "choices"
        raw = field_of(obj, key, where, list)
    else:
        raw = [obj[k] for k in LETTERS if k in obj and obj[k] not in (None, "")]
        if not raw:
            raise BenchmarkFileError(f"{where}: missing field 'options' (a list) or option columns A, B, ...")
    options = _options(raw, where)
    image = obj.get("image")
    if image is not None and not isinstance(image, str):
        raise BenchmarkFileError(f"{where}: field 'image' must be a string path, got {image!r}")
    if "answer" not in obj:
        raise BenchmarkFileError(f"{where}: missing field 'answer' (the correct option's letter or index)")
    hint = obj.get("hint")
    qid = str(obj.get("question_id", obj.get("id", number)))
    return McItem(
        qid,
        question,
        options,
        _letter(obj["answer"], len(options), where),
        ImageRef(image) if image else None,
        hint if isinstance(hint, str) and hint.strip() else None,
    )


def _read_tsv(path: Path) -> list[McItem]:
    """MMBench's TSV: index, question, hint, A..D (E, F), answer, image (base64), with a header row."""
    csv.field_size_limit(sys.maxsize)
    items = []
    with open_text_file(path, "MMBench tsv file") as f:
        reader = csv.DictReader(f, delimiter="\t")
        header = reader.fieldnames or []
        for key in ("question", "answer", "A", "B"):
            if key not in header:
                raise BenchmarkFileError(f"{path}:1: header has no column {key!r} (columns: {header})")
        for row in reader:
            where = at(path, reader.line_num)
            raw = [row[k] for k in LETTERS if k in row and row[k] not in (None, "", "nan")]
            options = _options(raw, where)
            image = None
            if row.get("image") and row["image"] != "nan":
                try:
                    image = ImageRef(data=base64.b64decode(row["image"], validate=True))
                except (binascii.Error, ValueError) as err:
                    raise BenchmarkFileError(f"{where}: field 'image' is not valid base64 ({err})") from err
            hint = row.get("hint")
            items.append(
                McItem(
                    str(row.get("index", reader.line_num)),
                    row["question"],
                    options,
                    _letter(row["answer"], len(options), where),
                    image,
                    hint if hint and hint != "nan" else None,
                )
            )
    return items


def _read_mmlu_csv(path: Path) -> list[McItem]:
    items: list[McItem] = []
    with open_text_file(path, "MMLU csv file") as f:
        reader = csv.reader(f)
        for row in reader:
            where = at(path, reader.line_num)
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 4:
                raise BenchmarkFileError(
                    f"{where}: expected question, options..., answer (MMLU: 6 columns), got {len(row)} columns"
                )
            options = _options(row[1:-1], where)
            items.append(
                McItem(f"{path.stem}-{len(items)}", row[0], options, _letter(row[-1], len(options), where))
            )
    return items


def read_mc(path: str | Path) -> list[McItem]:
    """Multiple-choice items from jsonl (`question`, `options`/`choices` list or columns A.., `answer`
    letter or index, optional `image`, `hint`, `question_id`), MMBench's `.tsv`, MMLU's headerless
    `.csv` (question, A, B, C, D, answer), or a directory of MMLU csv files (read in name order)."""
    path = require(Path(path), "multiple-choice file")
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise BenchmarkFileError(f"{path}: directory holds no .csv file")
        items = [item for f in files for item in _read_mmlu_csv(f)]
    elif path.suffix == ".tsv":
        items = _read_tsv(path)
    elif path.suffix == ".csv":
        items = _read_mmlu_csv(path)
    else:
        items = [_mc_from_json(obj, at(path, n), n) for n, obj in read_jsonl(path)]
    if not items:
        raise BenchmarkFileError(f"{path}: no questions")
    return items


def mc_question(item: McItem) -> str:
    """LLaVA's MMBench layout: hint, question, then one `A. option` line per option."""
    text = f"{item.hint}\n{item.question}" if item.hint else item.question
    return text + "".join(f"\n{LETTERS[k]}. {o}" for k, o in enumerate(item.options))


def read(bench: BenchmarkConfig, files: BenchFiles) -> list[McItem]:
    assert files.question_file is not None
    return limit(read_mc(files.question_file), bench.max_samples)


def ask(ctx: RunContext, bench: BenchmarkConfig, items: list[McItem]) -> list[McOutput]:
    """`generate` mode: the answers to the MMBench prompt; else every option's score as the answer."""
    where = [f"{ctx.files.question_file} question {it.question_id}" for it in items]
    if bench.mc_mode == "generate":
        default = "{question}\n" + MC_INSTRUCTION
        return list(
            ctx.generate(
                [
                    (fill_prompt(bench.prompt or default, mc_question(it)), it.image, w)
                    for it, w in zip(items, where, strict=True)
                ]
            )
        )
    rows = [
        (fill_prompt(bench.prompt, mc_question(it)), it.image, w, option)
        for it, w in zip(items, where, strict=True)
        for option in it.options
    ]
    scored = ctx.option_scores(rows)
    out: list[McOutput] = []
    for it in items:
        out.append(scored[: len(it.options)])
        scored = scored[len(it.options) :]
    return out


def _choose(bench: BenchmarkConfig, it: McItem, output: McOutput) -> tuple[str | None, dict[str, Any]]:
    if isinstance(output, str):
        return parse_choice_letter(output, len(it.options)), {"answer": output}
    best = pick_option_by_loglik([s for s, _ in output], [n for _, n in output])
    return LETTERS[best], {"logliks": [s for s, _ in output], "lengths": [n for _, n in output]}


def score(bench: BenchmarkConfig, items: list[McItem], outputs: Sequence[McOutput]) -> Scored:
    """Accuracy of the chosen letters; `unparsed` (generate mode): answers naming no option."""
    picked = [_choose(bench, it, o) for it, o in zip(items, outputs, strict=True)]
    chosen = [c for c, _ in picked]
    metrics: dict[str, float] = {}
    if bench.mc_mode == "generate":
        metrics["unparsed"] = sum(c is None for c in chosen) / len(chosen)
    metrics[""] = mc_accuracy(chosen, [it.answer for it in items])
    preds = [
        {
            "question_id": it.question_id,
            "question": it.question,
            "options": list(it.options),
            "image": it.image.path if it.image else None,
            "predicted": c,
            "answer": it.answer,
            "correct": c == it.answer,
            **e,
        }
        for it, (c, e) in zip(items, picked, strict=True)
    ]
    return metrics, preds


def synthetic(d: Path) -> BenchFiles:
    return BenchFiles(d / syn.MC_QUESTIONS, None, None, d / syn.IMAGES_DIR)


def synthetic_text(d: Path) -> BenchFiles:
    return BenchFiles(d / syn.TEXT_MC_CSV)


def metric_names(bench: BenchmarkConfig) -> tuple[str, ...]:
    return ("", "unparsed") if bench.mc_mode == "generate" else ("",)


MC: BenchmarkKind[McItem, McOutput] = BenchmarkKind(read, ask, score, synthetic, metric_names)
TEXT_MC: BenchmarkKind[McItem, McOutput] = BenchmarkKind(read, ask, score, synthetic_text, metric_names)

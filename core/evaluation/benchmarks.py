"""Benchmark files -> typed items (POPE, VQA-style, multiple choice, text MC) and the runners that score a VLM on them."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from core.data import synthetic_eval as syn
from core.data.images import preprocess_for
from core.data.text_files import open_text_file, read_text_file
from core.evaluation.config import BenchmarkConfig
from core.evaluation.generate import (
    Prompt,
    answer_ids,
    continuation_logliks,
    generation_prompt_ids,
    greedy_generate,
    pad_id,
    stop_token_ids,
)
from core.evaluation.shard import Shard, replayed
from core.metrics import (
    POPE_SPLITS,
    mc_accuracy,
    normalize_vqa_answer,
    parse_choice_letter,
    parse_yes_no,
    pick_option_by_loglik,
    pope_headline,
    pope_metrics,
    vqa_accuracy,
)

LETTERS = "ABCDEFGHIJ"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


class BenchmarkFileError(ValueError):
    """A benchmark file that cannot be read; the message names the file, the line and the field."""


def _where(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


# ---------------------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """An image: a path relative to an image root, or the encoded bytes (MMBench's base64 column)."""

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def open(self, image_root: Path | None, where: str) -> Image.Image:
        try:
            if self.data is not None:
                image = Image.open(io.BytesIO(self.data))
            else:
                if image_root is None:
                    raise BenchmarkFileError(
                        f"{where}: item names image {self.path!r} but no image_root is set"
                    )
                image = Image.open(image_root / str(self.path))
            image.load()
            return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            shown = f"{image_root / str(self.path)}" if self.path is not None else "embedded image"
            raise BenchmarkFileError(f"{where}: cannot read {shown} ({err})") from err


@dataclass(frozen=True)
class PopeItem:
    question_id: str
    split: str
    image: ImageRef
    text: str
    label: str  # "yes" / "no"


@dataclass(frozen=True)
class VqaItem:
    question_id: str
    image: ImageRef | None
    text: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class McItem:
    """A multiple-choice question; `answer` is the correct option's letter (A = options[0])."""

    question_id: str
    question: str
    options: tuple[str, ...]
    answer: str
    image: ImageRef | None = None
    hint: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------


def _exists(path: Path, what: str) -> Path:
    if not path.exists():
        raise BenchmarkFileError(f"{path}: {what} not found")
    return path


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; a line that is not a JSON object names file:line."""
    path = _exists(Path(path), "jsonl file")
    rows: list[tuple[int, dict[str, Any]]] = []
    with open_text_file(path, "jsonl file") as f:  # a directory or non-UTF-8 file: one sentence
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkFileError(f"{path}:{number}: not valid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise BenchmarkFileError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            rows.append((number, obj))
    return rows


def _field(obj: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in obj:
        raise BenchmarkFileError(f"{where}: missing field {key!r} (fields present: {', '.join(sorted(obj))})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchmarkFileError(f"{where}: field {key!r} must be {names}, got {value!r}")
    return value


def _qid(obj: dict[str, Any], where: str) -> str:
    return str(_field(obj, "question_id", where, (int, str)))


def _pope_label(obj: dict[str, Any], where: str) -> str:
    label = _field(obj, "label", where).strip().lower()
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
    root = _exists(Path(annotation_dir), "POPE annotation directory")
    out: dict[str, list[PopeItem]] = {}
    questions: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    qpath = Path(question_file) if question_file is not None else None
    if qpath is not None:
        for number, obj in read_jsonl(qpath):
            where = _where(qpath, number)
            category = _field(obj, "category", where)
            for key in ("image", "text"):
                _field(obj, key, where)
            _qid(obj, where)
            questions.setdefault(category, []).append((number, obj))
    for split in splits:
        apath = _exists(root / f"coco_pope_{split}.json", f"POPE labels of split {split!r}")
        labels = read_jsonl(apath)
        if not labels:
            raise BenchmarkFileError(f"{apath}: no lines; a POPE split needs at least one question")
        if qpath is None:
            items = []
            for number, obj in labels:
                where = _where(apath, number)
                items.append(
                    PopeItem(
                        _qid(obj, where),
                        split,
                        ImageRef(_field(obj, "image", where)),
                        _field(obj, "text", where),
                        _pope_label(obj, where),
                    )
                )
            out[split] = items
            continue
        qs = questions.get(split, [])
        if not qs:
            raise BenchmarkFileError(
                f"{qpath}: no question has category {split!r}; found {sorted(questions)}"
            )
        by_id = {_qid(obj, _where(apath, n)): (n, obj) for n, obj in labels}
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
            qwhere, awhere = _where(qpath, qn), _where(apath, an)
            if "image" in a and a["image"] != q["image"]:
                raise BenchmarkFileError(
                    f"{qwhere}: image {q['image']!r} but its label at {awhere} is for {a['image']!r}; "
                    "the question and label files are not aligned"
                )
            items.append(
                PopeItem(
                    str(q["question_id"]), split, ImageRef(q["image"]), q["text"], _pope_label(a, awhere)
                )
            )
        out[split] = items
    return out


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
            yield _where(path, number), obj
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
    apath = _exists(Path(annotation_file), "VQA annotation file")
    answers: dict[str, tuple[str, ...]] = {}
    for where, obj in _annotation_records(apath):
        qid = _qid(obj, where)
        if "answers" in obj:
            answers[qid] = _answer_list(obj["answers"], where)
        elif "answer" in obj:
            answers[qid] = (_field(obj, "answer", where),)
        else:
            raise BenchmarkFileError(f"{where}: missing field 'answers' (or 'answer')")
    items = []
    for number, obj in read_jsonl(qpath):
        where = _where(qpath, number)
        qid = _qid(obj, where)
        if qid not in answers:
            raise BenchmarkFileError(f"{where}: question_id {qid} has no answers in {apath}")
        image = obj.get("image")
        if image is not None and not isinstance(image, str):
            raise BenchmarkFileError(f"{where}: field 'image' must be a string path, got {image!r}")
        items.append(
            VqaItem(qid, ImageRef(image) if image else None, _field(obj, "text", where), answers[qid])
        )
    if not items:
        raise BenchmarkFileError(f"{qpath}: no questions")
    return items


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
    question = _field(obj, "question", where)
    if "options" in obj or "choices" in obj:
        key = "options" if "options" in obj else "choices"
        raw = _field(obj, key, where, list)
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
            where = _where(path, reader.line_num)
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
    items = []
    with open_text_file(path, "MMLU csv file") as f:
        reader = csv.reader(f)
        for row in reader:
            where = _where(path, reader.line_num)
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
    path = _exists(Path(path), "multiple-choice file")
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
        items = [_mc_from_json(obj, _where(path, n), n) for n, obj in read_jsonl(path)]
    if not items:
        raise BenchmarkFileError(f"{path}: no questions")
    return items


# ---------------------------------------------------------------------------------------------------------
# Where a benchmark's files are
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchFiles:
    question_file: Path | None = None
    annotation_file: Path | None = None
    annotation_dir: Path | None = None
    image_root: Path | None = None


def bench_files(bench: BenchmarkConfig, synthetic_dir: Path | None) -> BenchFiles:
    """The files a benchmark reads: its own (source files) or the synthetic set's, same formats."""
    if bench.source == "files":

        def p(value: str | None) -> Path | None:
            return Path(value).expanduser() if value is not None else None

        return BenchFiles(
            p(bench.question_file), p(bench.annotation_file), p(bench.annotation_dir), p(bench.image_root)
        )
    if synthetic_dir is None:
        raise ValueError(f"benchmark '{bench.name}': source 'synthetic' needs the synthetic eval directory")
    d = Path(synthetic_dir)
    images = d / syn.IMAGES_DIR
    return {
        "pope": BenchFiles(d / syn.POPE_QUESTIONS, None, d / syn.POPE_ANNOTATION_DIR, images),
        "vqa": BenchFiles(d / syn.VQA_QUESTIONS, d / syn.VQA_ANNOTATIONS, None, images),
        "mc": BenchFiles(d / syn.MC_QUESTIONS, None, None, images),
        "text_mc": BenchFiles(d / syn.TEXT_MC_CSV),
    }[bench.kind]


# ---------------------------------------------------------------------------------------------------------
# Runners
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RunContext:
    """What every runner needs besides the items: the model, its tokenizer and how to build inputs.

    Sharded evaluation (core/evaluation/shard.py): with `shard`, only that shard's batches reach the
    model (batch b of every model call belongs to shard b mod count, so each batch holds exactly the
    rows it holds unsharded and the outputs are bit for bit the same), the others get placeholders,
    and the outputs are kept in `recorded` (call number -> one output or None per row); with `replay`
    (the shards' gathered outputs) no model runs and the runner scores the recorded outputs.
    """

    vlm: Any
    tokenizer: Any
    template: str
    image_mode: str = "pad"
    batch_size: int = 8
    max_new_tokens: int = 16
    image_root: Path | None = None
    shard: Shard | None = None
    replay: dict[str, list[Any]] | None = None
    recorded: dict[str, list[Any]] = field(default_factory=dict)
    calls: int = 0

    def pixels(self, image: ImageRef | None, where: str) -> torch.Tensor | None:
        if image is None:
            return None
        spec = self.vlm.vision.spec
        pil = image.open(self.image_root, where)
        return preprocess_for(pil, spec, self.image_mode)

    def prompt(self, question: str, image: ImageRef | None, where: str) -> Prompt:
        pixels = self.pixels(image, where)
        ids = generation_prompt_ids(self.template, question, self.tokenizer, has_image=pixels is not None)
        return Prompt(ids, pixels)

    def _batched(self, rows: Sequence[Any], run: Callable[[Sequence[Any]], list[Any]]) -> list[Any] | None:
        """`run` over the rows in batches (this shard's only), recorded; None when replaying."""
        key = str(self.calls)
        self.calls += 1
        if self.replay is not None:
            return replayed(self.replay, key, len(rows))
        size = max(1, self.batch_size)
        outputs: list[Any] = []
        for batch, start in enumerate(range(0, len(rows), size)):
            chunk = rows[start : start + size]
            owned = self.shard is None or self.shard.owns(batch)
            outputs += run(chunk) if owned else [None] * len(chunk)
        self.recorded[key] = outputs
        return None

    def generate(self, questions: Sequence[tuple[str, ImageRef | None, str]]) -> list[str]:
        """Greedy answers (decoded, stripped) to (question, image, where) triples, in batches."""
        replay = self._batched(questions, self._generate_batch)
        answers = replay if replay is not None else self.recorded[str(self.calls - 1)]
        return [a if a is not None else "" for a in answers]

    def _generate_batch(self, questions: Sequence[tuple[str, ImageRef | None, str]]) -> list[str]:
        stops, pad = stop_token_ids(self.template, self.tokenizer), pad_id(self.tokenizer)
        chunk = [self.prompt(q, img, w) for q, img, w in questions]
        tokens = greedy_generate(
            self.vlm, chunk, max_new_tokens=self.max_new_tokens, stop_ids=stops, pad_token_id=pad
        )
        return [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]

    def option_scores(self, rows: Sequence[tuple[str, ImageRef | None, str, str]]) -> list[tuple[float, int]]:
        """(log-likelihood, token count) of each (question, image, where, option) row, in batches;
        each question's prompt (its image preprocessed) built once."""
        prompts: dict[tuple[str, str], Prompt] = {}

        def score(chunk: Sequence[tuple[str, ImageRef | None, str, str]]) -> list[tuple[float, int]]:
            for question, image, where, _ in chunk:
                if (question, where) not in prompts:
                    prompts[(question, where)] = self.prompt(question, image, where)
            return continuation_logliks(
                self.vlm,
                [prompts[(q, w)] for q, _, w, _ in chunk],
                [answer_ids(self.template, option, self.tokenizer) for *_, option in chunk],
                pad_token_id=pad_id(self.tokenizer),
            )

        replay = self._batched(rows, score)
        scored = replay if replay is not None else self.recorded[str(self.calls - 1)]
        return [(float(s[0]), int(s[1])) if s is not None else (0.0, 1) for s in scored]


def _fill(prompt: str | None, question: str) -> str:
    # replace, not str.format: a user prompt may hold other braces (JSON examples, LaTeX).
    return question if prompt is None else prompt.replace("{question}", question)


def _limit(items: list[Any], max_samples: int | None) -> list[Any]:
    return items if max_samples is None else items[:max_samples]


def run_pope(
    ctx: RunContext, bench: BenchmarkConfig, files: BenchFiles
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    assert files.annotation_dir is not None
    splits = read_pope(files.annotation_dir, files.question_file, bench.splits)
    metrics: dict[str, float] = {}
    per_split: dict[str, dict[str, float]] = {}
    preds: list[dict[str, Any]] = []
    all_answers: list[str] = []
    for split, items in splits.items():
        items = _limit(items, bench.max_samples)
        answers = ctx.generate(
            [
                (_fill(bench.prompt, it.text), it.image, f"POPE {split} question {it.question_id}")
                for it in items
            ]
        )
        per_split[split] = pope_metrics(answers, [it.label for it in items])
        all_answers += answers
        for key, value in per_split[split].items():
            metrics[f"{split}/{key}"] = value
        for it, a in zip(items, answers, strict=True):
            preds.append(
                {
                    "question_id": it.question_id,
                    "split": split,
                    "image": it.image.path,
                    "text": it.text,
                    "answer": a,
                    "parsed": parse_yes_no(a),
                    "label": it.label,
                }
            )
    metrics[""] = pope_headline(per_split)
    metrics["yes_ratio"] = sum(parse_yes_no(a) == "yes" for a in all_answers) / len(all_answers)
    return metrics, preds


def run_vqa(
    ctx: RunContext, bench: BenchmarkConfig, files: BenchFiles
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    assert files.question_file is not None and files.annotation_file is not None
    items = _limit(read_vqa(files.question_file, files.annotation_file), bench.max_samples)
    answers = ctx.generate(
        [(_fill(bench.prompt, it.text), it.image, f"VQA question {it.question_id}") for it in items]
    )
    scores = []
    preds = []
    for it, a in zip(items, answers, strict=True):
        if bench.vqa_metric == "vqa":
            score = vqa_accuracy(a, it.answers)
        else:
            score = float(normalize_vqa_answer(a) in {normalize_vqa_answer(r) for r in it.answers})
        scores.append(score)
        preds.append(
            {
                "question_id": it.question_id,
                "image": it.image.path if it.image else None,
                "text": it.text,
                "answer": a,
                "answers": list(it.answers),
                "score": score,
            }
        )
    return {"": sum(scores) / len(scores)}, preds


def mc_question(item: McItem) -> str:
    """LLaVA's MMBench layout: hint, question, then one `A. option` line per option."""
    text = f"{item.hint}\n{item.question}" if item.hint else item.question
    return text + "".join(f"\n{LETTERS[k]}. {o}" for k, o in enumerate(item.options))


def run_mc(
    ctx: RunContext, bench: BenchmarkConfig, files: BenchFiles
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Multiple choice by generated letter (MMBench prompt) or by the highest length-normalised
    log-likelihood of each option's text as the assistant's answer (the options listed in the question)."""
    assert files.question_file is not None
    items = _limit(read_mc(files.question_file), bench.max_samples)
    where = [f"{files.question_file} question {it.question_id}" for it in items]
    chosen: list[str | None]
    extra: list[dict[str, Any]]
    metrics: dict[str, float] = {}
    if bench.mc_mode == "generate":
        default = "{question}\n" + MC_INSTRUCTION
        questions = [
            (_fill(bench.prompt or default, mc_question(it)), it.image, w)
            for it, w in zip(items, where, strict=True)
        ]
        answers = ctx.generate(questions)
        chosen = [parse_choice_letter(a, len(it.options)) for a, it in zip(answers, items, strict=True)]
        extra = [{"answer": a} for a in answers]
        metrics["unparsed"] = sum(c is None for c in chosen) / len(chosen)
    else:
        chosen, extra = [], []
        rows = [
            (_fill(bench.prompt, mc_question(it)), it.image, w, option)
            for it, w in zip(items, where, strict=True)
            for option in it.options
        ]
        scored = ctx.option_scores(rows)
        cursor = 0
        for it in items:
            option_scores = scored[cursor : cursor + len(it.options)]
            cursor += len(it.options)
            best = pick_option_by_loglik([s for s, _ in option_scores], [n for _, n in option_scores])
            chosen.append(LETTERS[best])
            extra.append({"logliks": [s for s, _ in option_scores], "lengths": [n for _, n in option_scores]})
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
        for it, c, e in zip(items, chosen, extra, strict=True)
    ]
    return metrics, preds


RUNNERS: dict[
    str, Callable[[RunContext, BenchmarkConfig, BenchFiles], tuple[dict[str, float], list[dict[str, Any]]]]
] = {
    "pope": run_pope,
    "vqa": run_vqa,
    "mc": run_mc,
    "text_mc": run_mc,
}


def run_benchmark(
    vlm: Any,
    tokenizer: Any,
    bench: BenchmarkConfig,
    template: str,
    *,
    synthetic_dir: Path | None = None,
    prefix: str | None = None,
    image_mode: str = "pad",
    batch_size: int = 8,
    max_new_tokens: int = 16,
    log: Callable[[str], None] | None = print,
    replay: dict[str, list[Any]] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score `vlm` on one benchmark: (metrics, predictions).

    Metric names: `prefix` (default `eval/<name>`) for the headline (POPE: mean F1 over the splits;
    VQA: accuracy; MC: accuracy) and `prefix/<detail>` for the rest (POPE `<split>/<metric>` and
    `yes_ratio`; MC generate mode `unparsed`); all values are fractions in [0, 1]. Predictions are
    one JSON-able dict per question. text_mc items have no image, so only the LLM is scored.
    With `replay` (the shards' gathered outputs, `benchmark_outputs`) no model runs: `vlm` and
    `tokenizer` may be None, and the scoring is the unsharded run's.
    """
    files = bench_files(bench, synthetic_dir)
    ctx = RunContext(vlm, tokenizer, template, image_mode, batch_size, max_new_tokens, files.image_root)
    ctx.replay = replay
    t0 = time.perf_counter()
    raw, preds = RUNNERS[bench.kind](ctx, bench, files)
    prefix = prefix or f"eval/{bench.name}"
    metrics = {(f"{prefix}/{k}" if k else prefix): float(v) for k, v in raw.items()}
    if log is not None:
        log(
            f"[eval] {bench.name} ({bench.kind}, {bench.source}): {len(preds)} questions in "
            f"{time.perf_counter() - t0:.1f}s, {prefix} = {metrics[prefix]:.4f}"
        )
    return metrics, preds


def benchmark_outputs(
    vlm: Any,
    tokenizer: Any,
    bench: BenchmarkConfig,
    template: str,
    shard: Shard,
    *,
    synthetic_dir: Path | None = None,
    image_mode: str = "pad",
    batch_size: int = 8,
    max_new_tokens: int = 16,
) -> dict[str, list[Any]]:
    """The model outputs of `shard`'s batches of one benchmark (model call -> output or None per row),
    for `run_benchmark(..., replay=gathered)` to score once all shards have run."""
    files = bench_files(bench, synthetic_dir)
    ctx = RunContext(vlm, tokenizer, template, image_mode, batch_size, max_new_tokens, files.image_root)
    ctx.shard = shard
    RUNNERS[bench.kind](ctx, bench, files)
    return ctx.recorded

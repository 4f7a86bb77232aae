"""MMMU: the validation parquet files, lmms-eval's prompt, MMMU's official answer parsing, and accuracy."""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.evaluation.scorers.common import (
    LETTER_INSTRUCTION,
    SHORT_ANSWER_INSTRUCTION,
    DataFile,
    Family,
    ScorerInputError,
    option_block,
    predictions_for,
    require,
)

ACCURACY = "accuracy"
SUBJECT_PREFIX = "subject/"
DOMAIN_PREFIX = "domain/"
METRICS: tuple[str, ...] = (ACCURACY,)
MULTIPLE_CHOICE = "multiple-choice"
DEFAULT_SEED = 42  # MMMU's eval_utils seeds `random` with 42

FILES = (
    DataFile(
        "root",
        "MMMU/<Subject>/validation-*.parquet (30 subjects)",
        "https://huggingface.co/datasets/MMMU/MMMU",
    ),
)

DOMAINS: dict[str, tuple[str, ...]] = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
}


@dataclass(frozen=True)
class MmmuSample:
    id: str  # e.g. validation_Art_Theory_12
    subject: str
    question: str
    options: tuple[str, ...]
    answer: str | tuple[str, ...]
    question_type: str
    images: tuple[bytes, ...]


def subject_of(sample_id: str) -> str:
    m = re.match(r"^[^_]+_(.+?)_\d+$", sample_id)
    if not m:
        raise ScorerInputError(f"MMMU id {sample_id!r} is not '<split>_<Subject>_<n>'")
    return m.group(1)


def _literal_list(value: str) -> list[str] | None:
    text = value.strip()
    if not text.startswith("["):
        return None
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    return [str(x) for x in parsed] if isinstance(parsed, list) else None


def _sample(row: dict, where: str) -> MmmuSample:
    try:
        sid, qtype = str(row["id"]), str(row["question_type"])
        options = tuple(_literal_list(str(row["options"])) or [])
        raw_answer = str(row["answer"])
    except KeyError as err:
        raise ScorerInputError(f"{where}: missing column {err}") from err
    listed = _literal_list(raw_answer)
    answer: str | tuple[str, ...] = tuple(listed) if listed is not None else raw_answer
    images = tuple(
        row[k]["bytes"]
        for k in sorted(k for k in row if k.startswith("image_"))
        if row[k] and row[k].get("bytes")
    )
    return MmmuSample(sid, subject_of(sid), str(row["question"]), options, answer, qtype, images)


def read(paths: Mapping[str, Path]) -> list[MmmuSample]:
    import polars as pl

    root = require(paths, FILES)["root"]
    files = sorted(root.rglob("validation-*.parquet")) if root.is_dir() else [root]
    if not files:
        raise ScorerInputError(f"{root}: no validation-*.parquet files; download MMMU/MMMU from the hub")
    out = []
    for f in files:
        for n, row in enumerate(pl.read_parquet(f).iter_rows(named=True)):
            out.append(_sample(row, f"{f}: row {n}"))
    return out


def prompt(sample: MmmuSample) -> str:
    """lmms-eval's MMMU prompt: question, lettered options and the letter instruction; open questions ask
    for a word or phrase. `<image k>` markers stay in the text as MMMU writes them."""
    if sample.question_type == MULTIPLE_CHOICE:
        return f"{sample.question}\n{option_block(sample.options)}\n\n{LETTER_INSTRUCTION}"
    return f"{sample.question}\n\n{SHORT_ANSWER_INSTRUCTION}"


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(n)]


def parse_choice(response: str, options: Sequence[str], rng: random.Random) -> str:
    """MMMU's parse_multi_choice_response, in its order: strip , . ! ? ; : ' from the ends and pad with
    spaces; candidates are "(X)" forms, else " X " forms, else (for answers of more than 5 words) option
    texts found in the answer. Several candidates: the one found last in the answer. None: `rng.choice`."""
    letters = _letters(len(options))
    for ch in ",.!?;:'":
        response = response.strip(ch)
    text = f" {response} "
    cands = [c for c in letters if f"({c})" in text]
    bracketed, by_text = bool(cands), False
    if not cands:
        cands = [c for c in letters if f" {c} " in text]
    if not cands and len(text.split()) > 5:
        cands = [c for c, opt in zip(letters, options, strict=True) if opt.lower() in text.lower()]
        by_text = bool(cands)
    if not cands:
        return rng.choice(letters)
    if len(cands) == 1:
        return cands[0]
    if by_text:
        positions = [text.lower().rfind(options[letters.index(c)].lower()) for c in cands]
    elif bracketed:
        positions = [text.rfind(f"({c})") for c in cands]
    else:
        positions = [text.rfind(f" {c} ") for c in cands]
    return cands[positions.index(max(positions))]  # first maximum, as numpy's argmax


_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCI = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = {":", ",", ".", "!", "?", ";", "'"}


def normalize_open(value: str) -> list[str | float]:
    """MMMU's normalize_str: a number -> [float rounded to 2 places]; else lower case, and a single
    character becomes [" c", "c "] so it cannot match inside words."""
    value = value.strip()
    try:
        return [round(float(value.replace(",", "")), 2)]
    except ValueError:
        value = value.lower()
        return [" " + value, value + " "] if len(value) == 1 else [value]


def _key_responses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for i, part in enumerate(parts):
        indicators = _KEY_INDICATORS + (("=",) if i == len(parts) - 1 else ())
        shortest = ""
        for ind in indicators:
            if ind in part:
                tail = part.split(ind)[-1].strip()
                # MMMU's update rule verbatim in effect: an empty current value is always replaced.
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list[str | float]:
    """MMMU's parse_open_response: the tail after the last key phrase of each sentence, plus every number
    in it, each normalised; duplicates dropped."""
    keys = _key_responses(response)
    found: list[str] = list(keys)
    for k in keys:
        found += _NUM_COMMAS.findall(k) + _NUM_SCI.findall(k) + _NUM_SIMPLE.findall(k)
    out: list[str | float] = []
    for item in found:
        out.extend(normalize_open(item))
    return list(dict.fromkeys(out))


def open_correct(gold: str | Sequence[str], parsed: Sequence[str | float]) -> bool:
    """MMMU's eval_open: a parsed string containing a normalised gold string, or a parsed number equal to one."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    norm = [g for a in golds for g in normalize_open(a)]
    for pred in parsed:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in norm):
                return True
        elif pred in norm:
            return True
    return False


def is_correct(sample: MmmuSample, prediction: str, seed: int = DEFAULT_SEED) -> bool:
    if sample.question_type == MULTIPLE_CHOICE:
        # One generator per question, seeded by (seed, id): the fallback does not depend on the order or
        # the sharding of the questions (MMMU's single global generator does).
        rng = random.Random(f"{seed}:{sample.id}")
        choice = parse_choice(prediction, sample.options, rng)
        golds = [sample.answer] if isinstance(sample.answer, str) else list(sample.answer)
        return choice in golds
    return open_correct(sample.answer, parse_open(prediction))


def score(
    samples: Sequence[MmmuSample], predictions: Mapping[str, str], seed: int = DEFAULT_SEED
) -> dict[str, float]:
    """Micro accuracy over all questions, per subject and per domain (MMMU's instance-level averages)."""
    preds = predictions_for(samples, predictions)
    per_subject: dict[str, list[bool]] = {}
    for s, p in zip(samples, preds, strict=True):
        per_subject.setdefault(s.subject, []).append(is_correct(s, p, seed))
    flat = [ok for v in per_subject.values() for ok in v]
    out = {ACCURACY: sum(flat) / len(flat)}
    out.update({f"{SUBJECT_PREFIX}{k}": sum(v) / len(v) for k, v in sorted(per_subject.items())})
    for domain, subjects in DOMAINS.items():
        hits = [ok for s in subjects for ok in per_subject.get(s, [])]
        if hits:
            out[f"{DOMAIN_PREFIX}{domain}"] = sum(hits) / len(hits)
    return out


FAMILY = Family("mmmu", FILES, read, prompt, score, METRICS, ACCURACY, "letter")

"""Shared pieces of the benchmark scorers: the family record, data declarations, input errors, file readers."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# How the registry must drive the model for a family (see the package docstring):
#   short_answer  greedy, a word or phrase (max ~16 new tokens)         VQAv2, VizWiz, OCRBench, MME
#   letter        greedy, an option letter (max ~8 new tokens)          SEED-Bench, MMMU, MMVP, MMBench
#   caption       greedy, one sentence (max ~64 new tokens)             COCO captions
#   long_answer   greedy, free text (max ~1024 new tokens)              MM-Vet, LLaVA-Bench-in-the-Wild
Runner = Literal["short_answer", "letter", "caption", "long_answer"]

ImageSource = Path | bytes  # a file on disk, or the encoded image itself (MMBench's base64 column)


class ScorerInputError(ValueError):
    """A benchmark file or a prediction set that cannot be scored; the message names the file/id and the fix."""


@dataclass(frozen=True)
class DataFile:
    """One file (or folder) a benchmark needs: its role key in `read(paths)`, the usual name, where to get it."""

    role: str
    name: str
    source: str


@dataclass(frozen=True)
class Family:
    """A benchmark family as the registry drives it: read -> prompt each sample -> generate -> score.

    `score(samples, predictions, **kwargs)`; judged families take `judge=` (a `judge.Judge`).
    `submit(samples, predictions, path)` writes the evaluation server's answer file (`submission_suffix`)
    and `unanswered(samples)` says the samples carry no reference answers (a test split: nothing to score).
    """

    name: str
    files: tuple[DataFile, ...]
    read: Callable[[Mapping[str, Path]], list[Any]]
    prompt: Callable[[Any], str]
    score: Callable[..., dict[str, float]]
    metrics: tuple[str, ...]
    headline: str
    runner: Runner
    needs_judge: bool = False
    submit: Callable[[Sequence[Any], Mapping[str, str], Path], Path] | None = None
    submission_suffix: str = ""
    unanswered: Callable[[Sequence[Any]], bool] | None = None


def require(paths: Mapping[str, Path], files: Sequence[DataFile]) -> dict[str, Path]:
    """The declared files as Paths; a missing role or a path that does not exist is a user error."""
    out: dict[str, Path] = {}
    for f in files:
        if f.role not in paths:
            raise ScorerInputError(f"no path given for {f.role!r} ({f.name}); get it from {f.source}")
        p = Path(paths[f.role])
        if not p.exists():
            raise ScorerInputError(f"{p}: {f.role} file not found; get {f.name} from {f.source}")
        out[f.role] = p
    return out


def load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise ScorerInputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err


def load_json_list(path: Path, of: str = "") -> list[Any]:
    """The non-empty JSON list in ``path`` (``of``: what its items are, for the message); else a user error."""
    data = load_json(path)
    if not isinstance(data, list) or not data:
        raise ScorerInputError(f"{path}: expected a non-empty JSON list{f' of {of}' if of else ''}")
    return data


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ScorerInputError(f"{path}:{number}: not valid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise ScorerInputError(f"{path}:{number}: expected a JSON object")
            rows.append(obj)
    return rows


def field(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise ScorerInputError(f"{where}: missing field {key!r} (fields present: {', '.join(sorted(obj))})")
    return obj[key]


def predictions_for(samples: Sequence[Any], predictions: Mapping[str, str]) -> list[str]:
    """Each sample's prediction in sample order; a sample without one is an error naming its id."""
    if not samples:
        raise ScorerInputError("no samples to score")
    missing = [s.id for s in samples if s.id not in predictions]
    if missing:
        shown = ", ".join(map(str, missing[:5]))
        raise ScorerInputError(
            f"{len(missing)} samples have no prediction (first: {shown}); generate an answer for every sample id"
        )
    return [predictions[s.id] for s in samples]


def answer_letter(answer: int | str, n_options: int, letters: str, where: str) -> str:
    """The correct option's letter, given as its index (ScienceQA) or as the letter (SEED-Bench).

    The sample's options are lettered ``letters[:n_options]``; more options than letters, or an answer
    that names none of them, is a user error naming the sample.
    """
    shown = letters[:n_options]
    if n_options > len(letters):
        raise ScorerInputError(
            f"{where}: {n_options} options, but at most {len(letters)} ({letters}) are read"
        )
    letter = shown[answer] if isinstance(answer, int) and 0 <= answer < len(shown) else answer
    if not isinstance(letter, str) or len(letter) != 1 or letter not in shown:
        raise ScorerInputError(
            f"{where}: answer {answer!r} is not one of the {n_options} options ({'/'.join(shown) or 'none'})"
        )
    return letter


def option_block(options: Sequence[str]) -> str:
    """'A. first\\nB. second ...', the option layout LLaVA-1.5's multiple-choice prompts use."""
    return "\n".join(f"{chr(ord('A') + i)}. {opt}" for i, opt in enumerate(options))


LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."

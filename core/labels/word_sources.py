"""SEA's word-list sources (`sea.words.source`): the captions' frequent words, a file, 2of12, the syntactic
analysis of the captions, or the EMNLP recipe joining the last two."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.labels.syntax import syntactic_words
from core.labels.words import DEFAULT_2OF12_PATH, caption_words, join_words, read_2of12, read_word_list


@dataclass(frozen=True)
class WordsRequest:
    """What a word source may read: the stage-1 dataset, the user's file, the frequency settings."""

    json_path: Path
    path: str | None
    min_count: int
    max_words: int | None

    def file(self) -> Path:
        return Path(self.path or DEFAULT_2OF12_PATH).expanduser()


def _syntactic(req: WordsRequest) -> list[str]:
    return syntactic_words(req.json_path, min_count=req.min_count, max_words=req.max_words)


# sea.words.source -> how its word list is built (core/config/trial.py WordsConfig.source lists the same).
WORD_SOURCES: dict[str, Callable[[WordsRequest], list[str]]] = {
    "captions": lambda r: caption_words(r.json_path, min_count=r.min_count, max_words=r.max_words),
    "file": lambda r: read_word_list(Path(r.path or "").expanduser()),
    "2of12": lambda r: read_2of12(r.file()),
    "syntactic": _syntactic,
    # The EMNLP recipe: the syntactic analysis of the corpus, joined with the 2of12 list.
    "syntactic+2of12": lambda r: join_words(_syntactic(r), read_2of12(r.file())),
}


def source_words(source: str, request: WordsRequest) -> list[str]:
    """The word list `source` builds for `request`."""
    if source not in WORD_SOURCES:
        raise ValueError(f"sea.words.source={source!r}: unknown; allowed: {', '.join(WORD_SOURCES)}")
    return WORD_SOURCES[source](request)

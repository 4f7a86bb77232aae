"""The label store's writer: creates or resumes a store in place and plans, tracks and merges its shards."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from core.cache import DONE_MARKER
from core.labels.store_format import (
    IDS_FILE,
    IMAGES_FILE,
    INDEX_DTYPE,
    INDEX_FILE,
    META_FILE,
    PROGRESS_FILE,
    SCORE_FILE,
    WORDS_FILE,
    read_json,
    read_shards,
    row_shape,
    shard_file,
    shard_paths,
    write_json,
)
from core.labels.words import check_words, write_word_list

__all__ = ["StoreWriter"]


class StoreWriter:
    """Writes a store in place, resumably: rows land in memory-mapped ``.npy`` files, then progress.

    The caller holds the store's lock. Creation writes the small files, then the arrays, then
    ``progress.json``, then ``meta.json`` last, so a directory without ``meta.json`` is simply restarted.
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        index: np.memmap,
        score: np.memmap,
        done: int,
        missing: list[str],
    ) -> None:
        self.path = path
        self.meta = meta
        self.index = index
        self.score = score
        self.done = done
        self.missing = missing

    @classmethod
    def create_or_resume(
        cls,
        path: str | Path,
        meta: dict[str, Any],
        words: Sequence[str],
        ids: Sequence[str],
        images: Sequence[str],
    ) -> StoreWriter:
        """Resume the unfinished store at ``path`` when its ``meta.json`` equals ``meta``, else start it.

        An unfinished store whose meta differs (same directory, other content: a dataset identity that
        does not follow the data) is a ValueError naming the field, never silently overwritten.
        """
        path = Path(path)
        words = check_words(words)
        if len(ids) != meta["num_images"] or len(images) != meta["num_images"]:
            raise ValueError(
                f"ids/images have {len(ids)}/{len(images)} entries, meta says {meta['num_images']}"
            )
        if (path / META_FILE).is_file():
            resumed = cls._resume(path, meta, ids)
            if resumed is not None:
                return resumed
            # The partial files are unusable; an unfinished store holds nothing worth keeping.
        return cls._create(path, meta, words, ids, images)

    @classmethod
    def _resume(cls, path: Path, meta: dict[str, Any], ids: Sequence[str]) -> StoreWriter | None:
        """The writer of the unfinished store at ``path`` if its files are usable, else ``None``."""
        found = read_json(path, META_FILE)
        for field in sorted(set(found) | set(meta)):
            if found.get(field) != meta.get(field):
                raise ValueError(
                    f"label store {path}: unfinished store has {field}={found.get(field)!r} but this "
                    f"extraction has {field}={meta.get(field)!r}; delete the directory to start over"
                )
        shape = row_shape(meta)
        try:
            index = open_memmap(path / INDEX_FILE, mode="r+")
            score = open_memmap(path / SCORE_FILE, mode="r+")
            progress = json.loads((path / PROGRESS_FILE).read_text())
            stored_ids = json.loads((path / IDS_FILE).read_text())
            ok = (
                index.shape == shape
                and score.shape == shape
                and stored_ids == list(ids)
                and 0 <= int(progress["done"]) <= shape[0]
            )
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            return None
        return cls(path, meta, index, score, int(progress["done"]), list(progress.get("missing", [])))

    @classmethod
    def _create(
        cls, path: Path, meta: dict[str, Any], words: list[str], ids: Sequence[str], images: Sequence[str]
    ) -> StoreWriter:
        """Start the store afresh: small files, arrays, ``progress.json``, then ``meta.json`` last."""
        shape = row_shape(meta)
        path.mkdir(parents=True, exist_ok=True)
        (path / META_FILE).unlink(missing_ok=True)
        for file in shard_paths(path):
            file.unlink()
        write_word_list(words, path / WORDS_FILE)
        write_json(path / IDS_FILE, list(ids))
        write_json(path / IMAGES_FILE, list(images))
        index = open_memmap(path / INDEX_FILE, mode="w+", dtype=np.dtype(INDEX_DTYPE), shape=shape)
        score = open_memmap(path / SCORE_FILE, mode="w+", dtype=np.dtype(meta["score_dtype"]), shape=shape)
        writer = cls(path, meta, index, score, 0, [])
        writer.commit()
        write_json(path / META_FILE, meta)
        return writer

    @property
    def stop(self) -> int:
        """One past the last row this writer fills (all rows)."""
        return int(self.meta["num_images"])

    def shards(self) -> list[dict[str, Any]]:
        """The shards of an interrupted sharded extraction if they tile rows ``done:N`` exactly, else ``[]``.

        Shard files that do not fit (left over after their merge was interrupted, or damaged) are
        deleted: their rows lie beyond ``done``, so they are simply extracted again.
        """
        try:
            shards = read_shards(self.path)
            edges = [(int(s["start"]), int(s["done"]), int(s["stop"])) for s in shards]
            for s in shards:
                s["missing"] = [str(i) for i in s.get("missing", [])]
        except (ValueError, KeyError, TypeError):
            shards, edges = [], []
        starts = [a for a, _, _ in edges]
        stops = [b for _, _, b in edges]
        if (
            shards
            and starts == sorted(starts)
            and starts[0] == self.done
            and stops[-1] == self.stop
            and starts[1:] == stops[:-1]
            and all(a <= d <= b for a, d, b in edges)
        ):
            return shards
        for file in shard_paths(self.path):
            file.unlink()
        return []

    def plan_shards(self, bounds: Sequence[tuple[int, int]]) -> None:
        """Start a sharded extraction: one ``progress-<k>.json`` per ``(start, stop)`` range of ``bounds``.

        The ranges must tile rows ``done:N`` in order.
        """
        edges = [self.done] + [int(b) for _, b in bounds]
        if not bounds or [int(a) for a, _ in bounds] != edges[:-1] or edges[-1] != self.stop:
            raise ValueError(f"bounds={list(bounds)}: must tile rows {self.done}:{self.stop} in order")
        for file in shard_paths(self.path):
            file.unlink()
        for k, (start, stop) in enumerate(bounds):
            record = {"start": int(start), "stop": int(stop), "done": int(start), "missing": []}
            write_json(shard_file(self.path, k), record)

    def merge_shards(self) -> None:
        """Fold the complete shards into ``progress.json`` (missing ids in row order), then delete them."""
        shards = self.shards()
        unfinished = [s["shard"] for s in shards if s["done"] != s["stop"]]
        if not shards or unfinished:
            raise RuntimeError(
                f"label store {self.path}: cannot merge shards, unfinished: {unfinished or 'no shard files'}"
            )
        self.commit(self.stop, [i for s in shards for i in s["missing"]])
        for file in shard_paths(self.path):
            file.unlink()

    def write(self, start: int, index: np.ndarray, score: np.ndarray) -> None:
        """Put rows ``start : start + len(index)`` (not yet committed)."""
        stop = start + index.shape[0]
        self.index[start:stop] = index
        self.score[start:stop] = score

    def commit(self, done: int | None = None, missing: Sequence[str] = ()) -> None:
        """Flush the arrays, then record ``done`` rows (and newly missing ids) in ``progress.json``."""
        self.index.flush()
        self.score.flush()
        if done is not None:
            self.done = done
        self.missing.extend(missing)
        write_json(self.path / PROGRESS_FILE, {"done": self.done, "missing": self.missing})

    def finish(self) -> None:
        """Mark the store complete (``.done``); every row must have been committed."""
        if self.done != self.meta["num_images"]:
            raise RuntimeError(
                f"label store {self.path}: {self.done}/{self.meta['num_images']} rows done, cannot finish"
            )
        self.commit()
        (self.path / DONE_MARKER).write_text("ok\n")

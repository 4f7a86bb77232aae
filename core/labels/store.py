"""The label store's reader: a finished store, checked and memory-mapped, one image row at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.cache import DONE_MARKER, is_built
from core.labels.store_format import (
    CHECKABLE,
    FORMAT_NAME,
    FORMAT_VERSION,
    IDS_FILE,
    IMAGES_FILE,
    INDEX_FILE,
    META_FILE,
    PROGRESS_FILE,
    SCORE_FILE,
    WORDS_FILE,
    check_meta,
    normalise,
    read_json,
    read_shards,
    row_shape,
)
from core.labels.words import read_word_list, word_list_hash

__all__ = ["LabelStore"]


class LabelStore:
    """A finished label store, opened read-only and memory-mapped; ``store[i]`` is image row ``i``.

    On-disk format (version 1), one directory per (label encoder, word list, dataset, top-n, sign,
    score dtype):

    - ``meta.json``: ``format`` ("seagrid-labels"), ``version`` (1), ``encoder`` (the label encoder id),
      ``word_list_hash``, ``num_words``, ``dataset`` (the dataset identity it was built with), ``top_n``,
      ``sign`` ("negated" = -cos, "plain" = +cos), ``grid`` ``[h, w]`` (row-major patches, m = h * w),
      ``num_images`` N, ``index_dtype`` ("int32"), ``score_dtype`` ("float32" or "float16").
    - ``words.txt``: the word list, one per line; label index ``k`` is line ``k`` (0-based).
    - ``index.npy``: ``int32 [N, m, n]`` word indices, ``-1`` = empty slot.
    - ``score.npy``: ``score_dtype [N, m, n]`` scores, each patch's slots descending, ``> 0`` (``0`` in
      empty slots). Both are standard ``.npy`` files (``numpy.load(..., mmap_mode="r")``).
    - ``ids.json`` / ``images.json``: the sample id / relative image path of each row: the records of
      the dataset JSON that have an image, in file order (text-only records have no row).
    - ``progress.json``: ``{"done": rows written, "missing": [ids whose image file was missing]}``;
      rows of missing images hold no labels. In a finished store ``done`` = N and ``missing`` is in
      row order, however the store was extracted.
    - ``.done``: written last; a directory without it is an unfinished (resumable) extraction.

    An unfinished store extracted in shards (by parallel workers) also holds ``progress-<k>.json``
    for shard k: ``{"start", "stop", "done", "missing"}``, rows ``start:done`` of the shard's range
    ``start:stop`` written. The shards tile the rows after ``progress.json``'s ``done`` prefix; once
    all are complete they are folded into ``progress.json`` and deleted before ``.done`` is written,
    so a finished store has the same files, byte for byte, as one extracted in a single process
    (shard files only ever exist in unfinished stores, hence still version 1).
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        words: list[str],
        ids: list[str],
        images: list[str],
        missing: list[str],
    ) -> None:
        self.path = path
        self.meta = meta
        self.words = words
        self.ids = ids
        self.images = images
        self.missing_ids = missing
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self._row_of_id: dict[str, int] | None = None

    @classmethod
    def open(cls, path: str | Path, expected: Mapping[str, Any] | None = None) -> LabelStore:
        """Open a finished store and check it against what the caller expects.

        ``expected`` maps any of ``encoder, word_list_hash, num_words, dataset, top_n, sign, grid,
        num_images, score_dtype`` to the required value; a difference is a ValueError naming the field,
        the store and both values. A missing file or an array of the wrong shape is a ValueError too.
        """
        path = Path(path)
        expected = dict(expected or {})
        unknown = sorted(set(expected) - set(CHECKABLE))
        if unknown:
            raise ValueError(f"expected has unknown fields {unknown}; checkable: {', '.join(CHECKABLE)}")
        _check_finished(path)
        meta = _read_meta(path, expected)
        words = _read_words(path, meta)
        ids, images, missing = _read_rows(path, meta)
        store = cls(path, meta, words, ids, images, missing)
        store._open_arrays()  # fail now, not in a data-loader worker, if the arrays are bad
        return store

    def _open_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            shape = row_shape(self.meta)
            arrays = []
            for name, dtype in (
                (INDEX_FILE, self.meta["index_dtype"]),
                (SCORE_FILE, self.meta["score_dtype"]),
            ):
                file = self.path / name
                if not file.is_file():
                    raise ValueError(
                        f"label store {self.path}: corrupt, {name} is missing; delete the directory to rebuild it"
                    )
                try:
                    array = np.load(file, mmap_mode="r")
                except (OSError, ValueError) as err:
                    raise ValueError(
                        f"label store {self.path}: corrupt, cannot read {name} ({err}); delete the directory "
                        "to rebuild it"
                    ) from err
                if array.shape != shape or array.dtype != np.dtype(dtype):
                    raise ValueError(
                        f"label store {self.path}: corrupt, {name} is {array.dtype}{list(array.shape)}, "
                        f"meta.json says {dtype}{list(shape)} ([num_images, h*w, top_n])"
                    )
                arrays.append(array)
            self._arrays = (arrays[0], arrays[1])
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its whole content; a data-loader worker re-maps the files instead.
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.meta["grid"]
        return int(h), int(w)

    @property
    def top_n(self) -> int:
        return int(self.meta["top_n"])

    @property
    def encoder(self) -> str:
        return str(self.meta["encoder"])

    def __len__(self) -> int:
        return int(self.meta["num_images"])

    def __getitem__(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """``(index int32 [m, n], score float32 [m, n])`` of row ``row`` (dataset image order), copied."""
        n = len(self)
        if not -n <= row < n:
            raise IndexError(f"label store {self.path}: row {row} out of range for {n} images")
        index, score = self._open_arrays()
        return np.array(index[row], dtype=np.int32), np.array(score[row], dtype=np.float32)

    def row_of(self, sample_id: str) -> int:
        """The row of ``sample_id``; a KeyError if absent, a ValueError if several rows share it."""
        if self._row_of_id is None:
            rows: dict[str, int] = {}
            for row, sid in enumerate(self.ids):
                rows[sid] = -1 if sid in rows else row  # -1: ambiguous
            self._row_of_id = rows
        row = self._row_of_id[str(sample_id)]
        if row < 0:
            raise ValueError(
                f"label store {self.path}: sample id {sample_id!r} names several rows; look up by row"
            )
        return row

    def by_id(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Labels of the row whose sample id is ``sample_id``."""
        return self[self.row_of(sample_id)]


def _check_finished(path: Path) -> None:
    """A ValueError unless ``path`` is a store directory with its ``.done`` marker."""
    if not path.is_dir():
        raise ValueError(f"label store {path} does not exist; run label extraction first")
    if not is_built(path):
        done: Any = "?"
        if (path / PROGRESS_FILE).is_file():
            done = read_json(path, PROGRESS_FILE).get("done", "?")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                done += sum(int(s["done"]) - int(s["start"]) for s in read_shards(path))
        raise ValueError(
            f"label store {path}: unfinished extraction ({done} images done, no {DONE_MARKER} marker); "
            "run extraction again to resume it"
        )


def _read_meta(path: Path, expected: Mapping[str, Any]) -> dict[str, Any]:
    """``meta.json``, checked: well formed, this code's format and version, and equal to ``expected``."""
    meta = check_meta(path, read_json(path, META_FILE))
    if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"label store {path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
            f"this code reads {FORMAT_NAME!r} version {FORMAT_VERSION}; rebuild the store"
        )
    for field, want in expected.items():
        found = normalise(field, meta.get(field))
        if normalise(field, want) != found:
            raise ValueError(
                f"label store {path}: {field} mismatch: expected {normalise(field, want)!r}, found {found!r}; "
                "it was built for other settings or data: point at the right store, or delete this one "
                "and rerun the label step"
            )
    return meta


def _read_words(path: Path, meta: Mapping[str, Any]) -> list[str]:
    """``words.txt``, checked against the count and hash ``meta.json`` records."""
    if not (path / WORDS_FILE).is_file():
        raise ValueError(
            f"label store {path}: corrupt, {WORDS_FILE} is missing; delete the directory to rebuild it"
        )
    words = read_word_list(path / WORDS_FILE)
    if len(words) != meta["num_words"] or word_list_hash(words) != meta["word_list_hash"]:
        raise ValueError(
            f"label store {path}: corrupt, {WORDS_FILE} ({len(words)} words, hash {word_list_hash(words)}) "
            f"does not match meta.json ({meta['num_words']} words, hash {meta['word_list_hash']})"
        )
    return words


def _read_rows(path: Path, meta: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(sample ids, image paths, missing ids) of the rows, checked against ``num_images``."""
    ids, images = read_json(path, IDS_FILE), read_json(path, IMAGES_FILE)
    n_rows = int(meta["num_images"])
    for name, rows in ((IDS_FILE, ids), (IMAGES_FILE, images)):
        if not isinstance(rows, list) or len(rows) != n_rows:
            found = len(rows) if isinstance(rows, list) else type(rows).__name__
            raise ValueError(
                f"label store {path}: corrupt, {name} has {found} entries, meta.json says num_images={n_rows}"
            )
    progress = read_json(path, PROGRESS_FILE)
    if not isinstance(progress, dict) or not isinstance(progress.get("missing", []), list):
        raise ValueError(
            f"label store {path}: corrupt, {PROGRESS_FILE} is not an object with a 'missing' list; "
            "delete the directory to rebuild it"
        )
    return [str(i) for i in ids], [str(i) for i in images], list(progress.get("missing", []))

"""The on-disk label store: memory-mapped per-image label arrays, written resumably, read lazily."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from core.cache import DONE_MARKER, is_built
from core.labels.words import check_words, read_word_list, word_list_hash, write_word_list

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CHECKABLE",
    "SCORE_DTYPES",
    "LabelStore",
    "ShardWriter",
    "StoreWriter",
    "locked",
    "read_shards",
]

FORMAT_NAME = "seagrid-labels"
FORMAT_VERSION = 1
SCORE_DTYPES = ("float32", "float16")
INDEX_DTYPE = "int32"

META_FILE = "meta.json"
WORDS_FILE = "words.txt"
INDEX_FILE = "index.npy"
SCORE_FILE = "score.npy"
IDS_FILE = "ids.json"
IMAGES_FILE = "images.json"
PROGRESS_FILE = "progress.json"
SHARD_PREFIX = "progress-"  # progress-<k>.json: shard k of an unfinished sharded extraction

# Fields `LabelStore.open(expected=...)` can check, i.e. the meta fields that describe content.
CHECKABLE = (
    "encoder",
    "word_list_hash",
    "num_words",
    "dataset",
    "top_n",
    "sign",
    "grid",
    "num_images",
    "score_dtype",
)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for the store at ``path`` (the steps' lease lock beside it: no ``flock``)."""
    from core.steps.lease import Lease

    with Lease(path.parent / f".{path.name}.lock"):
        yield


def _write_json(path: Path, data: Any) -> None:
    # Write-then-rename: a reader (or a crash) never sees a half-written file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _shard_file(store: Path, shard: int) -> Path:
    return store / f"{SHARD_PREFIX}{shard}.json"


def _shard_paths(store: Path) -> list[Path]:
    return sorted(
        (p for p in store.glob(f"{SHARD_PREFIX}*.json") if p.stem[len(SHARD_PREFIX) :].isdigit()),
        key=lambda p: int(p.stem[len(SHARD_PREFIX) :]),
    )


def read_shards(store: str | Path) -> list[dict[str, Any]]:
    """The shard progress records of an unfinished sharded extraction, by shard number (``[]`` if none).

    Each is ``{"shard", "start", "stop", "done", "missing"}``: rows ``start:done`` of the shard's range
    ``start:stop`` are written. A record that cannot be read is a ValueError.
    """
    store = Path(store)
    shards = []
    for file in _shard_paths(store):
        record = _read_json(store, file.name)
        shards.append({"shard": int(file.stem[len(SHARD_PREFIX) :]), **record})
    return shards


def _normalise(field: str, value: Any) -> Any:
    if field == "grid" and value is not None:
        return [int(v) for v in value]
    return value


def _read_json(store: Path, name: str) -> Any:
    path = store / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"label store {store}: corrupt, {name} is missing; delete the directory to rebuild it"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"label store {store}: corrupt, cannot read {name} ({err}); delete the directory to rebuild it"
        ) from err


# The type of every meta.json field: a missing key or another type is a corrupt store, named as such.
META_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "version": int,
    "encoder": str,
    "word_list_hash": str,
    "num_words": int,
    "dataset": dict,
    "top_n": int,
    "sign": str,
    "grid": list,
    "num_images": int,
    "index_dtype": str,
    "score_dtype": str,
}


def _check_meta(store: Path, meta: Any) -> dict[str, Any]:
    """meta.json as a dict with every field of its type (a KeyError or TypeError later would be a traceback)."""
    fix = "delete the directory to rebuild it"
    if not isinstance(meta, dict):
        raise ValueError(
            f"label store {store}: corrupt, {META_FILE} is a {type(meta).__name__}, not an object; {fix}"
        )
    if meta.get("format") != FORMAT_NAME:
        return meta  # another format: the caller names format and version
    for key, kind in META_TYPES.items():
        value = meta.get(key)
        if key not in meta:
            raise ValueError(f"label store {store}: corrupt, {META_FILE} has no {key!r}; {fix}")
        bad = isinstance(value, bool) or not isinstance(value, kind)
        if key == "grid" and isinstance(value, list):  # `not bad`, written so that the list type shows
            bad = len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if bad:
            want = "[height, width] of ints" if key == "grid" else getattr(kind, "__name__", str(kind))
            raise ValueError(
                f"label store {store}: corrupt, {META_FILE} {key}={value!r} is not a {want}; {fix}"
            )
    return meta


def make_meta(
    *,
    encoder: str,
    words: Sequence[str],
    dataset: Mapping[str, Any],
    top_n: int,
    sign: str,
    grid: Sequence[int],
    num_images: int,
    score_dtype: str,
) -> dict[str, Any]:
    """The ``meta.json`` content of a store (see :class:`LabelStore` for the format)."""
    if sign not in ("negated", "plain"):
        raise ValueError(f"sign={sign!r}: must be 'negated' (score = -cos, the paper's) or 'plain' (+cos)")
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"top_n={top_n!r}: must be an int >= 1")
    if score_dtype not in SCORE_DTYPES:
        raise ValueError(f"score_dtype={score_dtype!r}: must be one of {SCORE_DTYPES}")
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "encoder": encoder,
        "word_list_hash": word_list_hash(words),
        "num_words": len(words),
        "dataset": dict(dataset),
        "top_n": int(top_n),
        "sign": sign,
        "grid": [int(g) for g in grid],
        "num_images": int(num_images),
        "index_dtype": INDEX_DTYPE,
        "score_dtype": score_dtype,
    }


def _row_shape(meta: Mapping[str, Any]) -> tuple[int, int, int]:
    h, w = meta["grid"]
    return int(meta["num_images"]), int(h) * int(w), int(meta["top_n"])


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
        if not path.is_dir():
            raise ValueError(f"label store {path} does not exist; run label extraction first")
        if not is_built(path):
            done: Any = "?"
            if (path / PROGRESS_FILE).is_file():
                done = _read_json(path, PROGRESS_FILE).get("done", "?")
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    done += sum(int(s["done"]) - int(s["start"]) for s in read_shards(path))
            raise ValueError(
                f"label store {path}: unfinished extraction ({done} images done, no {DONE_MARKER} marker); "
                "run extraction again to resume it"
            )
        meta = _check_meta(path, _read_json(path, META_FILE))
        if meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"label store {path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                f"this code reads {FORMAT_NAME!r} version {FORMAT_VERSION}; rebuild the store"
            )
        for field, want in expected.items():
            found = _normalise(field, meta.get(field))
            if _normalise(field, want) != found:
                raise ValueError(
                    f"label store {path}: {field} mismatch: expected {_normalise(field, want)!r}, found {found!r}; "
                    "it was built for other settings or data: point at the right store, or delete this one "
                    "and rerun the label step"
                )
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
        ids, images = _read_json(path, IDS_FILE), _read_json(path, IMAGES_FILE)
        n_rows = int(meta["num_images"])
        for name, rows in ((IDS_FILE, ids), (IMAGES_FILE, images)):
            if not isinstance(rows, list) or len(rows) != n_rows:
                found = len(rows) if isinstance(rows, list) else type(rows).__name__
                raise ValueError(
                    f"label store {path}: corrupt, {name} has {found} entries, meta.json says num_images={n_rows}"
                )
        progress = _read_json(path, PROGRESS_FILE)
        if not isinstance(progress, dict) or not isinstance(progress.get("missing", []), list):
            raise ValueError(
                f"label store {path}: corrupt, {PROGRESS_FILE} is not an object with a 'missing' list; "
                "delete the directory to rebuild it"
            )
        store = cls(
            path,
            meta,
            words,
            [str(i) for i in ids],
            [str(i) for i in images],
            list(progress.get("missing", [])),
        )
        store._open_arrays()  # fail now, not in a data-loader worker, if the arrays are bad
        return store

    def _open_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            shape = _row_shape(self.meta)
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
        shape = _row_shape(meta)
        if (path / META_FILE).is_file():
            found = _read_json(path, META_FILE)
            for field in sorted(set(found) | set(meta)):
                if found.get(field) != meta.get(field):
                    raise ValueError(
                        f"label store {path}: unfinished store has {field}={found.get(field)!r} but this "
                        f"extraction has {field}={meta.get(field)!r}; delete the directory to start over"
                    )
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
            if ok:
                return cls(path, meta, index, score, int(progress["done"]), list(progress.get("missing", [])))
            # The partial files are unusable; an unfinished store holds nothing worth keeping.
        path.mkdir(parents=True, exist_ok=True)
        (path / META_FILE).unlink(missing_ok=True)
        for file in _shard_paths(path):
            file.unlink()
        write_word_list(words, path / WORDS_FILE)
        _write_json(path / IDS_FILE, list(ids))
        _write_json(path / IMAGES_FILE, list(images))
        index = open_memmap(path / INDEX_FILE, mode="w+", dtype=np.dtype(INDEX_DTYPE), shape=shape)
        score = open_memmap(path / SCORE_FILE, mode="w+", dtype=np.dtype(meta["score_dtype"]), shape=shape)
        writer = cls(path, meta, index, score, 0, [])
        writer.commit()
        _write_json(path / META_FILE, meta)
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
        for file in _shard_paths(self.path):
            file.unlink()
        return []

    def plan_shards(self, bounds: Sequence[tuple[int, int]]) -> None:
        """Start a sharded extraction: one ``progress-<k>.json`` per ``(start, stop)`` range of ``bounds``.

        The ranges must tile rows ``done:N`` in order.
        """
        edges = [self.done] + [int(b) for _, b in bounds]
        if not bounds or [int(a) for a, _ in bounds] != edges[:-1] or edges[-1] != self.stop:
            raise ValueError(f"bounds={list(bounds)}: must tile rows {self.done}:{self.stop} in order")
        for file in _shard_paths(self.path):
            file.unlink()
        for k, (start, stop) in enumerate(bounds):
            record = {"start": int(start), "stop": int(stop), "done": int(start), "missing": []}
            _write_json(_shard_file(self.path, k), record)

    def merge_shards(self) -> None:
        """Fold the complete shards into ``progress.json`` (missing ids in row order), then delete them."""
        shards = self.shards()
        unfinished = [s["shard"] for s in shards if s["done"] != s["stop"]]
        if not shards or unfinished:
            raise RuntimeError(
                f"label store {self.path}: cannot merge shards, unfinished: {unfinished or 'no shard files'}"
            )
        self.commit(self.stop, [i for s in shards for i in s["missing"]])
        for file in _shard_paths(self.path):
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
        _write_json(self.path / PROGRESS_FILE, {"done": self.done, "missing": self.missing})

    def finish(self) -> None:
        """Mark the store complete (``.done``); every row must have been committed."""
        if self.done != self.meta["num_images"]:
            raise RuntimeError(
                f"label store {self.path}: {self.done}/{self.meta['num_images']} rows done, cannot finish"
            )
        self.commit()
        (self.path / DONE_MARKER).write_text("ok\n")


def _npy_data_offset(file: Path, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Byte offset of the data of a C-ordered ``.npy`` file of ``shape`` and ``dtype``; else a ValueError."""
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        found_shape, fortran, found_dtype = read_header(f)
        if tuple(found_shape) != shape or found_dtype != dtype or fortran:
            raise ValueError(
                f"{file}: {found_dtype}{list(found_shape)} (fortran={fortran}), expected {dtype}{list(shape)}"
            )
        return f.tell()


class ShardWriter:
    """Writes shard ``k`` (rows ``start:stop``) of an unfinished store, from any process (a Ray worker).

    Shards write disjoint rows of the shared ``index.npy``/``score.npy`` with positioned writes of
    exactly their own bytes (not a memory map, whose page-sized write-back could overwrite a
    neighbouring shard's rows on a network filesystem), and their progress in ``progress-<k>.json``.
    The driver holds the store's lock for them and merges the shards when all are complete.
    """

    def __init__(self, path: Path, shard: int, meta: dict[str, Any], record: dict[str, Any]) -> None:
        self.path, self.shard, self.meta = path, shard, meta
        self.start, self.stop, self.done = int(record["start"]), int(record["stop"]), int(record["done"])
        self.missing = [str(i) for i in record.get("missing", [])]
        shape = _row_shape(meta)
        self._files = []
        for name, dtype in ((INDEX_FILE, meta["index_dtype"]), (SCORE_FILE, meta["score_dtype"])):
            offset = _npy_data_offset(path / name, shape, np.dtype(dtype))
            row_bytes = shape[1] * shape[2] * np.dtype(dtype).itemsize
            self._files.append((os.open(path / name, os.O_WRONLY), offset, row_bytes, np.dtype(dtype)))

    @classmethod
    def open(cls, path: str | Path, shard: int) -> ShardWriter:
        """The writer of shard ``shard`` as its ``progress-<shard>.json`` records it."""
        path = Path(path)
        return cls(path, shard, _read_json(path, META_FILE), _read_json(path, _shard_file(path, shard).name))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd, *_ in self._files:
            os.close(fd)
        self._files = []

    def write(self, start: int, index: np.ndarray, score: np.ndarray) -> None:
        """Put rows ``start : start + len(index)``, which must lie in this shard (not yet committed)."""
        stop = start + index.shape[0]
        if not self.start <= start <= stop <= self.stop or score.shape[0] != index.shape[0]:
            raise ValueError(
                f"rows {start}:{stop} ({index.shape[0]} index, {score.shape[0]} score rows) are not inside "
                f"shard {self.shard}'s rows {self.start}:{self.stop}"
            )
        for (fd, offset, row_bytes, dtype), rows in zip(self._files, (index, score), strict=True):
            data = np.ascontiguousarray(rows, dtype=dtype).data.cast("B")  # .data: the array's memoryview
            at = offset + start * row_bytes
            while data:  # pwrite may write less than asked
                written = os.pwrite(fd, data, at)
                data, at = data[written:], at + written

    def commit(self, done: int | None = None, missing: Sequence[str] = ()) -> None:
        """Make the written rows durable, then record ``done`` (and newly missing ids) in the shard file."""
        for fd, *_ in self._files:
            os.fdatasync(fd)
        if done is not None:
            self.done = done
        self.missing.extend(missing)
        record = {"start": self.start, "stop": self.stop, "done": self.done, "missing": self.missing}
        _write_json(_shard_file(self.path, self.shard), record)

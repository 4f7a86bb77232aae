"""One shard's writer: positioned writes of its own rows of a store's arrays, from any process (a Ray worker)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.labels.store_format import (
    INDEX_FILE,
    META_FILE,
    SCORE_FILE,
    read_json,
    row_shape,
    shard_file,
    write_json,
)

__all__ = ["ShardWriter"]


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
        shape = row_shape(meta)
        self._files = []
        for name, dtype in ((INDEX_FILE, meta["index_dtype"]), (SCORE_FILE, meta["score_dtype"])):
            offset = _npy_data_offset(path / name, shape, np.dtype(dtype))
            row_bytes = shape[1] * shape[2] * np.dtype(dtype).itemsize
            self._files.append((os.open(path / name, os.O_WRONLY), offset, row_bytes, np.dtype(dtype)))

    @classmethod
    def open(cls, path: str | Path, shard: int) -> ShardWriter:
        """The writer of shard ``shard`` as its ``progress-<shard>.json`` records it."""
        path = Path(path)
        return cls(path, shard, read_json(path, META_FILE), read_json(path, shard_file(path, shard).name))

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
        write_json(shard_file(self.path, self.shard), record)

"""The label store's on-disk format: file names, meta.json (made and checked), JSON files, shard records, the lock."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.labels.words import word_list_hash

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


def write_json(path: Path, data: Any) -> None:
    # Write-then-rename: a reader (or a crash) never sees a half-written file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def shard_file(store: Path, shard: int) -> Path:
    return store / f"{SHARD_PREFIX}{shard}.json"


def shard_paths(store: Path) -> list[Path]:
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
    for file in shard_paths(store):
        record = read_json(store, file.name)
        shards.append({"shard": int(file.stem[len(SHARD_PREFIX) :]), **record})
    return shards


def normalise(field: str, value: Any) -> Any:
    if field == "grid" and value is not None:
        return [int(v) for v in value]
    return value


def read_json(store: Path, name: str) -> Any:
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


def check_meta(store: Path, meta: Any) -> dict[str, Any]:
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


def row_shape(meta: Mapping[str, Any]) -> tuple[int, int, int]:
    h, w = meta["grid"]
    return int(meta["num_images"]), int(h) * int(w), int(meta["top_n"])

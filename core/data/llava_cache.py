"""Caches for LLaVA JSON at scale: one parse per process, token lengths computed once and kept on disk."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.paths import cache_dir

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer

# Parsed JSON lists per (path, mtime_ns, size, inode): a 665K-record file takes ~10 s to parse, and a
# trial builds its datasets once per stage (and benchmarks/evals again). Two stages' files fit.
_PARSED: OrderedDict[tuple[str, int, int, int], list[Any]] = OrderedDict()
_PARSED_KEEP = 2
# Keys of cached parses whose every record passed `_validate_record` (records are never mutated).
_VALIDATED: set[tuple[str, int, int, int]] = set()
# Bump when the layout of the lengths file changes, so old files are never misread.
_LENGTHS_VERSION = 1


def _file_key(path: Path) -> tuple[str, int, int, int]:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino


def parse_json_list(path: Path) -> Any:
    """`json.loads` of `path`, once per process while the file is unchanged (the result is shared: never
    mutate it). JSON errors propagate as `json.JSONDecodeError`."""
    key = _file_key(path)
    if key in _PARSED:
        _PARSED.move_to_end(key)
        return _PARSED[key]
    raw = json.loads(path.read_text())
    _PARSED[key] = raw
    while len(_PARSED) > _PARSED_KEEP:
        _VALIDATED.discard(_PARSED.popitem(last=False)[0])
    return raw


def mark_validated(raw: list[Any]) -> None:
    """Record that every record of a cached parse passed validation (so later datasets skip it)."""
    for key, value in _PARSED.items():
        if value is raw:
            _VALIDATED.add(key)


def is_validated(raw: list[Any]) -> bool:
    return any(value is raw and key in _VALIDATED for key, value in _PARSED.items())


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str | None:
    """A hash of what decides a tokenizer's ids: a fast tokenizer's whole serialisation (vocabulary,
    merges, normaliser, post-processor), else its vocabulary, plus its class and bos/eos/legacy flags;
    None when neither is available (then nothing is cached)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        if backend is not None:
            body = backend.to_str()
        elif hasattr(tokenizer, "get_vocab"):
            body = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
        else:
            return None
    except (TypeError, NotImplementedError, AttributeError):
        return None
    digest = hashlib.sha256()
    flags = ("legacy", "add_bos_token", "add_eos_token", "bos_token", "eos_token", "pad_token")
    for part in (type(tokenizer).__name__, *(repr(getattr(tokenizer, f, None)) for f in flags), body):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def encoding_code_fingerprint(template_fn: Callable[..., Any]) -> str:
    """A hash of the code that turns a conversation into ids: the template function's source file and
    the shared template/chat modules, so editing a template invalidates its cached lengths."""
    files = {Path(inspect.getfile(template_fn)), Path(__file__).with_name("templates.py")}
    files.add(Path(__file__).with_name("chat.py"))
    digest = hashlib.sha256(template_fn.__qualname__.encode())
    for path in sorted(files):
        digest.update(path.read_bytes() if path.is_file() else str(path).encode())
    return digest.hexdigest()


def lengths_path(
    json_path: Path,
    tokenizer: Tokenizer,
    template: str,
    template_fn: Callable[..., Any],
    extra: tuple[Any, ...],
) -> Path | None:
    """Where the token-length cache of this (file version, tokenizer, template and its code, `extra`)
    lives, under `cache_dir()/llava-lengths/` (the data directory may be read-only); None when the
    tokenizer cannot be fingerprinted."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint is None:
        return None
    name, mtime_ns, size, _ = _file_key(json_path)
    code = encoding_code_fingerprint(template_fn)
    key = json.dumps([_LENGTHS_VERSION, name, mtime_ns, size, fingerprint, template, code, list(extra)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir() / "llava-lengths" / f"{json_path.stem}-{digest}.npz"


def load_lengths(path: Path | None, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(text tokens, supervised) per raw record; -1 marks a record not computed yet. A missing,
    unreadable or differently sized file gives all -1 (it is then recomputed)."""
    if path is not None and path.is_file():
        try:
            with np.load(path) as data:
                tokens, supervised = data["tokens"], data["supervised"]
            if tokens.shape == supervised.shape == (count,):
                return tokens.astype(np.int64), supervised.astype(np.int8)
        except (OSError, ValueError, KeyError):
            pass  # a torn or foreign file: recompute and overwrite it
    return np.full(count, -1, dtype=np.int64), np.full(count, -1, dtype=np.int8)


def save_lengths(path: Path | None, tokens: np.ndarray, supervised: np.ndarray) -> None:
    """Write atomically (ranks of one node may race; the last complete file wins, all are equal)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with partial.open("wb") as handle:
        np.savez(handle, tokens=tokens.astype(np.int32), supervised=supervised.astype(np.int8))
    os.replace(partial, path)

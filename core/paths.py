"""Where seagrid keeps built artefacts (tiny checkpoints, generated data) between runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_chosen: Path | None = None


@contextlib.contextmanager
def using_cache_dir(path: str | Path | None) -> Iterator[None]:
    """`cache_dir()` is `path` inside the block (a worker is handed its driver's in its job; None: unchanged)."""
    global _chosen
    before = _chosen
    if path is not None:
        _chosen = Path(path)
    try:
        yield
    finally:
        _chosen = before


def cache_dir() -> Path:
    """Root of the on-disk cache: the one `use_cache_dir` set, else $SEAGRID_CACHE, else ~/.cache/seagrid."""
    root = _chosen or os.environ.get("SEAGRID_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "seagrid"
    path.mkdir(parents=True, exist_ok=True)
    return path

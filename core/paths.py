"""Where seagrid keeps built artefacts (tiny checkpoints, generated data) between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of the on-disk cache: $SEAGRID_CACHE, else ~/.cache/seagrid."""
    root = os.environ.get("SEAGRID_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "seagrid"
    path.mkdir(parents=True, exist_ok=True)
    return path

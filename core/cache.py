"""Build a directory once, atomically, even when several processes ask for it at the same time."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.steps.lease import Lease

DONE_MARKER = ".done"


def is_built(target: Path) -> bool:
    """True when `target` was completed by `build_once` (a half-written directory is not)."""
    return (target / DONE_MARKER).exists()


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp_dir)` and move the result to `target` unless it is already there.

    The steps' lease lock beside `target` serialises concurrent builders (Ray workers starting together);
    the build writes into a temporary sibling that is renamed only when complete, so an
    interrupted build never leaves a directory that looks finished.
    """
    target = Path(target)
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with Lease(target.parent / f".{target.name}.lock"):
        if is_built(target):
            return target
        if target.exists():
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            (tmp / DONE_MARKER).write_text("ok\n")
            tmp.rename(target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target

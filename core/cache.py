"""Build a directory once, atomically, even when several processes ask for it at the same time."""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

DONE_MARKER = ".done"


def is_built(target: Path) -> bool:
    """True when `target` was completed by `build_once` (a half-written directory is not)."""
    return (target / DONE_MARKER).exists()


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp_dir)` and move the result to `target` unless it is already there.

    A lock file beside `target` serialises concurrent builders (Ray workers starting together);
    the build writes into a temporary sibling that is renamed only when complete, so an
    interrupted build never leaves a directory that looks finished.
    """
    target = Path(target)
    if is_built(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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

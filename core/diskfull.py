"""A full disk (or quota) as a clear error naming the path, its free space and what to do next."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(OSError):
    """Writing under a path failed for lack of space; what was written before is kept."""


def _free_text(path: Path) -> str:
    probe = next((p for p in (path, *path.parents) if p.exists()), None)
    if probe is None:
        return "free space unknown"
    usage = shutil.disk_usage(probe)
    return f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB"


@contextlib.contextmanager
def naming_full_disk(path: str | Path, what: str) -> Iterator[None]:
    """Turn ENOSPC / EDQUOT raised inside into `DiskFull` naming `what`, `path` and the free space."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as err:
        if err.errno not in FULL:
            raise
        path = Path(path)
        raise DiskFull(
            err.errno,
            f"{what}: no space left on the device holding {path} ({_free_text(path)}; {err.strerror}). "
            "Free space there, or move the output elsewhere (output.root / output.steps_root in the spec, "
            "$SEAGRID_CACHE for models and data), then run the same command again: finished steps and "
            "checkpoints are kept, and this step resumes from its latest checkpoint or partial output.",
        ) from err

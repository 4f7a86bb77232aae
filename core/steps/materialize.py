"""Build a directory once (a step's or a cached artefact's): wait for a live holder, resume a dead one's
partial output, rename on success."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.diskfull import naming_full_disk
from core.steps.lease import DEFAULT_LEASE_S, Lease
from core.steps.status import (
    Materialized,
    failed_file,
    final_dir,
    is_success,
    lock_file,
    partial_dir,
    write_failure,
    write_success,
)
from core.steps.step import Step, StepRecord

STEP_FILE = "step.json"


def materialize(
    step: Step | StepRecord,
    root: Path,
    build: Callable[[Path], Any],
    *,
    lease_s: float = DEFAULT_LEASE_S,
    poll_s: float = 1.0,
    on_wait: Callable[[dict[str, Any] | None], None] | None = None,
) -> Materialized:
    """Run `build(work_dir)` for `step` unless it is done; the directory of its finished output.

    `build` writes into `work_dir` (`.<name>-<hash>.partial`, kept across attempts, so a step that can
    resume finds what the last attempt left); on success the directory gets `.status` and is renamed to
    `<name>-<hash>`. A failure records its traceback in `.<name>-<hash>.failed` and raises. Concurrent
    callers (trials sharing the step, on any node that sees `root`) wait for the lease holder.
    """
    return build_dir_once(
        root,
        step.dirname,
        build,
        describe=step.describe(),
        info={"hash": step.hash},
        lease_s=lease_s,
        poll_s=poll_s,
        on_wait=on_wait,
    )


def build_dir_once(
    root: Path,
    dirname: str,
    build: Callable[[Path], Any],
    *,
    describe: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
    fresh: bool = False,
    done: Callable[[Path], bool] = is_success,
    lease_s: float = DEFAULT_LEASE_S,
    poll_s: float = 1.0,
    on_wait: Callable[[dict[str, Any] | None], None] | None = None,
) -> Materialized:
    """The one way a directory is built once: `root/dirname`, written by `build(work_dir)` under the
    lease, renamed into place with `.status` on success (`materialize` for steps, `core.cache.build_once`
    for cached artefacts). `describe` is written as `step.json`; `fresh` empties what an earlier attempt
    left instead of resuming it; `done(path)` says whether a directory counts as finished."""
    root = Path(root)
    final = final_dir(root, dirname)
    if done(final):
        return Materialized(final, True)
    lease = Lease(lock_file(root, dirname), lease_s, info={"step": dirname, "pid": os.getpid()})
    lease.acquire(poll_s=poll_s, on_wait=on_wait)
    try:
        if done(final):  # finished by the holder we waited for
            return Materialized(final, True)
        if final.exists():  # a directory without SUCCESS: never a finished one
            shutil.rmtree(final)
        work = partial_dir(root, dirname)
        if fresh and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        if describe is not None:
            (work / STEP_FILE).write_text(json.dumps(describe, indent=2, sort_keys=True))
        try:
            with naming_full_disk(work, f"step {dirname}"):
                build(work)
                write_success(work, {"holder": lease.holder, **(info or {})})
        except BaseException:
            # On a full disk the record itself may not fit; the error raised is what matters.
            with contextlib.suppress(OSError):
                write_failure(root, dirname, lease.holder, traceback.format_exc())
            raise
        os.rename(work, final)
        failed_file(root, dirname).unlink(missing_ok=True)
        return Materialized(final, False)
    finally:
        lease.release()

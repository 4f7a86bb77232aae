"""The one status protocol of steps: NEW, RUNNING (a live lease), SUCCESS, FAILED (with its traceback).

Layout under the steps root, for a step directory `d = <name>-<hash>`:
- `d/` exists only once the step succeeded (written as `.d.partial/`, renamed into place); `d/.status`
  says SUCCESS and `d/step.json` what defines it;
- `.d.lock`: the lease of the process materialising it (RUNNING while its heartbeat is fresh);
- `.d.failed`: the last failure (time, holder, traceback); removed when a later attempt succeeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from core.steps.lease import is_stale, read_lock

STATUS_FILE = ".status"


class StepStatus(StrEnum):
    """Where a step stands."""

    NEW = "new"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


@dataclass(frozen=True)
class Materialized:
    """A finished step's directory and whether an earlier run (any trial's, any grid's) had made it."""

    path: Path
    reused: bool


def final_dir(root: Path, dirname: str) -> Path:
    return Path(root) / dirname


def partial_dir(root: Path, dirname: str) -> Path:
    """Where an attempt writes (kept across attempts, so a resumable step continues where it stopped)."""
    return Path(root) / f".{dirname}.partial"


def lock_file(root: Path, dirname: str) -> Path:
    return Path(root) / f".{dirname}.lock"


def failed_file(root: Path, dirname: str) -> Path:
    return Path(root) / f".{dirname}.failed"


def is_success(path: Path) -> bool:
    """Whether `path` is a finished step directory."""
    try:
        return json.loads((Path(path) / STATUS_FILE).read_text()).get("status") == StepStatus.SUCCESS.value
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return False


def step_status(root: Path, dirname: str) -> StepStatus:
    """The status of the step directory `dirname` under `root` (a dead holder's lock reads as not running)."""
    if is_success(final_dir(root, dirname)):
        return StepStatus.SUCCESS
    record = read_lock(lock_file(root, dirname))
    if record is not None and not is_stale(record):
        return StepStatus.RUNNING
    if failed_file(root, dirname).is_file():
        return StepStatus.FAILED
    return StepStatus.NEW


def write_success(work_dir: Path, info: dict[str, Any]) -> None:
    (Path(work_dir) / STATUS_FILE).write_text(
        json.dumps({"status": StepStatus.SUCCESS.value, "time": time.time(), **info}, indent=2)
    )


def write_failure(root: Path, dirname: str, holder: str, traceback_text: str) -> None:
    record = {"status": StepStatus.FAILED.value, "time": time.time(), "holder": holder}
    failed_file(root, dirname).write_text(json.dumps({**record, "traceback": traceback_text}, indent=2))


def read_failure(root: Path, dirname: str) -> dict[str, Any] | None:
    """The last failure of a step, or None."""
    try:
        return json.loads(failed_file(root, dirname).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None

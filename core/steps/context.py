"""What a step function gets besides its config: its own name and root, and the trial's runtime settings."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from core.config import TrialConfig


@dataclass(frozen=True)
class TrialRuntime:
    """How a trial's steps run, never what they produce (no step hash covers any of it).

    `trial` is read for its resources (workers, CPUs, GPUs), and whole by the training stage only
    (`core/train/stage.py` still reads `job.trial`; step configs never carry it). `train_callbacks` are
    Ray Train callbacks for a training step's `TorchTrainer` (a Tune report relay): they stay in the
    driver, a step sent to a Ray task gets `for_task()`.
    """

    trial: TrialConfig
    cache_dir: str | None = None
    storage_path: str | None = None
    progress: bool = False
    train_callbacks: tuple[Any, ...] = ()

    def for_task(self) -> TrialRuntime:
        return replace(self, train_callbacks=())


@dataclass(frozen=True)
class StepContext:
    """`dirname`: the step's `<name>-<hash>` (a Ray Train run is named by it); `root`: the steps root."""

    dirname: str
    root: Path
    runtime: TrialRuntime

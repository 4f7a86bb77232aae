"""Typed hand-over to the processes that train a stage: the stage's job (an evaluation's is core.evaluation.job)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from core.config import Strict, TrialConfig
from core.evaluation.job import EvalJob
from core.stages import STAGES, StageName

# What a finished stage leaves in its step directory as its summary (core.train.save writes it).
RESULT_FILE = "result.json"


class StageJob(Strict):
    """One training stage of one trial, as every Ray Train worker receives it.

    `out_dir` is where rank 0 writes the stage's outputs (the step's work directory); `run_name` and
    `storage_path` name its Ray Train run (a relaunch under the same name resumes from its latest
    checkpoint). `step_budget` ends this attempt with `StepBudgetReached` after that optimizer step,
    leaving the checkpoints for a later attempt (time-boxed jobs; tests use it to interrupt a run).
    `evaluate`: the evaluation to run in the (single) worker right after training, model in memory.
    """

    trial: TrialConfig
    stage: StageName
    out_dir: str
    json_path: str
    image_root: str
    stage1_dir: str | None = None
    labels_dir: str | None = None
    cache_dir: str | None = None
    run_name: str = "stage"
    storage_path: str | None = None
    step_budget: int | None = Field(None, ge=1)
    evaluate: EvalJob | None = None

    @property
    def kind(self):
        return STAGES[self.stage]

    @property
    def settings(self):
        return self.kind.settings(self.trial)


class NonFiniteLoss(FloatingPointError):
    """A loss term became NaN or infinite: the stage stops at once, naming the step and the term."""


class StageOutOfMemory(MemoryError):
    """A stage ran out of GPU memory; the message names the settings that lower the peak."""


class StepBudgetReached(RuntimeError):
    """A stage stopped at its `step_budget` (its checkpoints let the next attempt resume)."""


def make_stage_job(
    cfg: TrialConfig,
    stage: StageName,
    out_dir: str | Path,
    *,
    stage1_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    **extra,
) -> StageJob:
    """The job of `stage` of `cfg`, its dataset resolved (synthetic data generated on first use)."""
    from core.data.resolve import resolve_dataset
    from core.paths import cache_dir

    json_path, image_root = resolve_dataset(STAGES[stage].dataset(cfg), stage)
    return StageJob(
        trial=cfg,
        stage=stage,
        out_dir=str(out_dir),
        json_path=str(json_path),
        image_root=str(image_root),
        stage1_dir=str(stage1_dir) if stage1_dir else None,
        labels_dir=str(labels_dir) if labels_dir else None,
        cache_dir=extra.pop("cache_dir", None) or str(cache_dir()),
        **extra,
    )

"""What defines an evaluation step, and its work as a process of its own receives it."""

from __future__ import annotations

from pydantic import Field

from core.config import NOT_IDENTITY, EvalConfig, ModelConfig, Strict
from core.stages import StageName
from core.steps.step import StepRecord


class EvalStepConfig(Strict):
    """What defines an evaluation: its settings, whether it is the trial's last, the prompt template.
    `model` says how to load what the stage left; the stage (a dependency) already hashes it."""

    stage: StageName
    final: bool
    eval: EvalConfig
    template: str | None
    model: ModelConfig = Field(json_schema_extra=NOT_IDENTITY)


class EvalJob(Strict):
    """The evaluation after `config.stage`: `stage_dirs` are the stages it reads (the evaluated one's
    still being written when a training worker evaluates with the model in memory), `out_dir` the step's
    work directory. `step` and `steps_root` let such a worker materialise the step itself."""

    config: EvalStepConfig
    stage_dirs: dict[str, str]
    out_dir: str | None = None
    cache_dir: str | None = None
    threads: int = 1
    step: StepRecord | None = None
    steps_root: str | None = None

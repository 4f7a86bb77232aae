"""The training step: its config, and its function, which launches the stage in a Ray Train TorchTrainer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from core.config import NOT_IDENTITY, DatasetConfig, MethodConfig, ModelConfig, StageConfig, Strict
from core.config.methods import stage_metric
from core.evaluation.job import EvalJob, EvalStepConfig
from core.labels.step import LABELS, TRANSFER
from core.stages import STAGES, StageName
from core.steps import Materialized, StepContext, StepRecord
from core.train.job import RESULT_FILE, StageJob, make_stage_job

# A stage reads the transferred label store when there is one.
_LABEL_DEPS = (TRANSFER, LABELS)


class InWorkerEval(Strict):
    """The evaluation step a one-worker stage runs right after training, with the model in memory."""

    step: StepRecord
    config: EvalStepConfig


class TrainStepConfig(Strict):
    """What defines a training stage's result (the stage before it and its labels are dependencies);
    `evaluate` (not identity) is its evaluation when the stage's one worker runs it."""

    stage: StageName
    model: ModelConfig
    method: MethodConfig | None
    data: DatasetConfig
    settings: StageConfig
    seed: int
    evaluate: InWorkerEval | None = Field(None, json_schema_extra=NOT_IDENTITY)


def fit_stage(job: StageJob, callbacks: list[Any] | None = None) -> None:
    """The job's stage in a Ray Train TorchTrainer; a relaunch under the same run name (the step's
    directory name) resumes from its latest checkpoint, whichever trial launches it."""
    import ray.train

    from core.train.cleanup import cleaning_torch_trainer
    from core.train.process_group import torch_config
    from core.train.stage import train_stage
    from core.train.stall_hook import stall_callbacks

    res = job.trial.resources
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    # Its placement group is freed even when Tune stops the trial mid-fit (core/train/cleanup.py).
    trainer = cleaning_torch_trainer()(
        train_stage,
        train_loop_config=job.model_dump(mode="json"),
        torch_config=torch_config(res),  # the collective timeout (resources.nccl_timeout_minutes)
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=job.run_name,
            storage_path=job.storage_path,
            callbacks=[*(callbacks or []), *stall_callbacks()],  # the latter: tests only
            failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
            # Older checkpoints are deleted from the run's storage (a ZeRO-3 one is ~12 bytes a parameter).
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=job.settings.checkpoint_keep),
        ),
    )
    trainer.fit()


def _in_worker_eval(
    config: TrainStepConfig, deps: Mapping[str, Path], out_dir: Path, ctx: StepContext
) -> EvalJob | None:
    if config.evaluate is None:
        return None
    return EvalJob(
        config=config.evaluate.config,
        stage_dirs={**{k: str(v) for k, v in deps.items()}, config.stage: str(out_dir)},
        cache_dir=ctx.runtime.cache_dir,
        step=config.evaluate.step,
        steps_root=str(ctx.root),
    )


def build_stage(config: TrainStepConfig, deps: Mapping[str, Path], out_dir: Path, ctx: StepContext) -> None:
    """The training step's function: the stage in a TorchTrainer run named by the step's directory (a
    relaunch resumes from its checkpoints), its reports relayed by the runtime's callbacks."""
    rt = ctx.runtime
    labels = (
        next((deps[n] for n in _LABEL_DEPS if n in deps), None) if STAGES[config.stage].sea_applies else None
    )
    job = make_stage_job(
        rt.trial,
        config.stage,
        out_dir,
        stage1_dir=deps.get("stage1"),
        labels_dir=labels,
        cache_dir=rt.cache_dir,
        run_name=ctx.dirname,
        storage_path=rt.storage_path,
        evaluate=_in_worker_eval(config, deps, out_dir, ctx),
    )
    fit_stage(job, list(rt.train_callbacks))


def stage_summary(config: TrainStepConfig, done: Materialized) -> dict[str, Any]:
    """The stage's `result.json` under `<stage>/`, whether it was reused and its directory."""
    result = json.loads((done.path / RESULT_FILE).read_text())
    summary = {stage_metric(config.stage, k): v for k, v in result.items()}
    summary.update(
        {stage_metric(config.stage, "reused"): done.reused, stage_metric(config.stage, "dir"): str(done.path)}
    )
    return summary

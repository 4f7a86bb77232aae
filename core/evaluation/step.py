"""The evaluation step: its function (one Ray task, or one per worker each a shard) and its summary."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.evaluation.job import EvalJob, EvalStepConfig
from core.evaluation.load import default_device, frozen_for_eval, load_trained
from core.evaluation.shard import Shard
from core.steps import Materialized, StepContext, TrialRuntime, materialize

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM

METRICS_FILE = "metrics.json"
SHARDS_DIR = "shards"


def _eval_args(job: EvalJob) -> dict[str, Any]:
    """The keyword arguments `evaluate`, `evaluate_shard` and `gather_shards` share for this job."""
    c = job.config
    return {"llm_id": c.model.llm, "stage": c.stage, "final": c.final, "template": c.template}


def _tacs_curve(job: EvalJob) -> list[tuple[int, float]] | None:
    from core.evaluation.diagnostics import CURVE_FILE, read_curve

    dirs = job.stage_dirs
    return (read_curve(Path(dirs["stage1"]) / CURVE_FILE) if "stage1" in dirs else []) or None


def evaluate_loaded(
    vlm: VLM, tokenizer: Tokenizer, job: EvalJob, *, inference: bool = False
) -> dict[str, float]:
    """`evaluate` on a model already in memory (the training worker's, or one `load_trained` built),
    writing into `job.out_dir`."""
    from core.evaluation.run import evaluate

    assert job.out_dir, "evaluate_loaded writes into job.out_dir (the step's work directory)"
    with frozen_for_eval(vlm, inference=inference):
        return evaluate(
            vlm,
            tokenizer,
            job.config.eval,
            out_dir=job.out_dir,
            tacs_curve=_tacs_curve(job),
            **_eval_args(job),
        )


def evaluate_job(job: EvalJob) -> dict[str, float]:
    """Load what the stage left and evaluate it into `job.out_dir` (this process: a Ray task)."""
    import torch

    torch.set_num_threads(max(1, job.threads))
    vlm, tokenizer = load_trained(job.config.model, job.config.stage, job.stage_dirs, default_device())
    return evaluate_loaded(vlm, tokenizer, job, inference=True)


def evaluate_in_worker(vlm: VLM, tokenizer: Tokenizer, job: EvalJob) -> None:
    """Materialise the evaluation step with the model still in a training worker's memory (one worker):
    saves a second process loading it."""
    assert job.step is not None and job.steps_root is not None, "an in-worker evaluation names its step"
    build = lambda out: evaluate_loaded(vlm, tokenizer, job.model_copy(update={"out_dir": str(out)}))  # noqa: E731
    materialize(job.step, Path(job.steps_root), build)


def shard_dir(out_dir: str | Path, shard: Shard) -> Path:
    """Where shard `shard` of an evaluation step writes: a sub-directory of the step's work directory."""
    return Path(out_dir) / SHARDS_DIR / shard.dirname()


def evaluate_shard_step(job: dict[str, Any] | EvalJob, index: int, count: int) -> None:
    """Shard `index` of `count` of the evaluation step (a Ray task; the driver holds the step's lease
    and set `job.out_dir` to its work directory): loads the model and runs its slice into
    `shard_dir(...)`. A shard that finished in an earlier attempt is not rerun."""
    import torch

    from core.evaluation.run import SHARD_DONE, evaluate_shard
    from core.paths import using_cache_dir

    job = EvalJob.model_validate(job)
    assert job.out_dir, "evaluate_shard_step writes under job.out_dir (the step's work directory)"
    shard = Shard(index, count)
    out = shard_dir(job.out_dir, shard)
    if (out / SHARD_DONE).is_file():
        return
    torch.set_num_threads(max(1, job.threads))
    with using_cache_dir(job.cache_dir):
        vlm, tokenizer = load_trained(job.config.model, job.config.stage, job.stage_dirs, default_device())
        with frozen_for_eval(vlm, inference=True):
            evaluate_shard(
                vlm,
                tokenizer,
                job.config.eval,
                shard,
                out_dir=out,
                tacs_curve=_tacs_curve(job),
                **_eval_args(job),
            )


def gather_shards_step(job: dict[str, Any] | EvalJob, count: int) -> dict[str, float]:
    """Score the `count` shards' gathered outputs into `job.out_dir` (the driver, no model), then drop
    the shards' directories (their pictures and outputs are now in the step's own files)."""
    from core.evaluation.run import gather_shards
    from core.paths import using_cache_dir

    job = EvalJob.model_validate(job)
    assert job.out_dir, "gather_shards_step writes into job.out_dir (the step's work directory)"
    dirs = [shard_dir(job.out_dir, Shard(k, count)) for k in range(count)]
    with using_cache_dir(job.cache_dir):
        metrics = gather_shards(job.config.eval, dirs, out_dir=job.out_dir, **_eval_args(job))
    shutil.rmtree(Path(job.out_dir) / SHARDS_DIR)
    return metrics


def eval_job(
    config: EvalStepConfig, deps: Mapping[str, Path], out_dir: Path, runtime: TrialRuntime
) -> EvalJob:
    """The step's job: the stages it reads, its work directory, one trial worker's threads."""
    return EvalJob(
        config=config,
        stage_dirs={k: str(v) for k, v in deps.items()},
        out_dir=str(out_dir),
        cache_dir=runtime.cache_dir,
        threads=max(1, int(runtime.trial.resources.cpus_per_worker)),
    )


def build_eval(config: EvalStepConfig, deps: Mapping[str, Path], out_dir: Path, ctx: StepContext) -> None:
    """The evaluation step's function: with one trial worker, here (a Ray task); with several, one Ray
    task per worker, each a shard of every benchmark, scored here once all are done (this process holds
    the step's lease; the shards write under its work directory)."""
    job = eval_job(config, deps, out_dir, ctx.runtime)
    res = ctx.runtime.trial.resources
    if res.num_workers == 1:
        evaluate_job(job)
        return
    import ray

    from core.steps.runner import task_options
    from core.steps.step import StepResources

    options = task_options(StepResources(cpus=res.cpus_per_worker, gpus=res.gpus_per_worker))
    shard = ray.remote(evaluate_shard_step).options(**options)
    ray.get([shard.remote(job, k, res.num_workers) for k in range(res.num_workers)])
    gather_shards_step(job, res.num_workers)


def eval_in_task(config: EvalStepConfig, runtime: TrialRuntime) -> bool:
    """One trial worker: the whole evaluation in one Ray task; several: shards coordinated by the caller."""
    return runtime.trial.resources.num_workers == 1


def read_metrics(out_dir: str | Path) -> dict[str, float]:
    """The metrics an earlier evaluation step wrote (a finished step is reused, not rerun)."""
    return dict(json.loads((Path(out_dir) / METRICS_FILE).read_text())["metrics"])


def eval_summary(config: EvalStepConfig, done: Materialized) -> dict[str, Any]:
    """The step's metrics and its directory (`eval_dir/<stage>`, logged as the trial's artifacts)."""
    return {**read_metrics(done.path), f"eval_dir/{config.stage}": str(done.path)}

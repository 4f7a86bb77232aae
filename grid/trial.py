"""One trial as a Ray Tune driver function: materialise its step graph (labels, stages, evaluations)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.config import Strict, TrialConfig
from core.pipeline import TrialSteps, trial_steps
from core.steps import Materialized, Step, is_success, materialize
from core.train.job import EvalJob, StageJob, make_stage_job

# Ray Tune gives each trial this much (a token amount, so trials are limited by their workers'
# resources, not by the driver that only waits on them).
DRIVER_RESOURCES = {"cpu": 0, "memory": 1}


class TrialJob(Strict):
    """What the Tune trainable of one trial receives (as `config["cell"]`)."""

    trial_id: str
    trial: TrialConfig
    results_root: str
    steps_root: str
    cache_dir: str | None = None
    search_metric: str | None = None  # a search's metric: every report carries it (Tune checks)
    objective_metric: str | None = None  # a search's objective when ASHA times another: carried too

    @property
    def storage_path(self) -> str:
        return str(Path(self.results_root) / "ray")


def prepare_models(cfg: TrialConfig) -> None:
    """Build the trial's tiny checkpoints (if it uses tiny ids) here, before any worker starts."""
    from core.models.llm import get_llm_spec
    from core.models.tiny import checkpoint_source
    from core.models.vision import get_encoder_spec

    checkpoint_source(get_llm_spec(cfg.model.llm), cfg.model.llm_path, "LLM")
    checkpoint_source(get_encoder_spec(cfg.model.encoder), cfg.model.encoder_path, "vision encoder")


def fit_stage(job: StageJob, callbacks: list[Any] | None = None) -> None:
    """The job's stage in a Ray Train TorchTrainer; a relaunch under the same run name (the step's
    directory name) resumes from its latest checkpoint, whichever trial launches it."""
    import ray.train

    from core.train.stage import train_stage
    from grid.train_cleanup import cleaning_torch_trainer

    res = job.trial.resources
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    # Its placement group is freed even when Tune stops the trial mid-fit (grid/train_cleanup.py).
    trainer = cleaning_torch_trainer()(
        train_stage,
        train_loop_config=job.model_dump(mode="json"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=job.run_name,
            storage_path=job.storage_path,
            callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
        ),
    )
    trainer.fit()


def _task_options(step: Step) -> dict[str, Any]:
    """A Ray task holding one worker's resources, outside the Tune trial's placement group (a token
    bundle for the driver): label and evaluation steps run while no training worker holds them."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    r = step.resources
    return {
        "num_cpus": r.cpus,
        "num_gpus": r.gpus,
        "max_retries": 0,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=None),
    }


def _label_task(step: Step, root: str, cache: str | None) -> str:
    from core.labels.prepare import run_label_step
    from core.paths import using_cache_dir

    with using_cache_dir(cache):
        return str(materialize(step, Path(root), lambda out: run_label_step(step, Path(root), out)).path)


def run_label_steps(job: TrialJob, steps: TrialSteps) -> None:
    """SEA's label steps before training, with their own resources: shards over Ray tasks when
    `label_parallel` asks for several (this driver coordinates), else one Ray task."""
    import ray

    from core.data.resolve import resolve_dataset
    from core.labels.extract import image_records, resolve_parallel
    from core.labels.prepare import run_label_step
    from core.pipeline import LABELS

    root = Path(job.steps_root)
    for step in steps.labels:
        if is_success(step.path(root)):
            continue
        shards = 1
        if step.name == LABELS:
            json_path, _ = resolve_dataset(step.config.data)
            shards = resolve_parallel(job.trial.method.sea.label_parallel, len(image_records(json_path)[0]))
        if shards > 1:
            materialize(step, root, lambda out, s=step, n=shards: run_label_step(s, root, out, parallel=n))
        else:
            task = ray.remote(_label_task).options(**_task_options(step))
            ray.get(task.remote(step, str(root), job.cache_dir))


def run_stage_step(job: TrialJob, steps: TrialSteps, stage: str) -> tuple[Materialized, dict[str, Any]]:
    """Run (or reuse) one training stage; returns its step directory and its summary. A one-worker
    stage evaluates in its worker right after training, with the model it has in memory."""
    from core.pipeline import LABELS, TRANSFER

    cfg, root = job.trial, Path(job.steps_root)
    step = steps.stages[stage]
    deps = {d.name: str(d.path(root)) for d in step.deps}
    in_worker = cfg.eval.enabled and cfg.resources.num_workers == 1

    def build(out: Path) -> None:
        evaluate = None
        if in_worker:
            evaluate = _eval_job(job, stage).model_copy(update={"stage_dir": str(out)})
        stage_job = make_stage_job(
            cfg,
            stage,
            out,
            stage1_dir=deps.get("stage1"),
            labels_dir=deps.get(TRANSFER) or deps.get(LABELS),
            cache_dir=job.cache_dir,
            run_name=step.dirname,
            storage_path=job.storage_path,
            evaluate=evaluate,
        )
        fit_stage(stage_job, [flat_report_callback(job.search_metric, job.objective_metric)])

    done = materialize(step, root, build)
    result = json.loads((done.path / "result.json").read_text())
    summary = {f"{stage}/{k}": v for k, v in result.items()}
    summary.update({f"{stage}/reused": done.reused, f"{stage}/dir": str(done.path)})
    return done, summary


def _eval_job(job: TrialJob, stage: str) -> EvalJob:
    return EvalJob(
        trial=job.trial,
        stage=stage,
        steps_root=job.steps_root,
        cache_dir=job.cache_dir,
        threads=max(1, int(job.trial.resources.cpus_per_worker)),
    )


def run_eval_step(job: TrialJob, steps: TrialSteps, stage: str) -> tuple[Path, dict[str, float]]:
    """Evaluate what `stage` left, unless done already (by an earlier run, another trial, or the training
    worker itself right after training): in one Ray task holding one trial worker's resources, or with
    several workers one task per worker, each a shard of every benchmark, scored here once all are done
    (this driver holds the step's lease; the shards write under its work directory)."""
    import ray

    from core.evaluation.step import evaluate_shard_step, evaluate_step, gather_shards_step, read_metrics
    from core.steps import is_success

    step = steps.evals[stage]
    root = Path(job.steps_root)
    path = step.path(root)
    count = job.trial.resources.num_workers
    if not is_success(path) and count == 1:
        task = ray.remote(evaluate_step).options(**_task_options(step))
        ray.get(task.remote(_eval_job(job, stage)))
    elif not is_success(path):
        shard = ray.remote(evaluate_shard_step).options(**_task_options(step))

        def build(out: Path) -> None:
            eval_job = _eval_job(job, stage).model_copy(update={"out_dir": str(out)})
            ray.get([shard.remote(eval_job, k, count) for k in range(count)])
            gather_shards_step(eval_job, count)

        materialize(step, root, build)
    return path, read_metrics(path)


def flat_metrics(message: dict[str, Any], metric: str | None, objective: str | None = None) -> dict[str, Any]:
    """A stage report's metrics as top-level keys (what Tune's schedulers and searchers read), with
    `<stage>/step` only beside a fresh value of the search metric (ASHA skips results without it), and
    the search metric NaN when this report lacks it (Tune rejects a result without the metric)."""
    if metric is None:  # a grid: Tune reads nothing at the top level
        return {}
    out: dict[str, Any] = dict(message.get("metrics") or {})
    if metric in out and "stage" in message:
        out[f"{message['stage']}/step"] = message["step"]
    out.setdefault(metric, float("nan"))
    if objective is not None:
        out.setdefault(objective, float("nan"))
    return out


def flat_report_callback(metric: str | None, objective: str | None = None) -> Any:
    """Ray Train -> Tune reports (rank 0's), flattened by `flat_metrics`."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class FlatReportCallback(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            first = dict(metrics[0])
            first.update(flat_metrics(first.get("seagrid") or {}, metric, objective))
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return FlatReportCallback()


def final_flat(summary: dict[str, Any], metric: str | None) -> dict[str, Any]:
    """The final report's top-level numbers: the summary's, and a per-step search metric's last value
    (a stage's `final_<name>`, the stage-1 curve's last point)."""
    out = {k: v for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if metric is not None and metric not in out:
        stage, _, name = metric.partition("/")
        out[metric] = out.get(f"{stage}/final_{name.replace('/', '_')}", float("nan"))
    return out


def _report_curve(stage1_dir: Path, metric: str | None = None, objective: str | None = None) -> None:
    """A reused stage 1 was trained (and its diagnostics curve logged) for another trial: log the curve
    it left for this trial too."""
    import ray.tune

    from core.evaluation.diagnostics import CURVE_FILE

    path = stage1_dir / CURVE_FILE
    if not path.is_file():
        return
    rows: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row.pop("step"))] = row
    for step, row in sorted(rows.items()):
        metrics = {f"diag/{k}": v for k, v in row.items()}
        message = {"stage": "stage1", "step": step, "metrics": metrics}
        ray.tune.report({"seagrid": message, **flat_metrics(message, metric, objective)})


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: materialise the trial's steps in order (labels, stage 1, its evaluation,
    stage 2, its evaluation); report a summary and the evaluation folders to log."""
    import ray.tune

    from core.paths import using_cache_dir

    job = TrialJob.model_validate(config["cell"])
    if config.get("params"):  # a search's sampled values, applied to the cell's config and validated
        from grid.search_spec import with_values

        trial = TrialConfig.model_validate(with_values(job.trial.model_dump(mode="json"), config["params"]))
        job = job.model_copy(update={"trial": trial})
    summary: dict[str, Any] = {}
    artifacts: dict[str, str] = {}
    with using_cache_dir(job.cache_dir):
        prepare_models(job.trial)
        steps = trial_steps(job.trial)
        run_label_steps(job, steps)
        for stage in steps.stages:
            done, part = run_stage_step(job, steps, stage)
            summary.update(part)
            if done.reused:
                _report_curve(done.path, job.search_metric, job.objective_metric)
            if stage in steps.evals:
                out_dir, metrics = run_eval_step(job, steps, stage)
                summary.update(metrics)
                summary[f"eval_dir/{stage}"] = str(out_dir)
                artifacts[f"eval/{stage}"] = str(out_dir)
    from grid.search_report import retention_metrics

    summary.update(retention_metrics(summary))  # a search may optimise eval/<name>/retention
    final = final_flat(summary, job.search_metric) if job.search_metric else {}
    if job.objective_metric is not None:  # e.g. a benchmark that did not run: NaN, as Tune needs it
        final.setdefault(job.objective_metric, float("nan"))
    ray.tune.report({"seagrid": {"final": summary, "artifacts": artifacts}, **final})

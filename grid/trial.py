"""One trial as a Ray Tune driver function: run its step graph (labels, stages, evaluations), report it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.config import Strict, TrialConfig
from core.pipeline import trial_steps
from core.steps import TrialRuntime
from core.steps.runner import run_steps

# Ray Tune gives each trial this much (a token amount, so trials are limited by their workers'
# resources, not by the driver that only waits on them).
DRIVER_RESOURCES: dict[str, float] = {"cpu": 0, "memory": 1}


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


def _report_curve(step_dir: Path, metric: str | None = None, objective: str | None = None) -> None:
    """A reused step that left a diagnostics curve (stage 1, trained and logged for another trial): log
    the curve for this trial too."""
    import ray.tune

    from core.evaluation.diagnostics import CURVE_FILE
    from core.evaluation.names import diag_name

    path = step_dir / CURVE_FILE
    if not path.is_file():
        return
    rows: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[int(row.pop("step"))] = row
    for step, row in sorted(rows.items()):
        metrics = {diag_name(k): v for k, v in row.items()}
        message = {"stage": "stage1", "step": step, "metrics": metrics}
        ray.tune.report({"seagrid": message, **flat_metrics(message, metric, objective)})


# What a trial is doing while a step of this kind starts, before it reports steps of its own (by the
# step's name without its stage: stage1 -> "stage", eval-stage1 -> "eval").
PHASES: dict[str, str] = {
    "labels": "building SEA labels",
    "labels-transfer": "transferring SEA labels",
    "stage": "waiting for resources, starting workers, loading the model",
    "eval": "loading the model, evaluating",
    "export": "exporting a transformers checkpoint",
}


def phase_text(step_name: str) -> str:
    """`stage1: waiting for resources, ...`: the step and what starting it involves."""
    kind = step_name if step_name in PHASES else step_name.rstrip("0123456789").removesuffix("-stage")
    return f"{step_name}: {PHASES.get(kind, 'starting')}"


def report_phase(text: str, metric: str | None) -> None:
    """Tell the grid's console what the trial is doing (a report without metrics)."""
    import ray.tune

    message = {"phase": text}
    ray.tune.report({"seagrid": message, **flat_metrics(message, metric)})


def _step_runtime(job: TrialJob) -> TrialRuntime:
    return TrialRuntime(
        trial=job.trial,
        cache_dir=job.cache_dir,
        storage_path=job.storage_path,
        train_callbacks=(flat_report_callback(job.search_metric, job.objective_metric),),
    )


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: materialise the trial's steps in dependency order (labels, stage 1, its
    evaluation, stage 2, its evaluation; `core.steps.runner`); report a summary and the evaluation
    folders to log."""
    import ray.tune

    from core.paths import using_cache_dir

    job = TrialJob.model_validate(config["cell"])
    if config.get("params"):  # a search's sampled values, applied to the cell's config and validated
        from grid.search_spec import with_values

        trial = TrialConfig.model_validate(with_values(job.trial.model_dump(mode="json"), config["params"]))
        job = job.model_copy(update={"trial": trial})
    summary: dict[str, Any] = {}
    tell = lambda step: report_phase(phase_text(step.name), job.search_metric)  # noqa: E731
    with using_cache_dir(job.cache_dir):
        report_phase("preparing the models", job.search_metric)
        prepare_models(job.trial)
        graph = trial_steps(job.trial).all()
        for step, done in run_steps(graph, Path(job.steps_root), _step_runtime(job), on_start=tell):
            if step.summary is not None:
                summary.update(step.summary(step.config, done))
            if done.reused:
                _report_curve(done.path, job.search_metric, job.objective_metric)
    artifacts = {f"eval/{k.partition('/')[2]}": v for k, v in summary.items() if k.startswith("eval_dir/")}
    from grid.search_report import retention_metrics

    summary.update(retention_metrics(summary))  # a search may optimise eval/<name>/retention
    final = final_flat(summary, job.search_metric) if job.search_metric else {}
    if job.objective_metric is not None:  # e.g. a benchmark that did not run: NaN, as Tune needs it
        final.setdefault(job.objective_metric, float("nan"))
    ray.tune.report({"seagrid": {"final": summary, "artifacts": artifacts}, **final})

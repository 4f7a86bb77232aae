"""One trial as a Ray Tune driver function: its steps in order, each in a content-addressed directory."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path
from typing import Any

from core.cache import DONE_MARKER, is_built
from core.config import TrialConfig
from core.config.identity import content_hash, identity_dict
from core.data.resolve import resolve_dataset

# Ray Tune gives each trial this much (a token amount, so trials are limited by their workers'
# resources, not by the driver that only waits on them).
DRIVER_RESOURCES = {"cpu": 0, "memory": 1}


def stage_identity(cfg: TrialConfig, stage: str) -> dict[str, Any]:
    """What defines a stage's result; trials that agree on it share one step directory.

    Stage 2 includes everything that defines the stage 1 it starts from (when stage 1 runs).
    """
    ident = identity_dict(cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"enabled": True})}))
    out = {
        "step": stage,
        "model": ident["model"],
        "data": ident["data"][stage],
        stage: ident[stage],
        "seed": ident["seed"],
    }
    if stage == "stage1":
        out["method"] = ident["method"]
    elif cfg.stage1.enabled:
        out["stage1"] = stage_identity(cfg, "stage1")
    return out


def stage_dir(results_root: Path, cfg: TrialConfig, stage: str) -> Path:
    """results/steps/<stage>-<hash of what defines it>."""
    return Path(results_root) / "steps" / f"{stage}-{content_hash(stage_identity(cfg, stage))}"


def prepare_models(cfg: TrialConfig) -> None:
    """Build the trial's tiny checkpoints (if it uses tiny ids) here, before any worker starts."""
    from core.models.llm import get_llm_spec
    from core.models.tiny import checkpoint_source
    from core.models.vision import get_encoder_spec

    checkpoint_source(get_llm_spec(cfg.model.llm), cfg.model.llm_path, "LLM")
    checkpoint_source(get_encoder_spec(cfg.model.encoder), cfg.model.encoder_path, "vision encoder")


def fit_stage(cfg: TrialConfig, payload: dict[str, Any], callbacks: list[Any] | None = None) -> None:
    """`payload["stage"]` in a Ray Train TorchTrainer; a relaunch under the same run name resumes from its
    latest checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from core.train.stage import train_stage

    res = cfg.resources
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_stage,
        train_loop_config=payload,
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"{payload['trial_id']}-{payload['stage']}",
            storage_path=payload["storage_path"],
            callbacks=callbacks or [],
        ),
    )
    trainer.fit()


def run_step(
    cfg: TrialConfig, cell: dict[str, Any], stage: str, extra: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """Run (or reuse) one training stage in its content-addressed directory; returns it and its summary.

    `extra` may carry `evaluate` (an `eval_payload` without this stage's directory, filled in here): a
    one-worker stage then evaluates in its worker right after training, with the model it has in memory.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    json_path, image_root = resolve_dataset(getattr(cfg.data, stage), stage)
    prepare_models(cfg)
    step_dir = stage_dir(Path(cell["results_root"]), cfg, stage)
    step_dir.parent.mkdir(parents=True, exist_ok=True)
    # Trials sharing a stage result wait for each other instead of training it twice.
    with open(step_dir.parent / f".{step_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reused = is_built(step_dir)
        if not reused:
            if step_dir.exists():
                shutil.rmtree(step_dir)
            step_dir.mkdir(parents=True)
            (step_dir / "step.json").write_text(
                json.dumps(stage_identity(cfg, stage), indent=2, sort_keys=True)
            )
            payload = {
                **cell,
                **extra,
                "stage": stage,
                "step_dir": str(step_dir),
                "data": {"json_path": str(json_path), "image_root": str(image_root)},
            }
            if "evaluate" in extra:
                ev = extra["evaluate"]
                payload["evaluate"] = eval_payload(
                    cfg, cell, stage, {**ev["stage_dirs"], stage: str(step_dir)}, ev["final"]
                )
            fit_stage(cfg, payload, [TuneReportCallback()])
            (step_dir / DONE_MARKER).write_text("ok\n")
    result = json.loads((step_dir / "result.json").read_text())
    summary = {f"{stage}/{k}": v for k, v in result.items()}
    summary.update({f"{stage}/reused": reused, f"{stage}/dir": str(step_dir)})
    return step_dir, summary


def eval_identity(cfg: TrialConfig, stage: str, final: bool) -> dict[str, Any]:
    """What defines an evaluation's result: the stage it evaluates (with everything before it), whether it
    is the trial's last, the evaluation settings and the prompt template."""
    ident = identity_dict(cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"enabled": True})}))
    return {
        "step": "eval",
        "after": stage_identity(cfg, stage),
        "final": final,
        "eval": ident["eval"],
        "template": cfg.stage2.template,
    }


def eval_payload(
    cfg: TrialConfig, cell: dict[str, Any], stage: str, stage_dirs: dict[str, str], final: bool
) -> dict[str, Any]:
    """What an evaluation after `stage` needs, wherever it runs; `ident` names its directory."""
    ident = eval_identity(cfg, stage, final)
    out_dir = Path(cell["results_root"]) / "steps" / f"eval-{stage}-{content_hash(ident)}"
    return {
        "trial": cell["trial"],
        "stage": stage,
        "final": final,
        "stage_dirs": stage_dirs,
        "out_dir": str(out_dir),
        "ident": ident,
        "cache_dir": cell["cache_dir"],
        "threads": max(1, int(cfg.resources.cpus_per_worker)),
    }


def run_eval_step(
    cfg: TrialConfig, cell: dict[str, Any], stage: str, stage_dirs: dict[str, str], final: bool
) -> tuple[Path, dict[str, float]]:
    """Evaluate what `stage` left, unless done already (by an earlier run, another trial, or the training
    worker itself right after training), in a Ray task holding one trial worker's resources; returns the
    evaluation's directory and its metrics."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from core.evaluation.step import build_eval_dir, evaluate_step, read_metrics

    payload = eval_payload(cfg, cell, stage, stage_dirs, final)
    res = cfg.resources
    # Outside the Tune trial's placement group (a token bundle for the driver): the evaluation takes what
    # one training worker had, now that the training workers are gone.
    task = ray.remote(evaluate_step).options(
        num_cpus=res.cpus_per_worker,
        num_gpus=res.gpus_per_worker,
        max_retries=0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    )
    out_dir = Path(payload["out_dir"])
    build_eval_dir(out_dir, payload["ident"], lambda: ray.get(task.remote(payload)))
    return out_dir, read_metrics(out_dir)


def _report_curve(stage1_dir: Path) -> None:
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
        ray.tune.report({"seagrid": {"stage": "stage1", "step": step, "metrics": metrics}})


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: run (or reuse) stage 1, then stage 2 from its adapter, evaluating after each
    when the trial asks for it; report a summary and the evaluation folders to log."""
    import os

    import ray.tune

    cell = config["cell"]
    os.environ["SEAGRID_CACHE"] = cell["cache_dir"]
    cfg = TrialConfig.model_validate(cell["trial"])
    summary: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    stage_dirs: dict[str, str] = {}
    artifacts: dict[str, str] = {}
    stages = [s for s in ("stage1", "stage2") if getattr(cfg, s).enabled]
    for stage in stages:
        final = stage == stages[-1]
        # One worker: evaluate in the training worker, with the model in memory (no second process).
        in_worker = cfg.eval.enabled and cfg.resources.num_workers == 1
        ev = {"evaluate": {"stage_dirs": dict(stage_dirs), "final": final}} if in_worker else {}
        step_dir, part = run_step(cfg, cell, stage, {**extra, **ev})
        summary.update(part)
        stage_dirs[stage] = str(step_dir)
        if stage == "stage1":
            extra["stage1_dir"] = str(step_dir)
            if part["stage1/reused"]:
                _report_curve(step_dir)
        if cfg.eval.enabled:
            out_dir, metrics = run_eval_step(cfg, cell, stage, stage_dirs, final)
            summary.update(metrics)
            summary[f"eval_dir/{stage}"] = str(out_dir)
            artifacts[f"eval/{stage}"] = str(out_dir)
    ray.tune.report({"seagrid": {"final": summary, "artifacts": artifacts}})

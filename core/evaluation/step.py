"""The evaluation step of a trial: load the model a training stage left (or take one in memory), evaluate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.steps import Step, materialize
from core.train.job import EvalJob

METRICS_FILE = "metrics.json"


def eval_step_of(job: EvalJob) -> tuple[Step, Path]:
    """The job's step in its trial's graph, and the steps root."""
    from core.pipeline import trial_steps

    return trial_steps(job.trial).evals[job.stage], Path(job.steps_root)


def load_trained(cfg: Any, stage: str, stage_dirs: dict[str, str], device: Any = None) -> tuple[Any, Any]:
    """The VLM as `stage` left it: stage 1's adapter on the original LLM, or stage 2's LLM, adapter and
    (when it trained) vision tower weights."""
    import torch

    from core.models import build_vlm, load_adapter
    from core.stages import STAGES

    step_dir = Path(stage_dirs[stage])
    llm_path = str(step_dir / "llm") if STAGES[stage].trains_llm else cfg.model.llm_path
    vlm, tokenizer = build_vlm(
        cfg.model.llm,
        cfg.model.encoder,
        cfg.model.adapter,
        llm_path=llm_path,
        encoder_path=cfg.model.encoder_path,
    )
    load_adapter(vlm, step_dir / "adapter")
    vision = step_dir / "vision_trainable.pt"
    if vision.is_file():
        state = torch.load(vision, map_location="cpu")
        missing = set(state) - {n for n, _ in vlm.vision.named_parameters()}
        if missing:
            raise ValueError(f"{vision}: weights not in the vision tower: {sorted(missing)[:5]}")
        vlm.vision.load_state_dict(state, strict=False)
    vlm.eval()
    if device is not None:
        vlm.to(device)
    return vlm, tokenizer


def _stage_dirs(job: EvalJob) -> dict[str, str]:
    from core.pipeline import stage_dirs, trial_steps

    dirs = stage_dirs(trial_steps(job.trial), Path(job.steps_root), job.stage)
    if job.stage_dir:
        dirs[job.stage] = job.stage_dir
    return dirs


def evaluate_loaded(vlm: Any, tokenizer: Any, job: EvalJob) -> dict[str, float]:
    """`evaluate` on a model already in memory (the training worker's, or one `load_trained` built),
    writing into `job.out_dir`."""
    import torch

    from core.evaluation.diagnostics import CURVE_FILE, read_curve
    from core.evaluation.run import evaluate

    assert job.out_dir, "evaluate_loaded writes into job.out_dir (the step's work directory)"
    cfg = job.trial
    step, _ = eval_step_of(job)
    dirs = _stage_dirs(job)
    device = next(vlm.parameters()).device
    curve: list[tuple[int, float]] = []
    if "stage1" in dirs:
        curve = read_curve(Path(dirs["stage1"]) / CURVE_FILE)
    was_training = vlm.training
    vlm.eval()
    try:
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        ):
            return evaluate(
                vlm,
                tokenizer,
                cfg.eval,
                llm_id=cfg.model.llm,
                stage=job.stage,
                out_dir=job.out_dir,
                final=step.config.final,
                template=cfg.stage2.template,
                tacs_curve=curve or None,
            )
    finally:
        vlm.train(was_training)


def evaluate_step(job: dict[str, Any] | EvalJob) -> dict[str, float]:
    """Evaluate after `job.stage` in a process of its own (a Ray task): materialise the step, loading what
    the stage left. Returns its metrics (reused when another process already evaluated)."""
    import torch

    from core.paths import using_cache_dir

    job = EvalJob.model_validate(job)
    torch.set_num_threads(max(1, job.threads))
    step, root = eval_step_of(job)

    def build(out: Path) -> None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        vlm, tokenizer = load_trained(job.trial, job.stage, _stage_dirs(job), device)
        evaluate_loaded(vlm, tokenizer, job.model_copy(update={"out_dir": str(out)}))

    with using_cache_dir(job.cache_dir):
        done = materialize(step, root, build)
    return read_metrics(done.path)


def read_metrics(out_dir: str | Path) -> dict[str, float]:
    """The metrics an earlier evaluation step wrote (a finished step is reused, not rerun)."""
    return dict(json.loads((Path(out_dir) / METRICS_FILE).read_text())["metrics"])

"""The evaluation step of a trial: load the model a training stage left (or take one in memory), evaluate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from core.evaluation.shard import Shard
from core.steps import Step, materialize
from core.train.job import EvalJob

METRICS_FILE = "metrics.json"
SHARDS_DIR = "shards"


def eval_step_of(job: EvalJob) -> tuple[Step, Path]:
    """The job's step in its trial's graph, and the steps root."""
    from core.pipeline import trial_steps

    return trial_steps(job.trial).evals[job.stage], Path(job.steps_root)


def eval_dtype(device: Any) -> Any:
    """The dtype a model loaded for evaluation is built in: bf16 on GPUs (as it trained), fp32 on CPUs."""
    import torch

    from core.train.precision import DTYPES, resolve_precision

    return DTYPES[resolve_precision("auto", use_gpu=torch.device(device or "cpu").type == "cuda")]


def load_trained(
    cfg: Any, stage: str, stage_dirs: dict[str, str], device: Any = None, dtype: Any = None
) -> tuple[Any, Any]:
    """The VLM as `stage` left it: stage 1's adapter on the original LLM, or stage 2's LLM, adapter and
    (when it trained) vision tower weights; every part loaded straight into `dtype` (default
    `eval_dtype(device)`), frozen (no parameter requires grad: evaluation keeps no autograd state)."""
    import torch

    from core.models import build_vlm, load_adapter
    from core.stages import STAGES

    dtype = dtype or eval_dtype(device)
    step_dir = Path(stage_dirs[stage])
    llm_path = str(step_dir / "llm") if STAGES[stage].trains_llm else cfg.model.llm_path
    vlm, tokenizer = build_vlm(
        cfg.model.llm,
        cfg.model.encoder,
        cfg.model.adapter,
        llm_path=llm_path,
        encoder_path=cfg.model.encoder_path,
        dtype=dtype,
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
    vlm.requires_grad_(False)
    if device is not None:
        vlm.to(device)
    return vlm, tokenizer


def _stage_dirs(job: EvalJob) -> dict[str, str]:
    from core.pipeline import stage_dirs, trial_steps

    dirs = stage_dirs(trial_steps(job.trial), Path(job.steps_root), job.stage)
    if job.stage_dir:
        dirs[job.stage] = job.stage_dir
    return dirs


@contextmanager
def frozen_for_eval(vlm: Any, *, inference: bool = False) -> Iterator[None]:
    """Evaluation mode with no autograd state: eval(), no parameter requiring grad (so autocast keeps no
    bf16 copy of any weight), no_grad, or inference_mode when the model is only evaluated (its tensors
    must never meet autograd later); bf16 autocast on CUDA for parts still in fp32 (a training
    worker's trainable weights). Flags restored afterwards."""
    import torch

    device = next(vlm.parameters()).device
    grads = [(p, p.requires_grad) for p in vlm.parameters()]
    was_training = vlm.training
    vlm.eval()
    vlm.requires_grad_(False)
    try:
        with (
            torch.inference_mode() if inference else torch.no_grad(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        ):
            yield
    finally:
        for param, flag in grads:
            param.requires_grad_(flag)
        vlm.train(was_training)


def _eval_args(job: EvalJob) -> dict[str, Any]:
    """The keyword arguments `evaluate`, `evaluate_shard` and `gather_shards` share for this job."""
    cfg = job.trial
    step, _ = eval_step_of(job)
    return {
        "llm_id": cfg.model.llm,
        "stage": job.stage,
        "final": step.config.final,
        "template": cfg.stage2.template,
    }


def _tacs_curve(job: EvalJob) -> list[tuple[int, float]] | None:
    from core.evaluation.diagnostics import CURVE_FILE, read_curve

    dirs = _stage_dirs(job)
    return (read_curve(Path(dirs["stage1"]) / CURVE_FILE) if "stage1" in dirs else []) or None


def evaluate_loaded(vlm: Any, tokenizer: Any, job: EvalJob, *, inference: bool = False) -> dict[str, float]:
    """`evaluate` on a model already in memory (the training worker's, or one `load_trained` built),
    writing into `job.out_dir`."""
    from core.evaluation.run import evaluate

    assert job.out_dir, "evaluate_loaded writes into job.out_dir (the step's work directory)"
    with frozen_for_eval(vlm, inference=inference):
        return evaluate(
            vlm,
            tokenizer,
            job.trial.eval,
            out_dir=job.out_dir,
            tacs_curve=_tacs_curve(job),
            **_eval_args(job),
        )


def _device() -> Any:
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def evaluate_step(job: dict[str, Any] | EvalJob) -> dict[str, float]:
    """Evaluate after `job.stage` in a process of its own (a Ray task): materialise the step, loading what
    the stage left. Returns its metrics (reused when another process already evaluated)."""
    import torch

    from core.paths import using_cache_dir

    job = EvalJob.model_validate(job)
    torch.set_num_threads(max(1, job.threads))
    step, root = eval_step_of(job)

    def build(out: Path) -> None:
        vlm, tokenizer = load_trained(job.trial, job.stage, _stage_dirs(job), _device())
        evaluate_loaded(vlm, tokenizer, job.model_copy(update={"out_dir": str(out)}), inference=True)

    with using_cache_dir(job.cache_dir):
        done = materialize(step, root, build)
    return read_metrics(done.path)


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
        vlm, tokenizer = load_trained(job.trial, job.stage, _stage_dirs(job), _device())
        with frozen_for_eval(vlm, inference=True):
            evaluate_shard(
                vlm,
                tokenizer,
                job.trial.eval,
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
        metrics = gather_shards(job.trial.eval, dirs, out_dir=job.out_dir, **_eval_args(job))
    shutil.rmtree(Path(job.out_dir) / SHARDS_DIR)
    return metrics


def read_metrics(out_dir: str | Path) -> dict[str, float]:
    """The metrics an earlier evaluation step wrote (a finished step is reused, not rerun)."""
    return dict(json.loads((Path(out_dir) / METRICS_FILE).read_text())["metrics"])

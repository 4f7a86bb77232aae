"""A training stage (1: adapter alignment, 2: instruction tuning) on one Ray Train worker: setup, loop, save."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from core.paths import using_cache_dir
from core.train.checkpoint import Checkpoints, LocalCheckpoints, RayCheckpoints
from core.train.job import EvalJob, StageJob, StageOutOfMemory
from core.train.loop import Loop
from core.train.precision import DTYPES
from core.train.save import save_outputs, stage_result, write_result
from core.train.setup import setup_stage

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM


def _ray_context() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def train_stage(job: dict[str, Any] | StageJob) -> None:
    """The Ray Train worker function: the job's stage with this worker's rank, metrics via ray.train.report."""
    import ray.train.torch

    job = StageJob.model_validate(job)
    rank, world = _ray_context()
    run_stage(
        job,
        rank=rank,
        world=world,
        checkpoints=RayCheckpoints(rank, job.storage_path),
        device=ray.train.torch.get_device(),
    )


def run_stage(
    job: StageJob,
    *,
    rank: int = 0,
    world: int = 1,
    checkpoints: Checkpoints | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Run one stage; rank 0 saves what it trained into `job.out_dir`; returns the result summary (also
    written to `result.json`).

    What a stage trains, on which data and template, comes from `core.stages.STAGES`: stage 1 the adapter
    on captions (plain template, square images, the method's extra loss terms); stage 2 adapter + LLM (and
    the vision tower at its own learning rate when asked) from stage 1's adapter, on conversations in the
    LLM's chat template with padded images. Metrics and checkpoints go to `checkpoints` (Ray Train's in a
    trial); training resumes from its latest checkpoint if there is one.
    """
    with using_cache_dir(job.cache_dir):
        try:
            return _run_stage(
                job, rank, world, checkpoints or LocalCheckpoints(), device or torch.device("cpu")
            )
        except torch.OutOfMemoryError as err:
            raise StageOutOfMemory(out_of_memory_message(job, str(err))) from err


def out_of_memory_message(job: StageJob, detail: str) -> str:
    """What ran out of memory and the settings that lower it."""
    s = job.settings
    return (
        f"{job.stage} ran out of GPU memory ({detail.splitlines()[0] if detail else 'no detail'}). Settings that "
        f"reduce it: {job.stage}.micro_batch_size (now {s.micro_batch_size}; gradient accumulation keeps the "
        f"global batch), {job.stage}.gradient_checkpointing (now {s.gradient_checkpointing}), "
        f"{job.stage}.deepspeed.zero (now {s.deepspeed.zero}; 3 partitions the weights), "
        f"{job.stage}.deepspeed.offload (now {s.deepspeed.offload}); `just plan` estimates the peak per GPU "
        f"against resources.gpu_memory_gb ({job.trial.resources.gpu_memory_gb:g})"
    )


def _run_stage(
    job: StageJob, rank: int, world: int, checkpoints: Checkpoints, device: torch.device
) -> dict[str, Any]:
    stage = setup_stage(job, rank=rank, world=world, checkpoints=checkpoints, device=device)
    parts, zero = stage.parts, stage.run.zero
    done = Loop(stage.settings).run(parts)
    heldout = parts.heldout.final() if parts.heldout is not None else {}
    result = stage_result(done, steps=stage.settings.total, samples=stage.samples, zero=zero, heldout=heldout)
    vlm, out_dir = parts.vlm, Path(job.out_dir)
    save_outputs(
        out_dir,
        job.stage,
        vlm,
        stage.tokenizer,
        parts.objective,
        parts.stepper,
        rank=rank,
        train_vision=any(p.requires_grad for p in vlm.vision.parameters()),
        llm_dtype=DTYPES[stage.run.precision],
    )
    write_result(out_dir, result, rank=rank)
    if world > 1:
        dist.barrier()
    elif job.evaluate is not None and zero != 3:
        _evaluate_in_worker(vlm, stage.tokenizer, job.evaluate)
    return result


def _evaluate_in_worker(vlm: VLM, tokenizer: Tokenizer, ev: EvalJob) -> None:
    """The evaluation step with the model still in memory (one worker): saves a second process loading it.
    A failure here only warns: the grid's own evaluation step then runs (and reports) it."""
    import warnings

    from core.evaluation.step import evaluate_in_worker

    try:
        evaluate_in_worker(vlm, tokenizer, ev)
    except Exception as err:  # noqa: BLE001
        warnings.warn(
            f"evaluation in the training worker failed ({err!r}); it runs again on its own", stacklevel=2
        )

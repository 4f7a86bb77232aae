"""A stage's setup on this worker: run settings, model, data, objective, optimizer and stepper, probes, the loop's settings."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core.train.checkpoint import Checkpoints
from core.train.cuda_start import start_cuda
from core.train.deepspeed_engine import (
    DeepSpeedStepper,
    deepspeed_config,
    init_distributed,
    make_optimizer,
    resolve_zero,
)
from core.train.heldout import heldout_probe, split_stage
from core.train.job import StageJob
from core.train.loop import LoopParts, LoopSettings
from core.train.precision import Precision, module_dtypes, resolve_precision
from core.train.schedule import cosine_with_warmup, warmup_steps
from core.train.setup_data import build_data, build_loader, build_sampler, plan_steps
from core.train.steppers import Stepper, TorchStepper, TrainModule

if TYPE_CHECKING:
    from core.config import TrialConfig
    from core.methods.objective import Objective
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM


@dataclass(frozen=True)
class RunSettings:
    """How a stage runs on this worker, resolved once: ZeRO stage (None: plain PyTorch), offload,
    precision and gradient checkpointing."""

    zero: int | None
    offload: str
    precision: Precision
    checkpointing: bool

    @property
    def deepspeed(self) -> bool:
        return self.zero is not None


@dataclass(frozen=True)
class StageSetup:
    """Everything a stage's loop and its save need, built in the order that fixes the random draws."""

    run: RunSettings
    tokenizer: Tokenizer
    samples: int
    settings: LoopSettings
    parts: LoopParts


def resolve_run(job: StageJob, device: torch.device) -> RunSettings:
    """`auto` settings made concrete for this device and LLM."""
    from core.models.llm import resolve_gradient_checkpointing

    settings, llm = job.settings, job.trial.model.llm
    use_gpu = device.type == "cuda"
    zero = resolve_zero(settings.deepspeed.zero, job.stage, llm, use_gpu=use_gpu)
    return RunSettings(
        zero=zero,
        offload=settings.deepspeed.offload if zero is not None else "none",
        precision=resolve_precision(settings.precision, use_gpu=use_gpu),
        checkpointing=resolve_gradient_checkpointing(settings.gradient_checkpointing, llm),
    )


def setup_stage(
    job: StageJob, *, rank: int, world: int, checkpoints: Checkpoints, device: torch.device
) -> StageSetup:
    """Seed, then model, data (its held-out part split off: never trained on), objective, batch order,
    loader, stepper and probes; the order is the stage's, so that its random draws are too."""
    from core.methods.build import build_objective

    cfg = job.trial
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    run = resolve_run(job, device)
    _start_device(run, device)
    vlm, tokenizer = build_model(job, run)
    dataset, collate_fn, context = build_data(job, vlm, tokenizer, rank)
    dataset, held = split_stage(job, dataset)  # a held-out part (`<stage>.heldout`) is never trained on
    _place(vlm, run, device)
    objective = build_objective(cfg.method, context, stage=job.stage).to(device)
    s = job.settings
    accum, total = plan_steps(
        len(dataset), s.micro_batch_size, world, s.global_batch_size, s.epochs, s.max_steps
    )
    sampler = build_sampler(job, dataset, world, rank, accum)
    loader = build_loader(job, dataset, sampler, collate_fn, device)
    stepper = build_stepper(job, run, vlm, objective, accum, total, world, rank, device)
    every = diagnostics_every(job, run.zero)
    # Every rank must agree on when to report (a report is a barrier); only rank 0 runs the probe.
    probe = diagnostics_probe(cfg, vlm, tokenizer, Path(job.out_dir)) if every and rank == 0 else None
    heldout = heldout_probe(job, held, collate_fn, world, rank, device, run)
    settings = LoopSettings(
        stage=job.stage,
        total=total,
        accum=accum,
        world=world,
        rank=rank,
        device=device,
        precision=run.precision,
        deepspeed=run.deepspeed,
        micro_batch_size=s.micro_batch_size,
        global_batch_size=s.global_batch_size,
        log_every=s.log_every,
        checkpoint_every=s.checkpoint_every,
        checkpoint_minutes=s.checkpoint_minutes,
        step_budget=job.step_budget,
        diagnostics_every=every,
    )
    parts = LoopParts(vlm, objective, stepper, loader, sampler, checkpoints, probe, heldout)
    return StageSetup(run, tokenizer, len(dataset), settings, parts)


def _start_device(run: RunSettings, device: torch.device) -> None:
    if device.type == "cuda":
        start_cuda(device)  # a failure names the driver the torch build needs
        # fp32 matmuls outside autocast (BASIC's vocabulary softmaxes) run on tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
    if run.deepspeed:
        init_distributed(device)  # before the model: under ZeRO-3 the LLM is partitioned as it is built


def _place(vlm: VLM, run: RunSettings, device: torch.device) -> None:
    if run.zero == 3:
        # The LLM's partitions already sit on this device; moving it would undo zero.Init's placement.
        vlm.vision.to(device)
        vlm.adapter.to(device)
    else:
        vlm.to(device)


def build_model(job: StageJob, run: RunSettings) -> tuple[VLM, Tokenizer]:
    """The VLM, each part loaded straight into its dtype (the LLM partitioned at construction under
    ZeRO-3), with what this stage trains unfrozen (stage 2 starts from stage 1's adapter)."""
    from core.models import build_vlm, load_adapter
    from core.models.llm import get_llm_spec

    cfg, settings, kind = job.trial, job.settings, job.kind
    train_vision = kind.trains_llm and settings.train_vision
    dtypes = module_dtypes(
        run.precision, deepspeed=run.deepspeed, train_llm=kind.trains_llm, train_vision=train_vision
    )
    zero3 = None
    if run.zero == 3:
        # What zero.Init reads (stage, dtype); batch sizes do not matter to construction.
        hidden = get_llm_spec(cfg.model.llm).hidden_size
        zero3 = deepspeed_config(
            zero=3,
            micro_batch_size=settings.micro_batch_size,
            accumulation=1,
            hidden_size=hidden,
            offload=run.offload,
            precision=run.precision,
        )
    vlm, tokenizer = build_vlm(
        cfg.model.llm,
        cfg.model.encoder,
        cfg.model.adapter,
        llm_path=cfg.model.llm_path,
        encoder_path=cfg.model.encoder_path,
        dtypes=dtypes,
        zero3_config=zero3,
    )
    if kind.trains_llm:
        if job.stage1_dir:
            load_adapter(vlm, Path(job.stage1_dir) / "adapter")
        vlm.freeze_for_stage2(train_vision=settings.train_vision)
    else:
        vlm.freeze_for_stage1()
    if run.checkpointing:
        vlm.llm.gradient_checkpointing_enable()
    return vlm, tokenizer


def build_stepper(
    job: StageJob,
    run: RunSettings,
    vlm: VLM,
    objective: Objective,
    accum: int,
    total: int,
    world: int,
    rank: int,
    device: torch.device,
) -> Stepper:
    """The optimizer (main group, vision tower group), the schedule and the stepper: plain PyTorch / DDP,
    or a DeepSpeed engine with the resolved ZeRO stage and precision."""
    settings = job.settings
    vision = {id(p) for p in vlm.vision.parameters()}
    main = [p for p in vlm.parameters() if p.requires_grad and id(p) not in vision]
    main += [p for p in objective.parameters() if p.requires_grad]
    groups = [{"params": main, "lr": settings.lr}]
    tower = [p for p in vlm.vision.parameters() if p.requires_grad]
    if tower:
        groups.append({"params": tower, "lr": settings.vision_lr})
    zero, offload = run.zero, run.offload
    optimizer = make_optimizer(groups, settings.lr, settings.weight_decay, offload)
    warm = warmup_steps(total, settings.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, total, warm))
    if zero == 3:
        gather_embedding_table(objective, vlm)
    module = TrainModule(vlm, objective)
    if zero is None:
        return TorchStepper(
            module, optimizer, scheduler, accumulation=accum, world=world, device=device, rank=rank
        )
    ds_config = deepspeed_config(
        zero=zero,
        micro_batch_size=settings.micro_batch_size,
        accumulation=accum,
        hidden_size=vlm.input_embeddings().embedding_dim,
        offload=offload,
        precision=run.precision,
    )
    return DeepSpeedStepper(module, optimizer, scheduler, ds_config)


def gather_embedding_table(objective: Objective, vlm: VLM) -> None:
    """Under ZeRO-3 the LLM's embedding table is partitioned across ranks: objectives that read it whole
    (BASIC's L_sds) get it gathered for the block that uses it, a collective every rank runs at the same
    point of each micro-step. No copy: what the block computes keeps nothing of the table."""
    import deepspeed

    from core.models.llm import input_embeddings

    weight = input_embeddings(vlm.llm).weight

    @contextlib.contextmanager
    def gathered() -> Iterator[torch.Tensor]:
        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            yield weight.detach()

    for part in objective.modules():
        if hasattr(part, "embedding_table"):
            # An instance attribute shadowing the method, as `part.embedding_table = gathered` would set
            # (nn.Module stores plain values in __dict__); written so because nn.Module types attribute
            # assignment as tensors and modules only.
            vars(part)["embedding_table"] = gathered


def diagnostics_every(job: StageJob, zero: int | None) -> int | None:
    """How often the stage runs the alignment diagnostics while training, or None. ZeRO-3 partitions the
    weights the probe would read on one rank: no curve then."""
    cfg = job.trial
    every = cfg.eval.diagnostics.every_steps
    if not job.kind.curve or not cfg.eval.enabled or not every:
        return None
    if zero == 3:
        warnings.warn(f"eval.diagnostics.every_steps is ignored under ZeRO-3 in {job.stage}", stacklevel=2)
        return None
    return every


def diagnostics_probe(
    cfg: TrialConfig, vlm: VLM, tokenizer: Tokenizer, step_dir: Path
) -> Callable[[VLM, int], dict[str, float]]:
    """Stage 1's diagnostics probe; its curve points also go to the step dir for the evaluation step."""
    from core.evaluation.diagnostics import CURVE_FILE, DiagnosticsProbe

    return DiagnosticsProbe(cfg.eval, vlm, tokenizer, curve_path=step_dir / CURVE_FILE)

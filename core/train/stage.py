"""A training stage (1: adapter alignment, 2: instruction tuning), the loop each Ray Train worker runs."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from core.config import METHODS_WITH_SEA, TrialConfig
from core.paths import using_cache_dir
from core.stages import STAGES
from core.train.checkpoint import (
    Checkpoints,
    LocalCheckpoints,
    Position,
    RayCheckpoints,
    load_position,
    save_position,
    trainable_state,
)
from core.train.checkpoint_clock import checkpoint_due
from core.train.cuda_start import start_cuda
from core.train.deepspeed_engine import (
    DeepSpeedStepper,
    deepspeed_config,
    init_distributed,
    make_optimizer,
    resolve_zero,
)
from core.train.heldout import HeldoutProbe, heldout_probe, split_stage
from core.train.job import EvalJob, NonFiniteLoss, StageJob, StageOutOfMemory, StepBudgetReached
from core.train.precision import DTYPES, Precision, loop_autocast, module_dtypes, resolve_precision
from core.train.reduce import mean_across_ranks
from core.train.schedule import cosine_with_warmup, warmup_steps
from core.train.steppers import Stepper, TorchStepper, TrainModule

if TYPE_CHECKING:
    from core.methods.context import BuildContext
    from core.methods.objective import Objective
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM

RESULT_FILE = "result.json"
_CLOCK = "_seconds_since_checkpoint"


def _ray_context() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


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


class ResumableSampler(Sampler[int]):
    """A DistributedSampler whose epoch can start part-way, so a resumed run sees the same batches."""

    def __init__(self, inner: DistributedSampler) -> None:
        self.inner = inner
        self.skip = 0

    def start(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.inner)[self.skip :])

    def __len__(self) -> int:
        return len(self.inner) - self.skip


def plan_steps(
    num_samples: int, micro: int, world: int, global_batch: int, epochs: float, max_steps: int | None
) -> tuple[int, int]:
    """(gradient accumulation, optimizer steps) for a stage; fails when the data cannot fill one step."""
    accum = global_batch // (micro * world)
    steps_per_epoch = (num_samples // (micro * world)) // accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"the dataset has {num_samples} samples, fewer than one global batch of {global_batch}; "
            "lower the stage's global_batch_size or add data"
        )
    total = math.ceil(epochs * steps_per_epoch)
    return accum, min(total, max_steps) if max_steps else total


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


def check_finite(values: dict[str, float], stage: str, step: int) -> None:
    """Stop at once when a loss term is NaN or infinite (the loss is read every micro-step anyway)."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        terms = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise NonFiniteLoss(
            f"{stage} step {step}: {terms}; the run is stopped (its last checkpoint is kept). Lower "
            f"{stage}.lr, raise warmup_ratio, or check the method's weights and the data"
        )


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
    cfg, settings = job.trial, job.settings
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    run = resolve_run(job, device)
    if device.type == "cuda":
        start_cuda(device)  # a failure names the driver the torch build needs
        # fp32 matmuls outside autocast (BASIC's vocabulary softmaxes) run on tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
    if run.deepspeed:
        init_distributed(device)  # before the model: under ZeRO-3 the LLM is partitioned as it is built
    vlm, tokenizer = build_model(job, run)
    dataset, collate_fn, context = build_data(job, vlm, tokenizer, rank)
    dataset, held = split_stage(job, dataset)  # a held-out part (`<stage>.heldout`) is never trained on
    if run.zero == 3:
        # The LLM's partitions already sit on this device; moving it would undo zero.Init's placement.
        vlm.vision.to(device)
        vlm.adapter.to(device)
    else:
        vlm.to(device)
    from core.methods.build import build_objective

    objective = build_objective(cfg.method, context, stage=job.stage).to(device)
    accum, total = plan_steps(
        len(dataset),
        settings.micro_batch_size,
        world,
        settings.global_batch_size,
        settings.epochs,
        settings.max_steps,
    )
    sampler = build_sampler(job, dataset, world, rank, accum)
    loader = DataLoader(
        dataset,
        batch_size=settings.micro_batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        drop_last=True,
        **loader_options(settings.loader_workers, settings.pin_memory, cfg.resources.cpus_per_worker, device),
    )
    stepper = build_stepper(job, run, vlm, objective, accum, total, world, rank, device)
    zero = run.zero
    every = _diagnostics_every(job, zero)
    # Every rank must agree on when to report (a report is a barrier); only rank 0 runs the probe.
    probe = _diagnostics_probe(cfg, vlm, tokenizer, Path(job.out_dir)) if every and rank == 0 else None
    loop = _Loop(
        job, run, stepper, loader, sampler, checkpoints, accum, total, world, rank, device, every, probe
    )
    loop.heldout = heldout_probe(job, held, collate_fn, world, rank, device, run)
    pos, last = loop.run(objective, vlm)
    result = {
        "first_loss": pos.first_loss,
        "final_loss": last.get("loss"),
        "steps": total,
        "samples": len(dataset),
        "resumed_from_step": loop.resumed_from,
        "zero": zero,
    }
    result.update({f"final_{k.replace('/', '_')}": v for k, v in last.items() if k != "loss"})
    result.update(loop.heldout.final() if loop.heldout is not None else {})
    tower = any(p.requires_grad for p in vlm.vision.parameters())
    out_dir = Path(job.out_dir)
    _save_outputs(
        out_dir,
        job.stage,
        vlm,
        tokenizer,
        objective,
        stepper,
        rank=rank,
        train_vision=tower,
        llm_dtype=DTYPES[run.precision],
    )
    if rank == 0:
        (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
    if world > 1:
        dist.barrier()
    elif job.evaluate is not None and zero != 3:
        _evaluate_in_worker(vlm, tokenizer, job.evaluate)
    return result


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


def build_data(
    job: StageJob, vlm: VLM, tokenizer: Tokenizer, rank: int
) -> tuple[Any, Callable[..., dict[str, Any]], BuildContext]:
    """The stage's dataset in its template and image mode, its collate function, and what the method's
    objective needs at build time (the VLM; SEA: the labels of `job.labels_dir`)."""
    from core.data import LlavaDataset, make_collate
    from core.models.llm import get_llm_spec

    cfg, kind = job.trial, job.kind
    data_cfg = kind.dataset(cfg)
    enc = vlm.vision.spec
    dataset = LlavaDataset(
        job.json_path,
        job.image_root,
        tokenizer,
        kind.template(cfg, get_llm_spec(cfg.model.llm).chat_template),
        image_size=enc.image_size,
        mean=enc.mean,
        std=enc.std,
        image_mode=kind.image_mode,
        resize=enc.resize,
        crop_pct=enc.crop_pct,
        on_missing_image=data_cfg.on_missing_image,
        max_unsupervised_fraction=data_cfg.max_unsupervised_fraction,
    )
    if kind.sea_applies and cfg.method.name in METHODS_WITH_SEA:
        if not job.labels_dir:
            raise ValueError(
                f"{job.stage} of a '{cfg.method.name}' trial needs its label step's store (job.labels_dir); "
                "the trial's step graph (core.pipeline.trial_steps) materialises it before training"
            )
        return _sea_context(Path(job.labels_dir), dataset, vlm, tokenizer, cfg.seed * 1000 + rank)
    # With several ranks a text-only micro-batch still runs the tower and adapter, so every rank calls the
    # same modules (ZeRO-3's gathers, DDP's reduction); core.data.llava.collate.
    shape = (3, enc.image_size, enc.image_size) if cfg.resources.num_workers > 1 else None
    return dataset, make_collate(tokenizer.pad_token_id, shape), {"vlm": vlm}


def loader_options(
    workers: int | None, pin_memory: bool | None, cpus_per_worker: float, device: torch.device
) -> dict[str, Any]:
    """DataLoader worker and pinning options: the settings, or their defaults (null). The sampler stays
    in this process (workers only fetch the indices it yields), so a resumed epoch's skip still holds."""
    on_gpu = device.type == "cuda"
    if workers is None:
        workers = min(4, max(0, int(cpus_per_worker) - 1)) if on_gpu else 0
    options: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": on_gpu if pin_memory is None else pin_memory,
    }
    if workers:
        options["prefetch_factor"] = 2
    return options


def build_sampler(job: StageJob, dataset: Any, world: int, rank: int, accum: int) -> Any:
    """This rank's batch order, resumable part-way through an epoch: random (`group_by_length: off`), or
    LLaVA's modality- and length-grouped order (`modality`: tokens balanced across the micro-batches of a
    global batch, as LLaVA; `length`: similar lengths share a micro-batch, least padding)."""
    from core.data.sampler import LengthGroupedSampler, modality_lengths

    cfg, mode = job.trial, job.settings.group_by_length
    if mode == "off":
        inner: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        return ResumableSampler(inner)
    records = getattr(dataset, "dataset", dataset).records  # WithLabels wraps the LLaVA dataset
    return LengthGroupedSampler(
        modality_lengths(records),
        micro_batch=job.settings.micro_batch_size,
        num_replicas=world,
        rank=rank,
        accumulation=accum,
        seed=cfg.seed,
        drop_last=True,
        balance=mode == "modality",
    )


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
        _gather_embedding_table(objective, vlm)
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


class _Loop:
    """The optimisation loop of a stage: micro-steps, logging, diagnostics, checkpoints, resume."""

    def __init__(
        self,
        job: StageJob,
        run: RunSettings,
        stepper: Stepper,
        loader: DataLoader,
        sampler: ResumableSampler,
        checkpoints: Checkpoints,
        accum: int,
        total: int,
        world: int,
        rank: int,
        device: torch.device,
        every: int | None,
        probe: Any,
    ) -> None:
        self.job, self.run_settings, self.stepper, self.loader, self.sampler = (
            job,
            run,
            stepper,
            loader,
            sampler,
        )
        self.checkpoints, self.accum, self.total = checkpoints, accum, total
        self.world, self.rank, self.device, self.every, self.probe = world, rank, device, every, probe
        self.resumed_from = 0
        self.heldout: HeldoutProbe | None = None

    def run(self, objective: Objective, vlm: VLM) -> tuple[Position, dict[str, float]]:
        generator = getattr(objective, "generator", None)  # SEA's pair sampler, when the method has one
        generators = {"objective": generator} if isinstance(generator, torch.Generator) else {}
        pos = Position()
        with self.checkpoints.latest() as latest:
            if latest is not None:
                self.stepper.load(latest)
                pos = load_position(latest, rank=self.rank, generators=generators)
        self.resumed_from = pos.step

        def write_checkpoint(directory: Path) -> None:
            self.stepper.save(directory)
            save_position(directory, rank=self.rank, position=pos, generators=generators)

        self.stepper.module.train()
        self._since, self._t0 = 0, time.perf_counter()
        self._last_checkpoint = time.perf_counter()
        run = self.run_settings
        sums: dict[str, float] = {}
        last: dict[str, float] = {}
        micro = self.job.settings.micro_batch_size
        while pos.step < self.total:
            self.sampler.start(pos.epoch, skip=pos.batch_in_epoch * micro)
            for batch in self.loader:
                pos.batch_in_epoch += 1
                batch = _to_device(batch, self.device)
                with loop_autocast(run.precision, self.device, deepspeed=run.deepspeed):
                    loss, terms = self.stepper.module(batch)
                values = {"loss": float(loss.detach()), **terms}
                check_finite(values, self.job.stage, pos.step + 1)
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                lr = self.stepper.micro_step(loss)
                if lr is None:
                    continue
                pos.step += 1
                self._since += 1
                # One all-reduce per optimizer step for every metric and the checkpoint clock, whose
                # mean every rank then agrees on (a checkpoint is a collective).
                local = {k: v / self.accum for k, v in sums.items()}
                local[_CLOCK] = time.perf_counter() - self._last_checkpoint
                last = mean_across_ranks(local, self.world, self.device)
                self._clock = last.pop(_CLOCK)
                sums = {}
                pos.first_loss = last["loss"] if pos.first_loss is None else pos.first_loss
                self._after_step(pos.step, last, lr, vlm, write_checkpoint)
                if pos.step >= self.total:
                    break
            else:
                pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
        return pos, last

    def _after_step(
        self, step: int, last: dict[str, float], lr: float, vlm: VLM, write_checkpoint: Callable[[Path], None]
    ) -> None:
        """Report (with diagnostics and a checkpoint when due); stop at the job's step budget."""
        settings, name = self.job.settings, self.job.stage
        save = checkpoint_due(
            step,
            self.total,
            every=settings.checkpoint_every,
            minutes=settings.checkpoint_minutes,
            elapsed_s=self._clock,
        )
        diagnose = (
            self.every is not None and self.every != 0 and (step % self.every == 0 or step == self.total)
        )
        held = self.heldout is not None and self.heldout.due(step, self.total)
        if save or diagnose or held or step % settings.log_every == 0 or step == self.total:
            elapsed = time.perf_counter() - self._t0
            metrics = {f"{name}/{k}": v for k, v in last.items()}
            if diagnose and self.probe is not None:
                metrics.update(self.probe(vlm, step))
            if held and self.heldout is not None:  # every rank evaluates (a collective under ZeRO-3)
                metrics.update(self.heldout(vlm))
            metrics[f"{name}/lr"] = lr
            metrics[f"{name}/samples_per_s"] = settings.global_batch_size * self._since / max(elapsed, 1e-9)
            message = {"stage": name, "step": step, "total_steps": self.total, "metrics": metrics}
            self.checkpoints.report(message, write_checkpoint if save else None)
            if save:
                self._last_checkpoint = time.perf_counter()
            self._t0, self._since = time.perf_counter(), 0
        if self.job.step_budget is not None and step >= self.job.step_budget and step < self.total:
            raise StepBudgetReached(f"{name} stopped at step {step}: job.step_budget={self.job.step_budget}")


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


def _gather_embedding_table(objective: Objective, vlm: VLM) -> None:
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


def _diagnostics_every(job: StageJob, zero: int | None) -> int | None:
    """How often the stage runs the alignment diagnostics while training, or None. ZeRO-3 partitions the
    weights the probe would read on one rank: no curve then."""
    cfg = job.trial
    every = cfg.eval.diagnostics.every_steps
    if not job.kind.curve or not cfg.eval.enabled or not every:
        return None
    if zero == 3:
        import warnings

        warnings.warn(f"eval.diagnostics.every_steps is ignored under ZeRO-3 in {job.stage}", stacklevel=2)
        return None
    return every


def _diagnostics_probe(cfg: TrialConfig, vlm: VLM, tokenizer: Tokenizer, step_dir: Path) -> Any:
    """Stage 1's diagnostics probe; its curve points also go to the step dir for the evaluation step."""
    from core.evaluation.diagnostics import CURVE_FILE, DiagnosticsProbe

    return DiagnosticsProbe(cfg.eval, vlm, tokenizer, curve_path=step_dir / CURVE_FILE)


def _save_outputs(
    step_dir: Path,
    stage: str,
    vlm: VLM,
    tokenizer: Tokenizer,
    objective: Objective,
    stepper: Stepper,
    *,
    rank: int,
    train_vision: bool,
    llm_dtype: torch.dtype = torch.float32,
) -> None:
    """What later steps load: the adapter (always), the LLM and tokenizer (stage 2), the vision tower's
    trained weights, the objective's parameters. Under ZeRO-3 the weights are gathered first (all ranks
    take part); rank 0 writes. The LLM is saved in `llm_dtype` (its compute dtype: a bf16 run's fp32
    masters are not kept, as LLaVA saves them) as safetensors, the only format transformers 5 writes."""
    from core.models import save_adapter

    with stepper.gathered(list(vlm.adapter.parameters()) + list(objective.parameters())):
        if rank == 0:
            save_adapter(vlm, step_dir / "adapter")
            if any(p.numel() for p in objective.parameters()):
                torch.save(objective.state_dict(), step_dir / "objective.pt")
    if STAGES[stage].trains_llm:
        llm_state = stepper.full_state_dict("vlm.llm.")  # ZeRO-3 only: consolidated on rank 0
        if rank == 0:
            _save_llm(vlm.llm, llm_state, step_dir / "llm", llm_dtype)
            tokenizer.save_pretrained(step_dir / "llm")
        if train_vision:
            with stepper.gathered([p for p in vlm.vision.parameters() if p.requires_grad]):
                if rank == 0:
                    torch.save(trainable_state(vlm.vision), step_dir / "vision_trainable.pt")


def _save_llm(llm: Any, state: dict[str, torch.Tensor] | None, out: Path, dtype: torch.dtype) -> None:
    """`save_pretrained` of `state` (default: the module's own) with floating tensors in `dtype`, copied
    to the CPU one at a time (no second copy of the model on the GPU); config.json names that dtype."""
    state = state if state is not None else llm.state_dict()
    cast = {
        k: v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()
        for k, v in state.items()
    }
    llm.save_pretrained(out, state_dict=cast)
    config = out / "config.json"
    saved = json.loads(config.read_text())
    saved["dtype"] = str(dtype).removeprefix("torch.")
    config.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a collated batch on the training device (ids and other lists stay as they are)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _sea_context(
    labels_dir: Path, dataset: Any, vlm: VLM, tokenizer: Tokenizer, seed: int
) -> tuple[Any, Callable[..., dict[str, Any]], BuildContext]:
    """SEA's labelled dataset, its collate function and the objective's build context."""
    from core.labels import LabelStore, WithLabels, make_collate_with_labels
    from core.sea import label_embedding_rows, used_word_ids

    store = LabelStore.open(labels_dir)
    index, _ = store._open_arrays()
    with torch.no_grad():
        rows = label_embedding_rows(
            store.words, used_word_ids(index, len(store.words)), tokenizer, vlm.input_embeddings()
        )
    rows_n, cols_n = vlm.vision.spec.grid
    context: BuildContext = {
        "vlm": vlm,
        "sea": {"word_embeddings": rows, "grid": (rows_n, cols_n), "seed": seed},
    }
    return WithLabels(dataset, store), make_collate_with_labels(tokenizer.pad_token_id), context

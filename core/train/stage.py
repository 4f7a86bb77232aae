"""A training stage (1: adapter alignment, 2: instruction tuning), the loop each Ray Train worker runs."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from core.train.checkpoint import (
    Checkpoints,
    LocalCheckpoints,
    Position,
    RayCheckpoints,
    load_position,
    save_position,
    trainable_state,
)
from core.train.deepspeed_engine import (
    DeepSpeedStepper,
    deepspeed_config,
    init_distributed,
    make_optimizer,
    resolve_zero,
)
from core.train.schedule import cosine_with_warmup, warmup_steps
from core.train.steppers import TorchStepper, TrainModule

RESULT_FILE = "result.json"


def _ray_context() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _mean_across_ranks(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world


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


def train_stage(payload: dict[str, Any]) -> None:
    """The Ray Train worker function: `payload["stage"]` with this worker's rank, metrics via ray.train.report."""
    import ray.train.torch

    rank, world = _ray_context()
    run_stage(
        payload, rank=rank, world=world, checkpoints=RayCheckpoints(rank), device=ray.train.torch.get_device()
    )


def run_stage1(payload: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """`run_stage` for stage 1 (adapter alignment)."""
    return run_stage({**payload, "stage": "stage1"}, **kwargs)


def run_stage(
    payload: dict[str, Any],
    *,
    rank: int = 0,
    world: int = 1,
    checkpoints: Checkpoints | None = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Run one stage; rank 0 saves what it trained into the step dir.

    Stage 1 trains the adapter on captions (`plain` template, square images, the method's extra loss
    terms); stage 2 starts from stage 1's adapter (`payload["stage1_dir"]`) and trains adapter + LLM (and
    the vision tower at its own learning rate when asked) on conversations in the LLM's chat template,
    padded images. `payload` holds the trial config, the step directory and resolved data paths (see grid.trial);
    returns the result summary that is also written to `result.json`. Metrics and checkpoints go to
    `checkpoints` (Ray Train's inside a trial); training resumes from its latest checkpoint if there is one.
    """
    from core.config import METHODS_WITH_SEA, TrialConfig
    from core.data import LlavaDataset, make_collate
    from core.methods.build import build_objective
    from core.models import build_vlm, load_adapter
    from core.models.llm import get_llm_spec

    os.environ["SEAGRID_CACHE"] = payload["cache_dir"]
    cfg = TrialConfig.model_validate(payload["trial"])
    name = payload.get("stage", "stage1")
    stage = getattr(cfg, name)
    data_cfg = getattr(cfg.data, name)
    step_dir = Path(payload["step_dir"])
    checkpoints = checkpoints or LocalCheckpoints()
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    torch.manual_seed(cfg.seed)

    vlm, tokenizer = build_vlm(
        cfg.model.llm,
        cfg.model.encoder,
        cfg.model.adapter,
        llm_path=cfg.model.llm_path,
        encoder_path=cfg.model.encoder_path,
    )
    if name == "stage1":
        vlm.freeze_for_stage1()
        template, image_mode = "plain", "square"
    else:
        if payload.get("stage1_dir"):
            load_adapter(vlm, Path(payload["stage1_dir"]) / "adapter")
        vlm.freeze_for_stage2(train_vision=stage.train_vision)
        if stage.gradient_checkpointing:
            vlm.llm.gradient_checkpointing_enable()
        template, image_mode = stage.template or get_llm_spec(cfg.model.llm).chat_template, "pad"
    enc = vlm.vision.spec
    dataset = LlavaDataset(
        payload["data"]["json_path"],
        payload["data"]["image_root"],
        tokenizer,
        template,
        image_size=enc.image_size,
        mean=enc.mean,
        std=enc.std,
        image_mode=image_mode,
        on_missing_image=data_cfg.on_missing_image,
        max_unsupervised_fraction=data_cfg.max_unsupervised_fraction,
    )
    collate_fn = make_collate(tokenizer.pad_token_id)
    context: dict[str, Any] = {}
    if name == "stage1" and cfg.method.name in METHODS_WITH_SEA:
        dataset, collate_fn, context["sea"] = _sea_context(
            payload, dataset, vlm, tokenizer, cfg.seed * 1000 + rank
        )
    device = device or torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # fp32 matmuls outside autocast (BASIC's vocabulary softmaxes) run on tensor cores.
        torch.backends.cuda.matmul.allow_tf32 = True
    vlm.to(device)
    context["vlm"] = vlm
    objective = build_objective(cfg.method, context, stage=name).to(device)
    sampler = ResumableSampler(
        DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
    )
    loader = DataLoader(
        dataset, batch_size=stage.micro_batch_size, sampler=sampler, collate_fn=collate_fn, drop_last=True
    )
    accum, total = plan_steps(
        len(dataset), stage.micro_batch_size, world, stage.global_batch_size, stage.epochs, stage.max_steps
    )
    vision = {id(p) for p in vlm.vision.parameters()}
    main = [p for p in vlm.parameters() if p.requires_grad and id(p) not in vision]
    main += [p for p in objective.parameters() if p.requires_grad]
    groups = [{"params": main, "lr": stage.lr}]
    tower = [p for p in vlm.vision.parameters() if p.requires_grad]
    if tower:
        groups.append({"params": tower, "lr": stage.vision_lr})
    zero = resolve_zero(stage.deepspeed.zero, name, cfg.model.llm, use_gpu=device.type == "cuda")
    offload = stage.deepspeed.offload if zero is not None else "none"
    if zero is not None:
        init_distributed(device)
    optimizer = make_optimizer(groups, stage.lr, stage.weight_decay, offload)
    warm = warmup_steps(total, stage.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, total, warm))
    if zero == 3:
        _gather_embedding_table(objective, vlm)
    module = TrainModule(vlm, objective)
    stepper: TorchStepper | DeepSpeedStepper
    if zero is None:
        stepper = TorchStepper(
            module, optimizer, scheduler, accumulation=accum, world=world, device=device, rank=rank
        )
    else:
        ds_config = deepspeed_config(
            zero=zero,
            micro_batch_size=stage.micro_batch_size,
            accumulation=accum,
            hidden_size=vlm.llm.get_input_embeddings().embedding_dim,
            offload=offload,
        )
        stepper = DeepSpeedStepper(module, optimizer, scheduler, ds_config)

    # Every rank must agree on when to report (a report is a barrier); only rank 0 runs the probe.
    every = _diagnostics_every(cfg, name, zero)
    probe = _diagnostics_probe(cfg, vlm, tokenizer, step_dir) if every and rank == 0 else None

    generators = {"objective": objective.generator} if hasattr(objective, "generator") else {}
    pos = Position()
    with checkpoints.latest() as latest:
        if latest is not None:
            stepper.load(latest)
            pos = load_position(latest, rank=rank, generators=generators)
    resumed_from = pos.step

    def write_checkpoint(directory: Path) -> None:
        stepper.save(directory)
        save_position(directory, rank=rank, position=pos, generators=generators)

    stepper.module.train()
    since_report, t0 = 0, time.perf_counter()
    sums: dict[str, float] = {}
    last: dict[str, float] = {}
    interrupt_after = payload.get("interrupt_after_step")  # testing hook: simulate a killed worker
    while pos.step < total:
        sampler.start(pos.epoch, skip=pos.batch_in_epoch * stage.micro_batch_size)
        for batch in loader:
            pos.batch_in_epoch += 1
            batch = _to_device(batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, terms = stepper.module(batch)
            for key, value in {"loss": float(loss.detach()), **terms}.items():
                sums[key] = sums.get(key, 0.0) + value
            lr = stepper.micro_step(loss)
            if lr is None:
                continue
            pos.step += 1
            since_report += 1
            last = {k: _mean_across_ranks(v / accum, world) for k, v in sorted(sums.items())}
            sums = {}
            pos.first_loss = last["loss"] if pos.first_loss is None else pos.first_loss
            step = pos.step
            save = bool(stage.checkpoint_every) and step % stage.checkpoint_every == 0 and step < total
            diagnose = bool(every) and (step % every == 0 or step == total)
            if save or diagnose or step % stage.log_every == 0 or step == total:
                elapsed = time.perf_counter() - t0
                metrics = {f"{name}/{k}": v for k, v in last.items()}
                if diagnose and probe is not None:
                    metrics.update(probe(vlm, step))
                metrics[f"{name}/lr"] = lr
                metrics[f"{name}/samples_per_s"] = stage.global_batch_size * since_report / max(elapsed, 1e-9)
                message = {"stage": name, "step": step, "total_steps": total, "metrics": metrics}
                checkpoints.report(message, write_checkpoint if save else None)
                t0, since_report = time.perf_counter(), 0
            if interrupt_after is not None and step >= interrupt_after:
                raise RuntimeError(f"interrupted after step {step} (testing hook interrupt_after_step)")
            if step >= total:
                break
        else:
            pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0

    result = {
        "first_loss": pos.first_loss,
        "final_loss": last.get("loss"),
        "steps": total,
        "samples": len(dataset),
        "resumed_from_step": resumed_from,
        "zero": zero,
    }
    result.update({f"final_{k.replace('/', '_')}": v for k, v in last.items() if k != "loss"})
    _save_outputs(step_dir, name, vlm, tokenizer, objective, stepper, rank=rank, train_vision=bool(tower))
    if rank == 0:
        (step_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
    if world > 1:
        dist.barrier()
    elif payload.get("evaluate") and zero != 3:
        _evaluate_in_worker(vlm, tokenizer, cfg, payload["evaluate"])
    return result


def _evaluate_in_worker(vlm: Any, tokenizer: Any, cfg: Any, ev: dict[str, Any]) -> None:
    """The evaluation step with the model still in memory (one worker): saves a second process loading it.
    A failure here only warns: the grid's own evaluation step then runs (and reports) it."""
    import warnings

    from core.evaluation.step import build_eval_dir, evaluate_loaded

    try:
        build_eval_dir(Path(ev["out_dir"]), ev["ident"], lambda: evaluate_loaded(vlm, tokenizer, cfg, ev))
    except Exception as err:  # noqa: BLE001
        warnings.warn(
            f"evaluation in the training worker failed ({err!r}); it runs again on its own", stacklevel=2
        )


def _gather_embedding_table(objective: torch.nn.Module, vlm: Any) -> None:
    """Under ZeRO-3 the LLM's embedding table is partitioned across ranks: objectives that read it whole
    (BASIC's L_sds) get it gathered, a collective every rank runs at the same point of each micro-step."""
    import deepspeed

    weight = vlm.llm.get_input_embeddings().weight

    def gathered() -> torch.Tensor:
        with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):
            return weight.detach().clone()

    for part in objective.modules():
        if hasattr(part, "embedding_table"):
            part.embedding_table = gathered


def _diagnostics_every(cfg: Any, stage: str, zero: int | None) -> int | None:
    """How often stage 1 runs the alignment diagnostics, or None. ZeRO-3 partitions the weights the probe
    would read on one rank: no curve then."""
    every = cfg.eval.diagnostics.every_steps
    if stage != "stage1" or not cfg.eval.enabled or not every:
        return None
    if zero == 3:
        import warnings

        warnings.warn("eval.diagnostics.every_steps is ignored under ZeRO-3 in stage 1", stacklevel=2)
        return None
    return every


def _diagnostics_probe(cfg: Any, vlm: Any, tokenizer: Any, step_dir: Path) -> Any:
    """Stage 1's diagnostics probe; its curve points also go to the step dir for the evaluation step."""
    from core.evaluation.diagnostics import CURVE_FILE, DiagnosticsProbe

    return DiagnosticsProbe(cfg.eval, vlm, tokenizer, curve_path=step_dir / CURVE_FILE)


def _save_outputs(
    step_dir: Path,
    stage: str,
    vlm: Any,
    tokenizer: Any,
    objective: torch.nn.Module,
    stepper: TorchStepper | DeepSpeedStepper,
    *,
    rank: int,
    train_vision: bool,
) -> None:
    """What later steps load: the adapter (always), the LLM and tokenizer (stage 2), the vision tower's
    trained weights, the objective's parameters. Under ZeRO-3 the weights are gathered first (all ranks
    take part); rank 0 writes."""
    from core.models import save_adapter

    with stepper.gathered(list(vlm.adapter.parameters()) + list(objective.parameters())):
        if rank == 0:
            save_adapter(vlm, step_dir / "adapter")
            if any(p.numel() for p in objective.parameters()):
                torch.save(objective.state_dict(), step_dir / "objective.pt")
    if stage == "stage2":
        llm_state = stepper.full_state_dict("vlm.llm.")  # ZeRO-3 only: consolidated on rank 0
        if rank == 0:
            vlm.llm.save_pretrained(step_dir / "llm", state_dict=llm_state)
            tokenizer.save_pretrained(step_dir / "llm")
        if train_vision:
            with stepper.gathered([p for p in vlm.vision.parameters() if p.requires_grad]):
                if rank == 0:
                    torch.save(trainable_state(vlm.vision), step_dir / "vision_trainable.pt")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a collated batch on the training device (ids and other lists stay as they are)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _sea_context(
    payload: dict[str, Any], dataset: Any, vlm: Any, tokenizer: Any, seed: int
) -> tuple[Any, Callable[..., dict[str, Any]], dict[str, Any]]:
    """SEA's labelled dataset, its collate function and the objective's build context."""
    from core.labels import LabelStore, WithLabels, make_collate_with_labels
    from core.sea import label_embeddings

    if "labels" in payload:
        store = LabelStore.open(payload["labels"]["path"])
    else:
        from core.config import TrialConfig
        from core.labels.prepare import prepare_labels

        # The label step runs here, in the worker that has the accelerator and has torch imported anyway;
        # the store's own lock makes the other ranks (and other trials) wait for one extraction.
        cfg = TrialConfig.model_validate(payload["trial"])
        data = payload["data"]
        store = LabelStore.open(prepare_labels(cfg, Path(data["json_path"]), Path(data["image_root"])))
    with torch.no_grad():
        words = label_embeddings(store.words, tokenizer, vlm.llm.get_input_embeddings())
    context = {"word_embeddings": words, "grid": tuple(vlm.vision.spec.grid), "seed": seed}
    return WithLabels(dataset, store), make_collate_with_labels(tokenizer.pad_token_id), context

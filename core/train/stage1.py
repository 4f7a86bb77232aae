"""Stage 1 (adapter alignment), the loop each Ray Train worker runs."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from core.train.schedule import cosine_with_warmup, warmup_steps

RESULT_FILE = "result.json"


def _ray_context() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _report(metrics: dict[str, Any]) -> None:
    import ray.train

    ray.train.report({"seagrid": metrics})


def _mean_across_ranks(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world


def plan_steps(
    num_samples: int, micro: int, world: int, global_batch: int, epochs: float, max_steps: int | None
) -> tuple[int, int]:
    """(gradient accumulation, optimizer steps) for a stage; fails when the data cannot fill one step."""
    accum = global_batch // (micro * world)
    steps_per_epoch = (num_samples // (micro * world)) // accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"the dataset has {num_samples} samples, fewer than one global batch of {global_batch}; "
            "lower stage1.global_batch_size or add data"
        )
    total = math.ceil(epochs * steps_per_epoch)
    return accum, min(total, max_steps) if max_steps else total


def train_stage1(payload: dict[str, Any]) -> None:
    """Train the adapter on captions with the `plain` template; rank 0 saves it into the step dir."""
    from core.data import LlavaDataset, make_collate
    from core.models import build_vlm, save_adapter
    from grid.spec import TrialConfig

    os.environ["SEAGRID_CACHE"] = payload["cache_dir"]
    cfg = TrialConfig.model_validate(payload["trial"])
    stage = cfg.stage1
    step_dir = Path(payload["step_dir"])
    rank, world = _ray_context()
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    torch.manual_seed(cfg.seed)

    vlm, tokenizer = build_vlm(
        cfg.model.llm,
        cfg.model.encoder,
        cfg.model.adapter,
        llm_path=cfg.model.llm_path,
        encoder_path=cfg.model.encoder_path,
    )
    vlm.freeze_for_stage1()
    enc = vlm.vision.spec
    dataset = LlavaDataset(
        payload["data"]["json_path"],
        payload["data"]["image_root"],
        tokenizer,
        "plain",
        image_size=enc.image_size,
        mean=enc.mean,
        std=enc.std,
        image_mode="square",
        on_missing_image=cfg.data.stage1.on_missing_image,
    )
    sampler = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    loader = DataLoader(
        dataset,
        batch_size=stage.micro_batch_size,
        sampler=sampler,
        collate_fn=make_collate(tokenizer.pad_token_id),
        drop_last=True,
    )
    accum, total = plan_steps(
        len(dataset), stage.micro_batch_size, world, stage.global_batch_size, stage.epochs, stage.max_steps
    )
    model: torch.nn.Module = vlm
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(vlm)
    params = [p for p in vlm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=stage.weight_decay)
    warm = warmup_steps(total, stage.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, total, warm))

    model.train()
    step, micro_i, loss_sum, t0 = 0, 0, 0.0, time.perf_counter()
    first_loss: float | None = None
    last_loss = float("nan")
    epoch = 0
    while step < total:
        sampler.set_epoch(epoch)
        for batch in loader:
            out = model(batch)
            (out.loss / accum).backward()
            loss_sum += float(out.loss.detach())
            micro_i += 1
            if micro_i % accum:
                continue
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            last_loss = _mean_across_ranks(loss_sum / accum, world)
            first_loss = last_loss if first_loss is None else first_loss
            loss_sum = 0.0
            if step % stage.log_every == 0 or step == total:
                elapsed = time.perf_counter() - t0
                _report(
                    {
                        "stage": "stage1",
                        "step": step,
                        "total_steps": total,
                        "metrics": {
                            "stage1/loss": last_loss,
                            "stage1/lr": lr,
                            "stage1/samples_per_s": stage.global_batch_size
                            * stage.log_every
                            / max(elapsed, 1e-9),
                        },
                    }
                )
                t0 = time.perf_counter()
            if step >= total:
                break
        epoch += 1

    result = {"first_loss": first_loss, "final_loss": last_loss, "steps": total, "samples": len(dataset)}
    if rank == 0:
        save_adapter(vlm, step_dir / "adapter")
        (step_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
    if world > 1:
        dist.barrier()

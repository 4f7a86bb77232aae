"""The held-out L_lm of a stage while it trains: its split of the data (never trained on), evaluated every N
steps and at the end, L_lm alone (no method term), reported as `<stage>/heldout/lm`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from core.config.methods import stage_metric
from core.data.holdout import Part, split_dataset
from core.train.precision import loop_autocast
from core.train.reduce import mean_across_ranks

METRIC = "heldout/lm"


def split_stage(job: Any, dataset: Any) -> tuple[Any, Part | None]:
    """(the stage's training data, its held-out part or None), per `<stage>.heldout`."""
    return split_dataset(dataset, job.kind.dataset(job.trial), job.settings.heldout)


class HeldoutProbe:
    """Mean L_lm over the held-out part; every rank evaluates an equal share (padded by the sampler: under
    ZeRO-3 a forward is a collective, so every rank must run as many), the sums are all-reduced."""

    def __init__(
        self,
        job: Any,
        part: Part,
        collate_fn: Callable[..., dict[str, Any]],
        world: int,
        rank: int,
        device: torch.device,
        run: Any,
    ) -> None:
        self.stage, self.every = job.stage, job.settings.heldout.every_steps
        sampler: DistributedSampler[Any] = DistributedSampler(
            part, num_replicas=world, rank=rank, shuffle=False, drop_last=False
        )
        self.loader = DataLoader(
            part, batch_size=job.settings.micro_batch_size, sampler=sampler, collate_fn=collate_fn
        )
        self.world, self.device, self.run = world, device, run
        self.last: float | None = None

    def due(self, step: int, total: int) -> bool:
        return step == total or (self.every is not None and step % self.every == 0)

    @torch.no_grad()
    def __call__(self, vlm: Any) -> dict[str, float]:
        was_training = vlm.training
        vlm.eval()
        total, count = 0.0, 0.0
        try:
            for batch in self.loader:
                if self.device.type != "cpu":
                    batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                with loop_autocast(self.run.precision, self.device, deepspeed=self.run.deepspeed):
                    out = vlm(batch, logits=False)
                total += float(out.loss.detach()) * len(batch["input_ids"])
                count += len(batch["input_ids"])
        finally:
            vlm.train(was_training)
        sums = mean_across_ranks({"total": total, "count": count}, self.world, self.device)
        self.last = sums["total"] / max(sums["count"], 1e-9)
        return {stage_metric(self.stage, METRIC): self.last}

    def final(self) -> dict[str, float]:
        """What result.json keeps: the last held-out L_lm (`final_heldout_lm`)."""
        return {} if self.last is None else {f"final_{METRIC.replace('/', '_')}": self.last}


def heldout_probe(
    job: Any,
    part: Part | None,
    collate_fn: Callable[..., dict[str, Any]],
    world: int,
    rank: int,
    device: Any,
    run: Any,
) -> HeldoutProbe | None:
    """The stage's probe, or None when it holds nothing out."""
    return None if part is None else HeldoutProbe(job, part, collate_fn, world, rank, device, run)

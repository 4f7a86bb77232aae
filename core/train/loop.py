"""A stage's optimisation loop: micro-steps, metrics, diagnostics, checkpoints, resumption, the step budget."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch.utils.data import DataLoader

from core.config.methods import SPEED, TOTAL_LOSS, stage_metric
from core.train.checkpoint import Checkpoints, Position, load_position, save_position
from core.train.checkpoint_clock import checkpoint_due
from core.train.heldout import HeldoutProbe
from core.train.job import NonFiniteLoss, StepBudgetReached
from core.train.precision import Precision, loop_autocast
from core.train.reduce import mean_across_ranks
from core.train.steppers import Stepper

if TYPE_CHECKING:
    from core.methods.objective import Objective
    from core.models.vlm import VLM

# Rides with the metrics through their one all-reduce: the ranks' mean time since the last checkpoint.
_CLOCK = "_seconds_since_checkpoint"
LR = "lr"


class BatchOrder(Protocol):
    """A sampler that can start an epoch part-way (core.train.setup_data, core.data.sampler)."""

    def start(self, epoch: int, skip: int = 0) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    """What the loop reads, resolved once by the stage's setup: the plan (`total` optimizer steps of
    `accum` micro-batches), this worker's place, how it computes, and when it logs, diagnoses, checkpoints
    and stops."""

    stage: str
    total: int
    accum: int
    world: int
    rank: int
    device: torch.device
    precision: Precision
    deepspeed: bool
    micro_batch_size: int
    global_batch_size: int
    log_every: int
    checkpoint_every: int | None = None
    checkpoint_minutes: float | None = None
    step_budget: int | None = None
    diagnostics_every: int | None = None  # None or 0: no diagnostics while training


@dataclass(frozen=True)
class LoopParts:
    """What the loop drives, built by the stage's setup. `probe` (rank 0 only) and `heldout` add metrics to
    the reports they are due in."""

    vlm: VLM
    objective: Objective
    stepper: Stepper
    loader: DataLoader
    sampler: BatchOrder
    checkpoints: Checkpoints
    probe: Callable[[VLM, int], dict[str, float]] | None = None
    heldout: HeldoutProbe | None = None


@dataclass
class LoopResult:
    """Where the loop ended, the metrics of its last optimizer step, and the step it resumed from."""

    position: Position
    last: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0


def check_finite(values: dict[str, float], stage: str, step: int) -> None:
    """Stop at once when a loss term is NaN or infinite (the loss is read every micro-step anyway)."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        terms = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise NonFiniteLoss(
            f"{stage} step {step}: {terms}; the run is stopped (its last checkpoint is kept). Lower "
            f"{stage}.lr, raise warmup_ratio, or check the method's weights and the data"
        )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a collated batch on the training device (ids and other lists stay as they are)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _generators(objective: Objective) -> dict[str, torch.Generator]:
    """The objective's own random generator (SEA's pair sampler), checkpointed with the position."""
    generator = getattr(objective, "generator", None)
    return {"objective": generator} if isinstance(generator, torch.Generator) else {}


class Loop:
    """The optimisation loop of a stage, configured by one settings object; `run` drives what setup built."""

    def __init__(self, settings: LoopSettings) -> None:
        self.settings = settings
        self._since, self._t0, self._last_checkpoint, self._clock = 0, 0.0, 0.0, 0.0

    def run(self, parts: LoopParts) -> LoopResult:
        """Train from the latest checkpoint (or the start) to `settings.total` optimizer steps."""
        s, generators = self.settings, _generators(parts.objective)
        pos = Position()
        with parts.checkpoints.latest() as latest:
            if latest is not None:
                parts.stepper.load(latest)
                pos = load_position(latest, rank=s.rank, generators=generators)
        result = LoopResult(pos, resumed_from=pos.step)

        def write_checkpoint(directory: Path) -> None:
            parts.stepper.save(directory)
            save_position(directory, rank=s.rank, position=pos, generators=generators)

        parts.stepper.module.train()
        self._since, self._t0 = 0, time.perf_counter()
        self._last_checkpoint = time.perf_counter()
        sums: dict[str, float] = {}
        while pos.step < s.total:
            parts.sampler.start(pos.epoch, skip=pos.batch_in_epoch * s.micro_batch_size)
            for batch in parts.loader:
                pos.batch_in_epoch += 1
                lr = self._micro_step(parts, batch, sums, pos.step + 1)
                if lr is None:
                    continue
                pos.step += 1
                self._since += 1
                result.last = self._reduce(sums)
                sums.clear()
                pos.first_loss = result.last[TOTAL_LOSS] if pos.first_loss is None else pos.first_loss
                self._after_step(parts, pos.step, result.last, lr, write_checkpoint)
                if pos.step >= s.total:
                    break
            else:
                pos.epoch, pos.batch_in_epoch = pos.epoch + 1, 0
        return result

    def _micro_step(
        self, parts: LoopParts, batch: dict[str, Any], sums: dict[str, float], step: int
    ) -> float | None:
        """Forward and backward of one micro-batch, its loss terms added to `sums`; the lr when it ended
        an optimizer step (`step`), else None."""
        s = self.settings
        batch = to_device(batch, s.device)
        with loop_autocast(s.precision, s.device, deepspeed=s.deepspeed):
            loss, terms = parts.stepper.module(batch)
        values = {TOTAL_LOSS: float(loss.detach()), **terms}
        check_finite(values, s.stage, step)
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        return parts.stepper.micro_step(loss)

    def _reduce(self, sums: dict[str, float]) -> dict[str, float]:
        """The step's metrics averaged over its micro-batches and the ranks. One all-reduce per optimizer
        step carries every metric and the checkpoint clock, whose mean every rank then agrees on (a
        checkpoint is a collective)."""
        s = self.settings
        local = {k: v / s.accum for k, v in sums.items()}
        local[_CLOCK] = time.perf_counter() - self._last_checkpoint
        last = mean_across_ranks(local, s.world, s.device)
        self._clock = last.pop(_CLOCK)
        return last

    def _after_step(
        self,
        parts: LoopParts,
        step: int,
        last: dict[str, float],
        lr: float,
        write_checkpoint: Callable[[Path], None],
    ) -> None:
        """Report (with diagnostics and a checkpoint when due); stop at the job's step budget."""
        s, name = self.settings, self.settings.stage
        save = checkpoint_due(
            step, s.total, every=s.checkpoint_every, minutes=s.checkpoint_minutes, elapsed_s=self._clock
        )
        every = s.diagnostics_every
        diagnose = every is not None and every != 0 and (step % every == 0 or step == s.total)
        held = parts.heldout is not None and parts.heldout.due(step, s.total)
        if save or diagnose or held or step % s.log_every == 0 or step == s.total:
            elapsed = time.perf_counter() - self._t0
            metrics = {stage_metric(name, k): v for k, v in last.items()}
            if diagnose and parts.probe is not None:
                metrics.update(parts.probe(parts.vlm, step))
            if held and parts.heldout is not None:  # every rank evaluates (a collective under ZeRO-3)
                metrics.update(parts.heldout(parts.vlm))
            metrics[stage_metric(name, LR)] = lr
            metrics[stage_metric(name, SPEED)] = s.global_batch_size * self._since / max(elapsed, 1e-9)
            message = {"stage": name, "step": step, "total_steps": s.total, "metrics": metrics}
            parts.checkpoints.report(message, write_checkpoint if save else None)
            if save:
                self._last_checkpoint = time.perf_counter()
            self._t0, self._since = time.perf_counter(), 0
        if s.step_budget is not None and step >= s.step_budget and step < s.total:
            raise StepBudgetReached(f"{name} stopped at step {step}: job.step_budget={s.step_budget}")

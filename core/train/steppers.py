"""The module a stage trains (VLM + objective) and the plain-PyTorch way to step it (DeepSpeed's is beside)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from core.train.checkpoint import load_state, save_state

if TYPE_CHECKING:
    from core.methods.objective import Objective
    from core.models.vlm import VLM


class TrainModule(nn.Module):
    """The VLM and the method's objective as one module, so that what wraps it (DDP, a DeepSpeed engine)
    also reduces, shards and checkpoints the objective's own parameters (SEA's log_tau)."""

    def __init__(self, vlm: VLM, objective: Objective) -> None:
        super().__init__()
        self.vlm = vlm
        self.objective = objective

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        with self.objective.forward_context(self.vlm):
            # Training needs only the loss: the LM head runs on supervised positions alone, in chunks.
            out = self.vlm(batch, logits=False)
        return self.objective.total(batch, out)


class Stepper(Protocol):
    """What the loop needs from a way of stepping (plain PyTorch / DDP, or a DeepSpeed engine)."""

    @property
    def module(self) -> nn.Module: ...

    def micro_step(self, loss: torch.Tensor) -> float | None:
        """Backward one micro-batch; after the last of an accumulation, step and return the lr."""

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...

    def gathered(self, params: Sequence[nn.Parameter]) -> contextlib.AbstractContextManager[None]:
        """A context in which `params` are whole on every rank (a no-op unless sharded)."""

    def full_state_dict(self, prefix: str) -> dict[str, torch.Tensor] | None:
        """The consolidated weights under `prefix` on rank 0 when sharded, else None (use the module's)."""


class TorchStepper:
    """Micro-steps with plain PyTorch (DDP across ranks): gradient accumulation, clipping at 1.0, AdamW,
    the LR schedule."""

    zero = None

    def __init__(
        self,
        module: TrainModule,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        accumulation: int,
        world: int,
        device: torch.device,
        rank: int,
    ) -> None:
        self.train_module = module
        self.optimizer, self.scheduler, self.accumulation, self.rank = (
            optimizer,
            scheduler,
            accumulation,
            rank,
        )
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.micro = 0
        self.module: nn.Module = module
        if world > 1:
            self.module = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None
            )

    def micro_step(self, loss: torch.Tensor) -> float | None:
        """Backward of one micro-batch; at the accumulation boundary also the optimizer step (its lr)."""
        (loss / self.accumulation).backward()
        self.micro += 1
        if self.micro % self.accumulation:
            return None
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        lr = float(self.scheduler.get_last_lr()[0])  # torch types the lrs as float | Tensor
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr

    def save(self, directory: Path) -> None:
        """Rank 0 writes weights, objective, optimizer and scheduler (replicated on every rank)."""
        if self.rank == 0:
            save_state(directory, **self._state())

    def load(self, directory: Path) -> None:
        load_state(directory, **self._state())

    def _state(self) -> dict[str, Any]:
        m = self.train_module
        return {
            "model": m.vlm,
            "objective": m.objective,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
        }

    @contextlib.contextmanager
    def gathered(self, params: Sequence[nn.Parameter]) -> Iterator[None]:
        yield

    def full_state_dict(self, prefix: str) -> dict[str, torch.Tensor] | None:
        return None

"""A stage's training state on disk (trainable weights, optimizer, scheduler, data position, RNG), and where
checkpoints go: Ray Train's checkpoints inside a trial, a plain folder outside Ray."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

STATE_FILE = "training_state.pt"


@dataclass
class Position:
    """Where training stands: optimizer steps done, epoch, micro-batches of that epoch consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    first_loss: float | None = None


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the parameters that train (the adapter in stage 1): a checkpoint never copies frozen weights."""
    return {name: p.detach().cpu().clone() for name, p in module.named_parameters() if p.requires_grad}


def save_state(
    directory: Path,
    *,
    model: nn.Module,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: Position,
    generators: dict[str, torch.Generator],
) -> None:
    """Write everything needed to continue exactly where training stands."""
    state = {
        "model": trainable_state(model),
        "objective": objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "position": asdict(position),
        "torch_rng": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    torch.save(state, Path(directory) / STATE_FILE)


def load_state(
    directory: Path,
    *,
    model: nn.Module,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generators: dict[str, torch.Generator],
) -> Position:
    """Restore what `save_state` wrote; a checkpoint from another model is an error naming the mismatch."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {STATE_FILE}; not a seagrid training checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=False)
    trainable = dict(model.named_parameters())
    missing = sorted(set(state["model"]) ^ {n for n, p in trainable.items() if p.requires_grad})
    if missing:
        raise ValueError(f"{path}: trainable parameters differ from the model's: {missing[:5]}")
    with torch.no_grad():
        for name, value in state["model"].items():
            trainable[name].copy_(value)
    objective.load_state_dict(state["objective"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    return Position(**state["position"])


class Checkpoints(Protocol):
    """Where a training loop reports metrics and saves or finds checkpoints."""

    def latest(self) -> contextlib.AbstractContextManager[Path | None]: ...

    def report(self, message: dict[str, Any], write: Callable[[Path], None] | None = None) -> None: ...


class RayCheckpoints:
    """Inside a Ray Train worker: metrics via `ray.train.report`, checkpoints in the run's storage.

    A relaunched TorchTrainer with the same run name and storage path finds its latest checkpoint through
    `ray.train.get_checkpoint()`. Every rank reports; only rank 0 writes the checkpoint.
    """

    def __init__(self, rank: int) -> None:
        self.rank = rank

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def report(self, message: dict[str, Any], write: Callable[[Path], None] | None = None) -> None:
        import ray.train

        if write is None or self.rank != 0:
            ray.train.report({"seagrid": message})
            return
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            ray.train.report({"seagrid": message}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class LocalCheckpoints:
    """Outside Ray (tests, notebooks): messages kept in a list, checkpoints as numbered folders."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else None
        self.messages: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        found = sorted(self.root.glob("checkpoint-*")) if self.root and self.root.exists() else []
        yield found[-1] if found else None

    def report(self, message: dict[str, Any], write: Callable[[Path], None] | None = None) -> None:
        self.messages.append(message)
        if write is not None and self.root is not None:
            target = self.root / f"checkpoint-{message['step']:08d}"
            tmp = self.root / f".{target.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            write(tmp)
            tmp.rename(target)

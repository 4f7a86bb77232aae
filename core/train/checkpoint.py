"""A stage's training state on disk (trainable weights, optimizer, scheduler, data position, RNG), and where
checkpoints go: Ray Train's checkpoints inside a trial, a plain folder outside Ray."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from core.diskfull import naming_full_disk

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


POSITION_FILE = "position.json"


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def save_position(
    directory: Path, *, rank: int, position: Position, generators: dict[str, torch.Generator]
) -> None:
    """Rank 0 writes where training stands; every rank writes its own RNG states, since each rank draws
    its own random numbers (SEA's pair sampling). Weights and optimizer are the stepper's to write."""
    directory = Path(directory)
    if rank == 0:
        (directory / POSITION_FILE).write_text(json.dumps(asdict(position)))
    rng = {
        "torch_rng": torch.get_rng_state(),
        "generators": {n: g.get_state() for n, g in generators.items()},
    }
    torch.save(rng, directory / rng_file(rank))


def load_position(directory: Path, *, rank: int, generators: dict[str, torch.Generator]) -> Position:
    """Restore what `save_position` wrote for this rank."""
    path = Path(directory) / POSITION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {POSITION_FILE}; not a seagrid training checkpoint")
    rng_path = Path(directory) / rng_file(rank)
    if rng_path.is_file():
        rng = torch.load(rng_path, map_location="cpu", weights_only=False)
        torch.set_rng_state(rng["torch_rng"])
        for name, g in generators.items():
            g.set_state(rng["generators"][name])
    else:
        # Written by another worker count: the data split differs anyway; keep this rank's fresh seeds.
        warnings.warn(f"{directory}: no RNG state for rank {rank}; resuming with fresh seeds", stacklevel=2)
    return Position(**json.loads(path.read_text()))


def save_state(
    directory: Path,
    *,
    model: nn.Module,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> None:
    """Trainable weights, objective, optimizer and scheduler in one file (plain PyTorch training)."""
    state = {
        "model": trainable_state(model),
        "objective": objective.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
    }
    torch.save(state, Path(directory) / STATE_FILE)


def load_state(
    directory: Path,
    *,
    model: nn.Module,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> None:
    """Restore what `save_state` wrote; a checkpoint from another model is an error naming the mismatch."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {STATE_FILE}; not a plain-PyTorch seagrid checkpoint")
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


class Checkpoints(Protocol):
    """Where a training loop reports metrics and saves or finds checkpoints."""

    def latest(self) -> contextlib.AbstractContextManager[Path | None]: ...

    def report(self, message: dict[str, Any], write: Callable[[Path], None] | None = None) -> None: ...


class RayCheckpoints:
    """Inside a Ray Train worker: metrics via `ray.train.report`, checkpoints in the run's storage.

    A relaunched TorchTrainer with the same run name and storage path finds its latest checkpoint through
    `ray.train.get_checkpoint()`. Every rank reports and writes its part of a checkpoint; Ray merges the
    ranks' folders into one.
    """

    def __init__(self, rank: int, storage: str | None = None) -> None:
        self.rank = rank
        self.storage = storage or "~/ray_results"  # Ray's default storage_path

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

        if write is None:
            ray.train.report({"seagrid": message})
            return
        with tempfile.TemporaryDirectory() as tmp:
            with naming_full_disk(tmp, f"checkpoint at step {message.get('step')} (local copy)"):
                write(Path(tmp))
            storage = Path(self.storage).expanduser()
            with naming_full_disk(storage, f"checkpoint at step {message.get('step')} (run storage)"):
                ray.train.report({"seagrid": message}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class LocalCheckpoints:
    """Outside Ray (tests, notebooks): messages kept in a list, checkpoints as numbered folders, the
    `keep` newest of them kept (all when None)."""

    def __init__(self, root: Path | None = None, keep: int | None = None) -> None:
        self.root = Path(root) if root else None
        self.keep = keep
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
            # The previous checkpoint stays the latest until this one is complete (rename).
            with naming_full_disk(tmp, f"checkpoint at step {message['step']}"):
                write(tmp)
            tmp.rename(target)
            prune_checkpoints(self.root, self.keep)


def prune_checkpoints(root: Path, keep: int | None, pattern: str = "checkpoint-*") -> list[Path]:
    """Delete all but the `keep` newest complete checkpoint folders under `root` (names sort by step);
    returns the deleted ones. Called only after a new checkpoint is complete, so the latest survives."""
    if keep is None:
        return []
    found = sorted(p for p in Path(root).glob(pattern) if p.is_dir())
    old = found[: max(0, len(found) - keep)]
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return old

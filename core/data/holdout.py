"""A stage's held-out split: which samples are never trained on, fixed by the dataset and a seed alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from core.config import DatasetConfig
from core.config.heldout import HeldoutConfig
from core.config.identity import content_hash, identity_dict


def split_seed(data: DatasetConfig, heldout: HeldoutConfig, num_samples: int) -> int:
    """The split's seed: the dataset's identity, its size and `heldout.seed`; deliberately not the trial's
    seed nor anything a search varies, so every trial of a search holds out the same samples."""
    key = {
        "data": identity_dict(data),
        "samples": num_samples,
        "seed": heldout.seed,
        "fraction": heldout.fraction,
    }
    return int(content_hash(key, 15), 16)


def split_indices(
    data: DatasetConfig, heldout: HeldoutConfig, num_samples: int
) -> tuple[list[int], list[int]]:
    """(train, held-out) sample positions, each ascending; held out: round(fraction x n), at least one
    when the fraction is positive, always leaving at least one to train on."""
    if not heldout.active:
        return list(range(num_samples)), []
    count = min(num_samples - 1, max(1, round(heldout.fraction * num_samples)))
    generator = torch.Generator().manual_seed(split_seed(data, heldout, num_samples))
    order = torch.randperm(num_samples, generator=generator).tolist()
    held = sorted(order[:count])
    chosen = set(held)
    return [i for i in range(num_samples) if i not in chosen], held


class Part(Dataset):
    """Some positions of a dataset (the training part or the held-out part of a split).

    `records` are the chosen records of the LLaVA dataset underneath (a labelled dataset's `.dataset`),
    so the length-grouped sampler orders this part alone."""

    def __init__(self, base: Any, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.base[self.indices[index]]

    @property
    def records(self) -> list[dict[str, Any]]:
        inner = getattr(self.base, "dataset", self.base)
        return [inner.records[i] for i in self.indices]


def split_dataset(base: Any, data: DatasetConfig, heldout: HeldoutConfig) -> tuple[Any, Part | None]:
    """(what the stage trains on, the held-out part or None); `base` itself when nothing is held out."""
    if not heldout.active:
        return base, None
    train, held = split_indices(data, heldout, len(base))
    if heldout.max_samples is not None:
        held = held[: heldout.max_samples]
    return Part(base, train), Part(base, held)

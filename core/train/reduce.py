"""Averaging logged metrics over the ranks of a trial: one stacked all-reduce on the training device."""

from __future__ import annotations

import torch
import torch.distributed as dist


def mean_across_ranks(metrics: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """The mean of each metric over `world` ranks; the input itself when there is one rank.

    A collective: every rank must call it at the same point with the same keys. The values travel as one
    float64 tensor on `device`, the worker's training device: Ray Train makes the process group plain
    "nccl" on GPU workers (ray/train/torch/config.py, `on_start`), and NCCL reduces only device tensors.
    """
    if world == 1:
        return dict(metrics)
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: v / world for k, v in zip(keys, values.tolist(), strict=True)}

"""Metrics averaged over ranks: two real processes over gloo against the hand-computed mean."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.train.reduce import mean_across_ranks

# What each of the two ranks logs at one step (keys in a different order on each rank).
RANK_METRICS = [
    {"loss": 2.5, "sea/align": 0.25, "lm": 1.0},
    {"lm": 3.0, "loss": 1.5, "sea/align": -0.75},
]
# Hand-computed: (2.5 + 1.5) / 2, (0.25 - 0.75) / 2, (1.0 + 3.0) / 2.
EXPECTED = {"loss": 2.0, "sea/align": -0.25, "lm": 2.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, results: dict[int, dict[str, float]]) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(RANK_METRICS)
    )
    try:
        results[rank] = mean_across_ranks(RANK_METRICS[rank], len(RANK_METRICS), torch.device("cpu"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_two_ranks_agree_on_the_mean() -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), results), nprocs=len(RANK_METRICS), join=True)
        got = dict(results)
    assert got[0] == got[1] == EXPECTED


def test_one_rank_is_the_identity_without_a_process_group() -> None:
    metrics = {"loss": 0.125, "lm": 3.0}
    out = mean_across_ranks(metrics, 1, torch.device("cpu"))
    assert out == metrics and out is not metrics

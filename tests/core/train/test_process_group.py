"""resources.nccl_timeout_minutes is the stage's process-group timeout (core/train/process_group.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import ResourcesConfig
from core.train.process_group import torch_config


def test_the_default_waits_an_hour() -> None:
    assert torch_config(ResourcesConfig()).timeout_s == 3600


@pytest.mark.slow
def test_a_stalled_rank_fails_the_collective_after_the_setting(tmp_path: Path, ray_session) -> None:
    """Two gloo ranks, one stalled for 120 s: with a 6 s timeout rank 0's collective fails long before the
    stall ends (Ray's default would wait 30 minutes)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    def _loop(config: dict) -> None:  # defined here: pickled by value (workers cannot import tests)
        import time

        import ray.train
        import torch
        import torch.distributed as dist

        if ray.train.get_context().get_world_rank() == 1:
            time.sleep(config["stall_s"])  # rank 0 waits for it in the collective
        t0 = time.time()
        try:
            dist.all_reduce(torch.ones(1))
        finally:
            with open(config["out"], "a") as f:
                f.write(f"{time.time() - t0:.1f}\n")

    trainer = TorchTrainer(
        _loop,
        train_loop_config={"stall_s": 120, "out": str(tmp_path / "waited.txt")},
        torch_config=torch_config(ResourcesConfig(nccl_timeout_minutes=0.1)),
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="timeout", storage_path=str(tmp_path)),
    )
    with pytest.raises(Exception, match="(?i)timed? ?out"):
        trainer.fit()
    waited = [float(x) for x in (tmp_path / "waited.txt").read_text().split()]
    assert waited and min(waited) < 60, waited  # rank 0 gave up after about 6 s

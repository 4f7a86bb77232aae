"""A stage whose loss goes NaN or infinite stops at once, naming the step and the term; running out of GPU
memory names the settings that lower the peak."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.config import TrialConfig
from core.train.checkpoint import LocalCheckpoints
from core.train.job import NonFiniteLoss, StageOutOfMemory, make_stage_job
from core.train.loop import check_finite
from core.train.stage import out_of_memory_message, run_stage


def tiny(lr: float) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "data": {"stage1": {"source": "synthetic", "synthetic": {"num_samples": 32, "seed": 3}}},
            "stage1": {
                "lr": lr,
                "global_batch_size": 8,
                "micro_batch_size": 8,
                "epochs": 4,
                "warmup_ratio": 0.0,
            },
        }
    )


def test_check_finite_names_the_stage_step_and_term() -> None:
    check_finite({"loss": 1.0, "loss/align": 0.5}, "stage1", 3)
    with pytest.raises(NonFiniteLoss, match=r"stage1 step 7: loss/align = nan.*stage1.lr"):
        check_finite({"loss": 1.0, "loss/align": float("nan")}, "stage1", 7)
    with pytest.raises(NonFiniteLoss, match="loss = inf"):
        check_finite({"loss": float("inf")}, "stage2", 1)


def test_an_exploding_run_stops_at_the_first_non_finite_loss(tmp_path: Path) -> None:
    job = make_stage_job(tiny(1e30), "stage1", tmp_path / "out")
    (tmp_path / "out").mkdir()
    checkpoints = LocalCheckpoints()
    with pytest.raises(NonFiniteLoss, match=r"stage1 step \d+: loss"):
        run_stage(job, checkpoints=checkpoints)
    assert not (tmp_path / "out" / "result.json").exists()  # no result pretends the stage finished


def test_out_of_memory_names_the_settings_that_lower_it(tmp_path: Path, monkeypatch) -> None:
    job = make_stage_job(tiny(1e-3), "stage1", tmp_path / "out")
    (tmp_path / "out").mkdir()
    text = out_of_memory_message(job, "CUDA out of memory. Tried to allocate 2.00 GiB")
    for setting in (
        "micro_batch_size (now 8",
        "gradient_checkpointing",
        "deepspeed.zero",
        "deepspeed.offload",
    ):
        assert f"stage1.{setting}" in text
    assert "Tried to allocate 2.00 GiB" in text and "gpu_memory_gb (80)" in text

    # A GPU's out-of-memory cannot happen on a CPU: raise the real exception type where a step would.
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr("core.train.steppers.TrainModule.forward", oom)
    with pytest.raises(StageOutOfMemory, match=r"stage1 ran out of GPU memory \(CUDA out of memory"):
        run_stage(job, checkpoints=LocalCheckpoints())

"""Checkpoints: a stage-1 run killed part-way and relaunched ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.pipeline import prepare_labels
from core.train.checkpoint import LocalCheckpoints
from core.train.job import StageJob, StepBudgetReached, make_stage_job
from core.train.stage import run_stage
from grid.spec import TrialConfig


def payload(tmp_path: Path, name: str, method: dict, **extra) -> StageJob:
    order = method.pop("group_by_length", "off")
    workers = method.pop("loader_workers", None)
    cfg = TrialConfig.model_validate(
        {
            "method": method,
            "data": {"stage1": {"source": "synthetic", "synthetic": {"num_samples": 40, "seed": 21}}},
            # 40 samples, micro 4, accumulation 2 -> 5 steps per epoch; 2 epochs -> 10 steps, so a
            # checkpoint at step 4 sits inside an epoch and resuming must skip the batches already used.
            "stage1": {
                "lr": 0.01,
                "global_batch_size": 8,
                "micro_batch_size": 4,
                "epochs": 2,
                "checkpoint_every": 4,
                "group_by_length": order,
                "loader_workers": workers,
            },
        }
    )
    step_dir = tmp_path / name
    step_dir.mkdir()
    labels = prepare_labels(cfg, tmp_path / "steps") if method["name"] == "sea" else None
    return make_stage_job(cfg, "stage1", step_dir, labels_dir=labels, **extra)


@pytest.mark.parametrize(
    "method",
    [
        {"name": "llava"},
        {"name": "sea", "sea": {"top_n": 3}},
        {"name": "llava", "group_by_length": "length"},  # the length-grouped sampler resumes exactly too
        {"name": "llava", "loader_workers": 2},  # worker processes fetch; the skip stays in the sampler
    ],
)
@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_resume_gives_identical_weights(tmp_path: Path, method: dict) -> None:
    method = dict(method)
    order = method.pop("group_by_length", "off")
    workers = method.pop("loader_workers", None)
    loader = {"group_by_length": order, "loader_workers": workers}
    run = lambda name, **kw: payload(tmp_path, name, {**method, **loader}, **kw)  # noqa: E731
    straight = LocalCheckpoints(tmp_path / "ckpt-straight")
    result = run_stage(run("straight"), checkpoints=straight)
    assert result["steps"] == 10

    ckpts = LocalCheckpoints(tmp_path / "ckpt-resumed")
    with pytest.raises(StepBudgetReached, match="stopped at step 6"):
        run_stage(run("killed", step_budget=6), checkpoints=ckpts)
    assert [p.name for p in sorted((tmp_path / "ckpt-resumed").glob("checkpoint-*"))] == [
        "checkpoint-00000004"
    ]

    # The relaunch starts from step 4 (the latest checkpoint), not from scratch.
    relaunch = LocalCheckpoints(tmp_path / "ckpt-resumed")
    resumed = run_stage(run("resumed"), checkpoints=relaunch)
    assert [m["step"] for m in relaunch.messages] == list(range(5, 11))

    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["final_loss"] == result["final_loss"]
    assert resumed["first_loss"] == result["first_loss"]
    assert (result["resumed_from_step"], resumed["resumed_from_step"]) == (0, 4)
    if method["name"] == "sea":
        tau_a = torch.load(tmp_path / "straight" / "objective.pt")["log_tau"]
        tau_b = torch.load(tmp_path / "resumed" / "objective.pt")["log_tau"]
        assert torch.equal(tau_a, tau_b)

"""checkpoint_keep: a stage keeps only its newest checkpoints (Ray Train's storage and plain folders),
and still resumes from the latest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.train.checkpoint import LocalCheckpoints
from grid.spec import TrialConfig


def _cfg(keep: int) -> TrialConfig:
    # 64 samples, micro = global = 8: 8 steps an epoch; max_steps 7 with a checkpoint after every step
    # but the last gives 6 checkpoints by step 6.
    return TrialConfig.model_validate(
        {
            "data": {"stage1": {"source": "synthetic", "synthetic": {"num_samples": 64, "seed": 3}}},
            "stage1": {
                "lr": 0.01,
                "global_batch_size": 8,
                "micro_batch_size": 8,
                "max_steps": 7,
                "checkpoint_every": 1,
                "checkpoint_keep": keep,
            },
        }
    )


def test_plain_checkpoints_keep_the_newest(tmp_path: Path) -> None:
    ckpts = LocalCheckpoints(tmp_path, keep=2)
    for step in range(1, 7):
        ckpts.report({"step": step}, write=lambda d, s=step: (d / "state.txt").write_text(str(s)))
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["checkpoint-00000005", "checkpoint-00000006"]
    with ckpts.latest() as latest:
        assert latest is not None and (latest / "state.txt").read_text() == "6"


@pytest.mark.slow
def test_a_ray_stage_keeps_two_of_six_checkpoints_and_resumes_from_the_latest(
    tmp_path: Path, ray_session
) -> None:
    from core.train.job import make_stage_job
    from core.train.launch import fit_stage

    cfg, storage = _cfg(keep=2), tmp_path / "ray-runs"
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = make_stage_job(
        cfg, "stage1", tmp_path / "first", run_name="keep-test", storage_path=str(storage), step_budget=6
    )
    with pytest.raises(Exception, match="stopped at step 6"):
        fit_stage(first)
    kept = sorted(p for p in storage.rglob("checkpoint_*") if p.is_dir())
    assert len(kept) == 2, kept
    steps = sorted(json.loads((p / "position.json").read_text())["step"] for p in kept)
    assert steps == [5, 6]

    second = make_stage_job(
        cfg, "stage1", tmp_path / "second", run_name="keep-test", storage_path=str(storage)
    )
    fit_stage(second)
    result = json.loads((tmp_path / "second" / "result.json").read_text())
    assert result["resumed_from_step"] == 6 and result["steps"] == 7

"""A trial's step graph (pure) and the plan's view of its steps."""

from __future__ import annotations

from pathlib import Path

from core.config import TrialConfig
from core.pipeline import trial_steps
from core.steps import materialize
from grid.expand import Trial
from grid.plan_steps import steps_of_trials, steps_text


def cfg(**over) -> TrialConfig:
    return TrialConfig.model_validate(over)


def names(c: TrialConfig) -> list[str]:
    return [s.name for s in trial_steps(c).all()]


def test_graph_shapes():
    assert names(cfg()) == ["stage1"]
    assert names(cfg(eval={"enabled": True}, stage2={"enabled": True})) == [
        "stage1",
        "eval-stage1",
        "stage2",
        "eval-stage2",
    ]
    assert names(cfg(method={"name": "sea"})) == ["labels", "stage1"]
    dino = cfg(model={"encoder": "tiny-dinov2"}, method={"name": "sea", "sea": {"labels_from": "tiny-clip"}})
    assert names(dino) == ["labels", "labels-transfer", "stage1", "export-stage1"]  # an HF tower exports
    steps = trial_steps(dino)
    assert steps.stages["stage1"].dep("labels-transfer").dep("labels") == steps.labels[0]
    assert steps.labels[1].config.grid == (4, 4)


def test_stage1_hash_follows_its_label_step():
    a = trial_steps(cfg(method={"name": "sea", "sea": {"words": {"min_count": 2}}}))
    b = trial_steps(cfg(method={"name": "sea", "sea": {"words": {"min_count": 3}}}))
    assert a.labels[0].hash != b.labels[0].hash
    assert a.stages["stage1"].hash != b.stages["stage1"].hash
    # Settings that only say how labels are computed (batch size) change nothing.
    c = trial_steps(cfg(method={"name": "sea", "sea": {"label_batch_size": 7}}))
    assert c.stages["stage1"].hash == trial_steps(cfg(method={"name": "sea"})).stages["stage1"].hash


def test_trials_that_compute_the_same_stage_share_its_step():
    llava = trial_steps(cfg())
    basic_stage2_only = trial_steps(cfg(method={"name": "basic", "basic": {"stage1": False}}))
    basic = trial_steps(cfg(method={"name": "basic"}))
    assert llava.stages["stage1"].dirname == basic_stage2_only.stages["stage1"].dirname
    assert llava.stages["stage1"].dirname != basic.stages["stage1"].dirname
    # Resources and logging never rename a step.
    other = trial_steps(cfg(resources={"num_workers": 2}, stage1={"log_every": 5, "global_batch_size": 256}))
    assert other.stages["stage1"].dirname == llava.stages["stage1"].dirname


def test_plan_statuses(tmp_path: Path):
    sea = Trial(id="sea-1", config=cfg(method={"name": "sea"}), axes={})
    sea2 = Trial(id="sea-2", config=cfg(method={"name": "sea", "sea": {"align_weight": 2.0}}), axes={})
    labels = trial_steps(sea.config).labels[0]
    materialize(labels, tmp_path, lambda out: None)
    got = steps_of_trials([sea, sea2], tmp_path, {"sea-1": "done", "sea-2": "new"})
    assert steps_text(got["sea-1"]) == "labels:done stage1:new"
    assert [r["status"] for r in got["sea-2"]] == ["reused", "new"]
    third = Trial(id="sea-3", config=sea2.config, axes={"seed": 1})
    got = steps_of_trials([sea2, third], tmp_path, {})
    assert got["sea-3"][1]["status"] == "shared (sea-2)"

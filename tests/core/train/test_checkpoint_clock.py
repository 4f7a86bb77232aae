"""When checkpoints are due: by steps, by time, never at the end; the settings' defaults."""

from __future__ import annotations

from core.config import TrialConfig
from core.config.identity import identity_dict
from core.train.checkpoint_clock import checkpoint_due


def test_due_by_steps_or_by_time_never_at_the_end() -> None:
    due = [s for s in range(1, 11) if checkpoint_due(s, 10, every=4, minutes=None, elapsed_s=1e9)]
    assert due == [4, 8]
    assert checkpoint_due(3, 10, every=None, minutes=30, elapsed_s=30 * 60)
    assert not checkpoint_due(3, 10, every=None, minutes=30, elapsed_s=30 * 60 - 1)
    assert not checkpoint_due(10, 10, every=5, minutes=1, elapsed_s=1e9)  # the outputs are saved then
    assert not checkpoint_due(3, 10, every=None, minutes=None, elapsed_s=1e9)


def test_defaults_keep_two_and_save_hourly_without_changing_ids() -> None:
    cfg = TrialConfig()
    assert (cfg.stage1.checkpoint_keep, cfg.stage1.checkpoint_minutes) == (2, 60)
    assert (cfg.stage2.checkpoint_keep, cfg.stage2.checkpoint_minutes) == (2, 60)
    other = TrialConfig.model_validate({"stage1": {"checkpoint_keep": 5, "checkpoint_minutes": None}})
    assert identity_dict(other) == identity_dict(cfg)

"""The plan's GPU-hours estimate against a hand-worked number."""

from __future__ import annotations

import pytest

from grid.estimate import estimate_stage


def test_vicuna_7b_stage1_by_hand() -> None:
    # 558,128 samples x (576 + 64) tokens = 357,201,920 tokens; x 4 x 6.74e9 = 9.63e18 FLOPs;
    # / (312e12 x 0.35) = 88,197 s = 24.5 GPU-hours.
    est = estimate_stage("stage1", 6.738415616e9, 558128, 576, 1.0)
    assert est.tokens == 558128 * 640
    assert est.gpu_hours == pytest.approx(4 * 6.738415616e9 * 558128 * 640 / (312e12 * 0.35) / 3600)
    assert est.gpu_hours == pytest.approx(24.5, abs=0.1)


def test_stage2_costs_more_per_token_and_scales_with_epochs() -> None:
    one = estimate_stage("stage2", 7e9, 1000, 576, 1.0)
    two = estimate_stage("stage2", 7e9, 1000, 576, 2.0)
    assert two.flops == pytest.approx(2 * one.flops)
    assert one.flops == pytest.approx(6 * 7e9 * 1000 * 976)


def test_checkpointing_adds_a_forward() -> None:
    # Stage 1: 4 N -> 6 N FLOPs per token; stage 2: 6 N -> 8 N.
    for stage, ratio in (("stage1", 6 / 4), ("stage2", 8 / 6)):
        plain = estimate_stage(stage, 7e9, 1000, 576, 1.0)
        ckpt = estimate_stage(stage, 7e9, 1000, 576, 1.0, checkpointing=True)
        assert ckpt.flops == pytest.approx(ratio * plain.flops)

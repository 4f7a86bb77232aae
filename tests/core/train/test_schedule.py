"""The LR schedule against Hugging Face's implementation (what LLaVA's trainer uses) and hand values."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from core.train.schedule import cosine_with_warmup, warmup_steps
from core.train.setup_data import plan_steps


@pytest.mark.parametrize(("total", "ratio"), [(100, 0.03), (7, 0.0), (32, 0.1), (1, 0.03)])
def test_matches_transformers(total: int, ratio: float) -> None:
    warm = warmup_steps(total, ratio)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = get_cosine_schedule_with_warmup(opt, warm, total)
    for step in range(total):
        assert cosine_with_warmup(step, total, warm) == pytest.approx(ref.get_last_lr()[0], abs=1e-12)
        opt.step()
        ref.step()


def test_hand_values() -> None:
    assert warmup_steps(100, 0.03) == 3
    assert cosine_with_warmup(0, 100, 3) == 0.0
    assert cosine_with_warmup(3, 100, 3) == 1.0
    assert cosine_with_warmup(3 + 97 // 2, 100, 3) == pytest.approx(0.5 * (1 + math.cos(math.pi * 48 / 97)))
    assert cosine_with_warmup(100, 100, 3) == 0.0


def test_plan_steps() -> None:
    # 96 samples, micro 8, 1 worker, global 16 -> accumulation 2, 6 steps per epoch.
    assert plan_steps(96, 8, 1, 16, 1.0, None) == (2, 6)
    assert plan_steps(96, 8, 2, 16, 2.0, None) == (1, 12)
    assert plan_steps(96, 8, 1, 16, 0.5, None) == (2, 3)
    assert plan_steps(96, 8, 1, 16, 3.0, 4) == (2, 4)
    with pytest.raises(ValueError, match="global_batch_size"):
        plan_steps(10, 8, 1, 16, 1.0, None)

"""Learning-rate schedule of the LLaVA recipe: linear warmup then cosine decay to zero."""

from __future__ import annotations

import math


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warmup length as HF Trainer computes it from a ratio: ceil(ratio * total)."""
    return math.ceil(warmup_ratio * total_steps)


def cosine_with_warmup(step: int, total_steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based), as HF's Trainer (LLaVA)."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total_steps - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

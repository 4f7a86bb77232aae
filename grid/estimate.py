"""Rough GPU-hours of a trial, for the plan table (stated assumptions, not a measurement)."""

from __future__ import annotations

from dataclasses import dataclass

from core.stages import STAGES

# Assumptions (README, "GPU-hours estimate"): an A100-class GPU at 312 TFLOP/s bf16 peak, 35% model
# FLOPs utilisation; each stage's k and typical text length are in core.stages.STAGES.
PEAK_FLOPS = 312e12
MFU = 0.35
# Gradient checkpointing runs each layer's forward once more in backward: +2 N FLOPs per token.
RECOMPUTE_FLOPS_PER_PARAM_TOKEN = 2.0


@dataclass(frozen=True)
class StageEstimate:
    """FLOPs and GPU-hours of one stage."""

    tokens: float
    flops: float
    gpu_hours: float


def estimate_stage(
    stage: str,
    llm_params: float,
    num_samples: int,
    visual_tokens: int,
    epochs: float,
    *,
    checkpointing: bool = False,
) -> StageEstimate:
    """tokens = samples x epochs x (visual + text tokens); FLOPs = k x N x tokens (k + 2 with gradient
    checkpointing); hours = FLOPs / (peak x MFU)."""
    kind = STAGES[stage]
    tokens = num_samples * epochs * (visual_tokens + kind.text_tokens)
    k = kind.flops_per_param_token + (RECOMPUTE_FLOPS_PER_PARAM_TOKEN if checkpointing else 0.0)
    flops = k * llm_params * tokens
    return StageEstimate(tokens, flops, flops / (PEAK_FLOPS * MFU) / 3600)

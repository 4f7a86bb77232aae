"""Rough GPU-hours of a trial, for the plan table (stated assumptions, not a measurement)."""

from __future__ import annotations

from dataclasses import dataclass

# Assumptions (README, "GPU-hours estimate"): an A100-class GPU at 312 TFLOP/s bf16 peak, 35% model
# FLOPs utilisation, and the text length of a typical sample in each stage of the LLaVA-1.5 data.
PEAK_FLOPS = 312e12
MFU = 0.35
TEXT_TOKENS = {"stage1": 64, "stage2": 400}
# Stage 1 backpropagates through the frozen LLM's activations only (no weight gradients): ~4 N FLOPs per
# token; stage 2 trains the LLM: ~6 N.
FLOPS_PER_PARAM_TOKEN = {"stage1": 4.0, "stage2": 6.0}
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
    tokens = num_samples * epochs * (visual_tokens + TEXT_TOKENS[stage])
    k = FLOPS_PER_PARAM_TOKEN[stage] + (RECOMPUTE_FLOPS_PER_PARAM_TOKEN if checkpointing else 0.0)
    flops = k * llm_params * tokens
    return StageEstimate(tokens, flops, flops / (PEAK_FLOPS * MFU) / 3600)

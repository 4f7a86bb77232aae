"""The methods as one registry: each is a sum of parts, and each part declares the metrics it logs.

A part is one objective term (core/methods/*: SEA's alignment loss, BASIC's self-distillation); its
metric names are written here once, read by the objective that logs them (under `<stage>/`), by the
search checks (which metrics a trial reports) and by reports. Torch-free: planning reads it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodPart:
    """One objective term: `metrics` are what it logs every step, relative to `<stage>/`."""

    name: str
    metrics: tuple[str, ...]


# Every stage's objective logs the total and the language-modelling loss (the baseline, LLaVA-1.5's).
TOTAL_LOSS, LM_LOSS = "loss", "loss/lm"
BASE_METRICS = (TOTAL_LOSS, LM_LOSS)
# What a stage reports beside its objective's terms: its throughput every log step, its total loss at the end.
SPEED = "samples_per_s"
FINAL_LOSS = "final_loss"


def stage_metric(stage: str, name: str) -> str:
    """The full name a stage logs `name` under (`stage1/loss/lm`)."""
    return f"{stage}/{name}"


SEA = MethodPart("sea", metrics=("loss/align", "tau", "pairs"))
BASIC = MethodPart("basic", metrics=("loss/das", "loss/sds"))
PARTS: dict[str, MethodPart] = {p.name: p for p in (SEA, BASIC)}

# Each method is the sum of its parts; a stage where no part applies trains with the baseline objective.
METHOD_PARTS: dict[str, tuple[str, ...]] = {
    "llava": (),
    "sea": ("sea",),
    "basic": ("basic",),
    "sea+basic": ("sea", "basic"),
}


def methods_with(part: str) -> tuple[str, ...]:
    """The methods that include `part`."""
    return tuple(m for m, parts in METHOD_PARTS.items() if part in parts)


METHODS = tuple(METHOD_PARTS)
METHODS_WITH_SEA = methods_with(SEA.name)
METHODS_WITH_BASIC = methods_with(BASIC.name)

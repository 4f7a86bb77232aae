"""The evaluation's metric names, written once: diagnostics, benchmark prefixes (torch-free: grid reads it)."""

from __future__ import annotations

from core.stages import STAGES

# The alignment diagnostics (REFERENCE.md 4), in the order reports show them.
LABEL_RECALL, TACS, MODALITY_GAP = "label_recall", "tacs", "modality_gap"
DIAGNOSTICS = (LABEL_RECALL, TACS, MODALITY_GAP)


def diag_name(metric: str, stage: str = "stage1") -> str:
    """`diag/<metric>` after stage 1 (continuing its training curve), `diag/<metric>/after_stage2` after
    stage 2."""
    return f"diag/{metric}{STAGES[stage].diag_suffix}"


def metric_prefix(name: str, final: bool) -> str:
    """`eval/<name>` for the trial's final model, `eval/<name>/before_stage2` after a non-final stage 1."""
    return f"eval/{name}" if final else f"eval/{name}/before_stage2"

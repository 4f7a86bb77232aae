"""Evaluation settings (defined in core.config.evaluation) and the synthetic set they describe."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.config.evaluation import (
    FILE_FIELDS,
    OPTIONAL_FILES,
    REQUIRED_FILES,
    BenchmarkConfig,
    BenchmarkKind,
    DiagnosticsConfig,
    EvalConfig,
    SyntheticEvalConfig,
)

if TYPE_CHECKING:
    from core.data.synthetic_eval import SyntheticEvalSpec

__all__ = [
    "FILE_FIELDS",
    "OPTIONAL_FILES",
    "REQUIRED_FILES",
    "BenchmarkConfig",
    "BenchmarkKind",
    "DiagnosticsConfig",
    "EvalConfig",
    "SyntheticEvalConfig",
    "synthetic_spec",
]


def synthetic_spec(eval_cfg: EvalConfig) -> SyntheticEvalSpec:
    """The synthetic evaluation set these settings describe (held-out size from diagnostics)."""
    from core.data.synthetic_eval import SyntheticEvalSpec

    s = eval_cfg.synthetic
    return SyntheticEvalSpec(
        seed=s.seed,
        image_size=s.image_size,
        max_objects=s.max_objects,
        num_images=s.num_images,
        num_heldout=eval_cfg.diagnostics.heldout_samples,
        num_text_questions=s.num_text_questions,
    )

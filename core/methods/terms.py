"""What each method's objective is made of, as data: which logged metrics contain which weighted term, and
which quantities a method trains directly (read by the search guard: a knob must not grade itself)."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import METHODS_WITH_BASIC, METHODS_WITH_SEA
from core.config.methods import FINAL_LOSS, LM_LOSS, TOTAL_LOSS, stage_metric

STAGE_NAMES = ("stage1", "stage2")


@dataclass(frozen=True)
class MethodTerms:
    """One method part's loss terms.

    `weights`: config path of each weight -> the per-stage metric of the term it scales (`loss/<term>`);
    every stage's total `loss` (and its `final_loss`) contains each of them. `trained`: metrics (with a
    `{stage}` placeholder for per-stage ones) that the part's loss pushes up or down directly, so every
    setting under `knobs` (the part's config section) can move them whatever the model learns. `stages`:
    where the part trains (SEA: stage 1 only, while the LLM is frozen).
    """

    weights: dict[str, str]
    trained: tuple[str, ...]
    knobs: str
    stages: tuple[str, ...]


# Declared next to the objectives (core/methods/sea_objective.py: L = L_g + align_weight * L_a;
# core/methods/basic_objective.py: L = L_lm + das_weight * L_das + sds_weight * L_sds).
SEA_TERMS = MethodTerms(
    weights={"method.sea.align_weight": "loss/align"},
    # L_a pulls each visual token towards its labels' word embeddings (and learns tau): the loss itself,
    # label recall (labels among a token's nearest words), the modality gap (distance to the nearest word)
    # and TACS (similarity to the caption's words) all measure what it optimises.
    trained=(
        "{stage}/loss/align",
        "{stage}/tau",
        *(f"diag/{d}{s}" for d in ("label_recall", "modality_gap", "tacs") for s in ("", "/after_stage2")),
    ),
    knobs="method.sea.",
    stages=("stage1",),
)
BASIC_TERMS = MethodTerms(
    weights={"method.basic.das_weight": "loss/das", "method.basic.sds_weight": "loss/sds"},
    trained=("{stage}/loss/das", "{stage}/loss/sds"),
    knobs="method.basic.",
    stages=STAGE_NAMES,
)
# L_lm alone is every method's (and the baseline's) common ground: no method weight scales it.
LM_TERM = LM_LOSS

METHOD_TERMS: dict[str, tuple[MethodTerms, ...]] = {
    name: tuple(
        t
        for t, members in ((SEA_TERMS, METHODS_WITH_SEA), (BASIC_TERMS, METHODS_WITH_BASIC))
        if name in members
    )
    for name in ("llava", "sea", "basic", "sea+basic")
}


def weighted_metrics(terms: MethodTerms, weight: str) -> set[str]:
    """The metrics that contain the term `weight` scales: the term's own, and each stage's total loss."""
    term = terms.weights[weight]
    out: set[str] = set()
    for stage in terms.stages:
        out |= {
            f"{stage}/{term}",
            stage_metric(stage, TOTAL_LOSS),
            stage_metric(stage, FINAL_LOSS),
            f"{stage}/final_{term.replace('/', '_')}",
        }
    return out


def trained_metrics(terms: MethodTerms) -> set[str]:
    """The metrics the part trains directly, per stage it trains in."""
    out: set[str] = set()
    for name in terms.trained:
        stages = terms.stages if "{stage}" in name else ("",)
        for stage in stages:
            metric = name.format(stage=stage)
            out |= {metric, metric.replace("/loss/", "/final_loss_") if "{stage}" in name else metric}
    return out

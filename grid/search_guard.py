"""The search guard: a search may not grade its knobs by a metric they scale or train directly (a total loss
with a method weight in the space, SEA's label recall with SEA's knobs in the space); refused at load time,
unless the spec acknowledges it in `search.accept_gameable_metric` (logged to the search's MLflow run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.config import TrialConfig
from core.methods.terms import LM_TERM, METHOD_TERMS, trained_metrics, weighted_metrics


class GameableMetricError(ValueError):
    """A search graded by a metric its knobs game, not acknowledged; the message says why and what serves."""


@dataclass(frozen=True)
class Gameable:
    """Why a metric cannot judge a searched knob: the knob and the sentence that says why."""

    knob: str
    why: str


def gameable(metric: str, space: list[str], cfg: TrialConfig) -> list[Gameable]:
    """Every searched knob that moves `metric` by construction in a trial of `cfg`."""
    out: list[Gameable] = []
    for terms in METHOD_TERMS[cfg.method.name]:
        for weight, term in terms.weights.items():
            if weight in space and metric in weighted_metrics(terms, weight):
                out.append(Gameable(weight, f"it contains {weight} x L_{term.split('/')[-1]}"))
        if metric in trained_metrics(terms):
            why = f"{terms.knobs}* shape the loss that trains this metric directly"
            out += [Gameable(knob, why) for knob in space if knob.startswith(terms.knobs)]
    return out


def fair_metrics(cfg: TrialConfig, reported: set[str], space: list[str]) -> list[str]:
    """Reported metrics no searched knob can game, the held-out and benchmark ones first."""
    fair = sorted(m for m in reported if not gameable(m, space, cfg))

    def rank(m: str) -> tuple[int, str]:
        if "/heldout/" in m:
            return (0, m)
        if m.startswith("eval/"):
            return (1, m)
        return (2 if m.endswith(LM_TERM) else 3, m)

    return sorted(fair, key=rank)[:6]


def check_gameable(search: Any, cfg: TrialConfig, reported: set[str], where: str) -> str | None:
    """None when the metric is fair; the reason when the spec acknowledged it; else GameableMetricError."""
    space = list(search.space)
    found = gameable(search.metric, space, cfg)
    if not found:
        return None
    by_why: dict[str, list[str]] = {}
    for g in found:
        by_why.setdefault(g.why, []).append(g.knob)
    reason = f"'{search.metric}' rewards the searched knobs by construction: " + "; ".join(
        f"{', '.join(knobs)} ({why})" for why, knobs in by_why.items()
    )
    if search.accept_gameable_metric:
        return reason
    serve = ", ".join(fair_metrics(cfg, reported, space)) or "a held-out or benchmark metric"
    raise GameableMetricError(
        f"{where}: {reason}. Use a metric the knobs cannot game, e.g. {serve} (set "
        "stage1.heldout / stage2.heldout for a held-out L_lm), or set search.accept_gameable_metric to a "
        "sentence saying why this one is wanted (logged to the search's MLflow run)"
    )


OVERRIDE_TAG = "seagrid.guard_override"
REASON_TAG = "seagrid.guard_reason"


def log_guard_override(
    tracker: Any, run_id: str, search: Any, cfg: TrialConfig, reported: set[str], metrics: list[str]
) -> str | None:
    """On a search the guard let through by acknowledgement: the acknowledgement and the guard's reason
    (for each of `metrics`, the objective and the rung metric) as tags of the search's MLflow run; returns
    the reason. `reported`: the metrics a trial of `cfg` reports."""
    if not search.accept_gameable_metric:
        return None
    reasons = [
        r
        for m in dict.fromkeys(metrics)
        if (r := check_gameable(search.model_copy(update={"metric": m}), cfg, reported, "search")) is not None
    ]
    reason = "; ".join(reasons) or "the guard found nothing to override"
    tracker.client.set_tag(run_id, OVERRIDE_TAG, search.accept_gameable_metric)
    tracker.client.set_tag(run_id, REASON_TAG, reason[:5000])
    return reason

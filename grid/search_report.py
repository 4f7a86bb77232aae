"""Reading a finished search: each trial's other held-out and benchmark numbers, the metric against each
knob, and how much the best trial beats the base config's own values (the paper's default, run as the
search's first trial)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console

from grid.search_spec import base_point

VS_DEFAULT_FILE = "vs_default.json"
KNOBS_FILE = "metric_by_knob.json"
RETAINED_FROM = "/before_stage2"


def is_default(row: dict[str, Any], point: dict[str, Any]) -> bool:
    """Whether a trial ran exactly the base config's values."""
    return bool(point) and all(row["params"].get(k) == v for k, v in point.items())


def retention_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """`eval/<name>/retention`: a benchmark's score after stage 2 minus its score before stage 2 (MMLU's:
    the language ability instruction tuning kept; 0 = nothing lost)."""
    out: dict[str, float] = {}
    for key, before in metrics.items():
        if key.startswith("eval/") and key.endswith(RETAINED_FROM) and key.count("/") == 2:
            after = metrics.get(key.removesuffix(RETAINED_FROM))
            if isinstance(after, int | float) and isinstance(before, int | float):
                out[f"{key.removesuffix(RETAINED_FROM)}/retention"] = float(after) - float(before)
    return out


def extra_metrics(run_metrics: dict[str, float]) -> dict[str, float]:
    """Held-out L_lm, benchmark headlines and retentions of a run."""
    out = {
        k: v
        for k, v in run_metrics.items()
        if k.endswith(("/heldout/lm", "/retention")) or (k.count("/") == 1 and k.startswith("eval/"))
    }
    return {**out, **retention_metrics(run_metrics)}


def gain(best: float, default: float, mode: str) -> dict[str, float]:
    """How much `best` beats `default` in the search's direction (absolute, and relative to the default)."""
    delta = best - default if mode == "max" else default - best
    return {"gain": delta, "relative_gain": delta / abs(default) if default else math.nan}


def vs_default(
    spec: Any, cell: Any, rows: list[dict[str, Any]], best: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The default trial, the best one and the gain, or None when the search did not run the default."""
    s = spec.search
    if not s.start_from_base:
        return None
    point = base_point(s, cell.config)
    default = next((r for r in rows if is_default(r, point)), None)
    out: dict[str, Any] = {"metric": s.metric, "mode": s.mode, "default_params": point}
    out["default"] = None if default is None else {k: default[k] for k in ("trial_id", "status", "value")}
    out["best"] = None if best is None else {k: best[k] for k in ("trial_id", "params", "value")}
    if default is not None and best is not None and default["value"] is not None:
        out.update(gain(best["value"], default["value"], s.mode))
    return out


def metric_by_knob(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """For each searched knob, (value, metric, status) of every trial, sorted by the value."""
    knobs = dict.fromkeys(k for r in rows for k in r["params"])
    out: dict[str, list[dict[str, Any]]] = {}
    for knob in knobs:
        points = [
            {
                "value": r["params"][knob],
                "metric": r["value"],
                "status": r["status"],
                "default": r.get("default", False),
            }
            for r in rows
            if knob in r["params"]
        ]
        out[knob] = sorted(points, key=lambda p: (str(type(p["value"])), p["value"]))
    return out


def conclude_search(spec: Any, outcome: Any, tracker: Any, console: Console, reports: Path) -> list[Path]:
    """Add the extra numbers to the rows, write the knob table and the comparison with the default, print
    it and log its numbers to the search's run; returns the files written."""
    point = base_point(spec.search, outcome.cell.config) if spec.search.start_from_base else {}
    for row in outcome.rows:
        row["default"] = is_default(row, point)
        row["extra"] = extra_metrics(tracker.client.get_run(row["run_id"]).data.metrics)
    knobs = reports / KNOBS_FILE
    knobs.write_text(json.dumps(metric_by_knob(outcome.rows), indent=2, default=str))
    files = [knobs]
    summary = vs_default(spec, outcome.cell, outcome.rows, outcome.best)
    if summary is None:
        return files
    target = reports / VS_DEFAULT_FILE
    target.write_text(json.dumps(summary, indent=2, default=str))
    files.append(target)
    if "gain" in summary:
        console.print(
            f"best vs the default ({point}): {spec.search.metric} {summary['best']['value']:.6g} vs "
            f"{summary['default']['value']:.6g}, a gain of {summary['gain']:.4g} "
            f"({100 * summary['relative_gain']:.1f}%)",
            highlight=False,
            soft_wrap=True,
        )
        numbers = {
            f"search/{k}": float(summary[k]) for k in ("gain", "relative_gain") if math.isfinite(summary[k])
        }
        numbers["search/best"], numbers["search/default"] = (
            summary["best"]["value"],
            summary["default"]["value"],
        )
        tracker.log_metrics(outcome.parent_run, numbers, step=0)
    else:
        console.print(
            f"the default trial ({point}) has no {spec.search.metric}: no comparison", highlight=False
        )
    return files

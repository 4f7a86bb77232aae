"""The plan of a grid: its cells, their status in MLflow and what each needs; runs nothing."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from grid.expand import Trial, expand, expand_grid
from grid.plan_steps import steps_of_trials, steps_text
from grid.spec import ExperimentSpec, load_spec, steps_root
from grid.table_cells import print_table_cells
from grid.tracking import RunInfo, Tracker

STATUS_OF_RUN = {
    "FINISHED": "done",
    "FAILED": "failed",
    "RUNNING": "running",
    "KILLED": "killed",
    "SCHEDULED": "new",
}


@dataclass(frozen=True)
class PlanRow:
    """One cell of the plan."""

    trial: Trial
    status: str
    run: RunInfo | None


def trial_status(run: RunInfo | None) -> str:
    """new / done / failed / running / killed from the latest MLflow run of a trial."""
    return "new" if run is None else STATUS_OF_RUN.get(run.status, run.status.lower())


def make_plan(spec: ExperimentSpec, source: str, tracker: Tracker) -> list[PlanRow]:
    """Every trial of the spec with its status in the tracking store."""
    return plan_rows(expand(spec, source), tracker)


def plan_rows(trials: list[Trial], tracker: Tracker) -> list[PlanRow]:
    """The trials with their status in the tracking store (a run under an older spelling of an id counts)."""
    runs = tracker.trial_runs([t.id for t in trials])
    return [PlanRow(t, trial_status(runs.get(t.id)), runs.get(t.id)) for t in trials]


def resources_text(trial: Trial) -> str:
    r = trial.config.resources
    gpu = f" x {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""
    return f"{r.num_workers} worker{'s' if r.num_workers > 1 else ''} x {r.cpus_per_worker:g} CPU{gpu}"


def estimates(trial: Trial) -> dict[str, Any]:
    """Visual tokens, GPUs, ZeRO stage per training stage, estimated GPU-hours (grid.estimate's assumptions;
    None when a stage's dataset size is unknown) and peak GPU memory per worker (grid.memory) of a trial."""
    from core.models.llm import get_llm_spec, resolve_gradient_checkpointing
    from core.models.vision import get_encoder_spec
    from grid.estimate import estimate_stage

    cfg = trial.config
    llm, enc = get_llm_spec(cfg.model.llm), get_encoder_spec(cfg.model.encoder)
    params = (llm.params_b or 0.0) * 1e9
    hours: float | None = 0.0
    for name in ("stage1", "stage2"):
        stage, data = getattr(cfg, name), getattr(cfg.data, name)
        if not stage.enabled:
            continue
        samples = data.synthetic.num_samples if data.source == "synthetic" else data.expected_samples
        if samples is None or hours is None:
            hours = None
            continue
        samples = max(1, round(samples * data.fraction))  # a seeded subset trains on its share only
        checkpointing = resolve_gradient_checkpointing(stage.gradient_checkpointing, cfg.model.llm)
        hours += estimate_stage(
            name, params, samples, enc.num_patches, stage.epochs, checkpointing=checkpointing
        ).gpu_hours
    r = cfg.resources
    return {
        "visual_tokens": enc.num_patches,
        "gpus": r.num_workers * r.gpus_per_worker,
        "zero": {name: _zero_text(cfg, name) for name in ("stage1", "stage2")},
        "gpu_hours": hours,
        **memory_estimates(cfg),
    }


def memory_estimates(cfg: Any) -> dict[str, Any]:
    """Estimated peak GPU memory per worker of each stage (GiB) and whether the trial fits its GPUs
    (`resources.gpu_memory_gb`); None for CPU trials."""
    from grid.memory import GIB, trial_memory, usable_bytes

    if cfg.resources.gpus_per_worker <= 0:
        return {"peak_gib": None, "fits": None}
    memory = trial_memory(cfg)
    return {
        "peak_gib": {stage: round(m.total / GIB, 2) for stage, m in memory.items()},
        "fits": all(m.total <= usable_bytes(cfg) for m in memory.values()),
    }


def cost_columns(trial: Trial) -> dict[str, str]:
    """The estimates as the plan table's columns."""
    est = estimates(trial)
    hours, peaks = est["gpu_hours"], est["peak_gib"]
    return {
        "visual tokens": str(est["visual_tokens"]),
        "GPUs": f"{est['gpus']:g}",
        "ZeRO": "/".join(est["zero"].values()),
        "est. GPU-h": "?" if hours is None else f"{hours:.3g}",
        "peak GiB": "-"
        if peaks is None
        else "/".join(f"{peaks.get(s, 0):.1f}" if s in peaks else "-" for s in ("stage1", "stage2")),
        "fits": "-" if est["fits"] is None else ("yes" if est["fits"] else "NO"),
    }


def plan_record(row: PlanRow, steps: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """One trial of the plan as plain data (JSON-able): what `seagrid plan --format json|csv` prints,
    with its steps (name, directory, status) when given.

    One function builds every record, so that a new field is added in one place.
    """
    r = row.trial.config.resources
    return {
        "id": row.trial.id,
        "axes": dict(row.trial.axes),
        "status": row.status,
        "run_id": row.run.run_id if row.run else None,
        "resources": {
            "num_workers": r.num_workers,
            "cpus_per_worker": r.cpus_per_worker,
            "gpus_per_worker": r.gpus_per_worker,
        },
        "estimates": estimates(row.trial),
        "steps": steps or [],
    }


def csv_line(record: dict[str, Any]) -> dict[str, Any]:
    """A plan record flattened for CSV: nested keys dotted ('estimates.gpu_hours', 'axes.method.name'),
    lists and sections of an axis value as compact JSON."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict) and key != "axes":
            out.update({f"{key}.{k}": v for k, v in csv_line(value).items()})
        elif key == "axes":
            out.update({f"axes.{k}": _cell(v) for k, v in value.items()})
        else:
            out[key] = _cell(value)
    return out


def _cell(value: Any) -> Any:
    return (
        json.dumps(value, sort_keys=True, separators=(",", ":")) if isinstance(value, dict | list) else value
    )


def write_records(records: list[dict[str, Any]], fmt: str, out: TextIO) -> None:
    """JSON (a list of records) or CSV (one line per record, header = the union of the flattened keys)."""
    if fmt == "json":
        json.dump(records, out, indent=2)
        out.write("\n")
        return
    lines = [csv_line(r) for r in records]
    fields = list(dict.fromkeys(k for line in lines for k in line))
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)


def _zero_text(cfg: Any, stage: str) -> str:
    """The ZeRO stage a training stage will run with ('off': plain PyTorch, '-': stage disabled)."""
    from core.train.deepspeed_engine import resolve_zero

    settings = getattr(cfg, stage)
    if not settings.enabled:
        return "-"
    use_gpu = cfg.resources.gpus_per_worker > 0
    zero = resolve_zero(settings.deepspeed.zero, stage, cfg.model.llm, use_gpu=use_gpu)
    return "off" if zero is None else str(zero)


STATUS_STYLE = {"done": "green", "failed": "red", "running": "yellow", "new": "cyan", "reused": "green"}


def plan_table(title: str, rows: list[PlanRow], extra: dict[str, dict[str, str]] | None = None) -> Table:
    """A rich table: axis values, id, status, resources and any extra columns per trial id."""
    axes = sorted({a for r in rows for a in r.trial.axes})
    extra_cols = sorted({c for cols in (extra or {}).values() for c in cols})
    table = Table(title=title, show_lines=False)
    for a in axes:
        table.add_column(a)
    table.add_column("trial id", no_wrap=True)  # an id must stay copyable
    table.add_column("status")
    table.add_column("resources")
    for c in extra_cols:
        table.add_column(c, justify="right")
    for r in rows:
        style = STATUS_STYLE.get(r.status, "")
        cols = (extra or {}).get(r.trial.id, {})
        table.add_row(
            *[str(r.trial.axes.get(a, "")) for a in axes],
            r.trial.id,
            f"[{style}]{r.status}[/{style}]" if style else r.status,
            resources_text(r.trial),
            *[cols.get(c, "") for c in extra_cols],
        )
    return table


PLAN_FORMATS = ("table", "json", "csv")


def print_plan(
    spec_path: str | Path, console: Console | None = None, fmt: str = "table", out: TextIO | None = None
) -> list[PlanRow]:
    """`just plan SPEC`: load, expand, look up statuses, print (a table, or JSON / CSV records on `out`);
    nothing is started or written."""
    spec = load_spec(spec_path)
    tracker = Tracker(spec.name, spec.output.tracking_uri)
    expansion = expand_grid(spec, str(spec_path))
    rows = plan_rows(expansion.trials, tracker)
    statuses = {r.trial.id: r.status for r in rows}
    steps = steps_of_trials([r.trial for r in rows], steps_root(spec.output), statuses)
    if fmt != "table":
        write_records([plan_record(r, steps[r.trial.id]) for r in rows], fmt, out or sys.stdout)
        return rows
    console = console or Console()
    counts = {s: sum(r.status == s for r in rows) for s in sorted({r.status for r in rows})}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    extra = {r.trial.id: {**cost_columns(r.trial), "steps": steps_text(steps[r.trial.id])} for r in rows}
    console.print(plan_table(f"{spec.name}: {len(rows)} trials ({summary})", rows, extra))
    g = spec.grid
    if g.exclude or g.include or expansion.counts.merged:
        console.print("filters: " + "; ".join(expansion.counts.lines()), highlight=False, soft_wrap=True)
    print_table_cells(spec_path, [r.trial for r in rows], console)  # the paper's cells they fill
    return rows

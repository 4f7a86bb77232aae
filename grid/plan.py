"""The plan of a grid: its cells, their status in MLflow and what each needs; runs nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from grid.expand import Trial, expand
from grid.spec import ExperimentSpec, load_spec
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
    trials = expand(spec, source)
    runs = tracker.trial_runs()
    return [PlanRow(t, trial_status(runs.get(t.id)), runs.get(t.id)) for t in trials]


def resources_text(trial: Trial) -> str:
    r = trial.config.resources
    gpu = f" x {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else ""
    return f"{r.num_workers} worker{'s' if r.num_workers > 1 else ''} x {r.cpus_per_worker:g} CPU{gpu}"


def cost_columns(trial: Trial) -> dict[str, str]:
    """Visual tokens, GPUs, ZeRO stage and estimated GPU-hours of a trial (grid.estimate's assumptions)."""
    from core.models.llm import get_llm_spec, resolve_gradient_checkpointing
    from core.models.vision import get_encoder_spec
    from grid.estimate import estimate_stage
    from grid.memory import memory_columns

    cfg = trial.config
    llm, enc = get_llm_spec(cfg.model.llm), get_encoder_spec(cfg.model.encoder)
    params = (llm.params_b or 0.0) * 1e9
    hours, unknown = 0.0, False
    for name in ("stage1", "stage2"):
        stage, data = getattr(cfg, name), getattr(cfg.data, name)
        if not stage.enabled:
            continue
        samples = data.synthetic.num_samples if data.source == "synthetic" else data.expected_samples
        if samples is None:
            unknown = True
            continue
        checkpointing = resolve_gradient_checkpointing(stage.gradient_checkpointing, cfg.model.llm)
        hours += estimate_stage(
            name, params, samples, enc.num_patches, stage.epochs, checkpointing=checkpointing
        ).gpu_hours
    r = cfg.resources
    return {
        "visual tokens": str(enc.num_patches),
        "GPUs": f"{r.num_workers * r.gpus_per_worker:g}",
        "ZeRO": "/".join(_zero_text(cfg, name) for name in ("stage1", "stage2")),
        "est. GPU-h": "?" if unknown else f"{hours:.3g}",
        **memory_columns(cfg),
    }


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
    table.add_column("trial id", overflow="fold")
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


def print_plan(spec_path: str | Path, console: Console | None = None) -> list[PlanRow]:
    """`just plan SPEC`: load, expand, look up statuses, print; nothing is started or written."""
    spec = load_spec(spec_path)
    tracker = Tracker(spec.name, spec.output.tracking_uri)
    rows = make_plan(spec, str(spec_path), tracker)
    console = console or Console()
    counts = {s: sum(r.status == s for r in rows) for s in sorted({r.status for r in rows})}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    from grid.plan_steps import steps_of_trials, steps_text
    from grid.spec import steps_root

    steps = steps_of_trials(
        [r.trial for r in rows], steps_root(spec.output), {r.trial.id: r.status for r in rows}
    )
    extra = {r.trial.id: {**cost_columns(r.trial), "steps": steps_text(steps[r.trial.id])} for r in rows}
    console.print(plan_table(f"{spec.name}: {len(rows)} trials ({summary})", rows, extra))
    return rows

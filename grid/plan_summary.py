"""The plan of a grid too large to list: counts, what the filters did, and its first and last cells."""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from rich.console import Console

from grid.cells import check_filters, product_size, scan
from grid.expand import check_grid, make_trial
from grid.plan import PlanRow, plan_table, print_plan, trial_status
from grid.spec import ExperimentSpec, SpecError, load_spec
from grid.tracking import Tracker

# A plan lists every cell up to this many; above it, the first and last SHOWN cells and the counts.
FULL_PLAN_MAX = 500
SHOWN = 5


def summary_rows(spec: ExperimentSpec, source: str, tracker: Tracker) -> tuple[list[PlanRow], list[str], int]:
    """(the first and last SHOWN rows, what the filters did, cells kept) in one lazy pass: memory does
    not grow with the grid, and only the shown cells are validated."""
    check_grid(spec, source)
    base = spec.base.model_dump(mode="json")
    counts, first, last = scan(spec, base, SHOWN)
    check_filters(spec, base, counts, source)
    trials = [make_trial(cell, base, source, origin) for cell, origin in [*first, *last]]
    runs = tracker.trial_runs([t.id for t in trials])
    rows = [PlanRow(t, trial_status(runs.get(t.id)), runs.get(t.id)) for t in trials]
    return rows, counts.lines(), counts.product - counts.removed + counts.included


def print_summary(spec: ExperimentSpec, source: str, tracker: Tracker, console: Console) -> list[PlanRow]:
    """A large grid's plan: its size, the filters' counts and a table of its first and last cells."""
    rows, lines, kept = summary_rows(spec, source, tracker)
    console.print(
        f"{spec.name}: {kept} cells, too many to list (more than {FULL_PLAN_MAX}); the first and last "
        f"{SHOWN} are shown, validated; the rest are not checked until they run",
        highlight=False,
    )
    console.print("filters: " + "; ".join(lines), highlight=False, soft_wrap=True)
    console.print(plan_table(f"{spec.name}: first and last {SHOWN} of {kept} cells", rows))
    console.print(
        f"`seagrid grid` starts more than output.max_trials_unconfirmed={spec.output.max_trials_unconfirmed} "
        "trials only with --yes",
        highlight=False,
    )
    return rows


def plan_command(
    spec_path: str | Path, console: Console, fmt: str = "table", out: TextIO | None = None
) -> None:
    """`seagrid plan`: the whole plan, or the summary of a grid of more than FULL_PLAN_MAX cells (counted
    before anything is expanded)."""
    spec = load_spec(spec_path)
    if product_size(spec) + len(spec.grid.include) <= FULL_PLAN_MAX:
        print_plan(spec_path, console, fmt=fmt, out=out)
        return
    if fmt != "table":
        raise SpecError(
            f"{spec_path}: more than {FULL_PLAN_MAX} cells: too many for --format {fmt}; `seagrid plan` (a "
            "table) summarises the grid, or narrow the axes"
        )
    print_summary(spec, str(spec_path), Tracker(spec.name, spec.output.tracking_uri), console)

"""Pre-flight of a grid run: every problem a user can fix, found at once before any trial starts.

The checks are a registry (`CHECKS`) of plain functions with one signature::

    def check_something(ctx: Preflight) -> list[str]: ...

Each gets the run's context (the spec, its path, its Tracker, the trials that would run and whether
the user confirmed a large run) and returns its findings: one sentence per problem, naming the field,
file or sample and the fix; an empty list when all is well. A check must be quick (seconds), must not
write anything and must not raise for a problem it can describe. `run_preflight` runs every check and
`refuse_problems` raises one PreflightError listing all findings, so the user fixes them in one go.
Add a check by appending it to `CHECKS` (e.g. a cluster-resources check from grid/cluster_check.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grid.cells import count_filters, product_size
from grid.expand import Trial, expand
from grid.plan import PlanRow, make_plan
from grid.spec import ExperimentSpec, SpecError, steps_root
from grid.tracking import Tracker
from grid.tracking_check import store_problem

# Images decoded per dataset before a run: enough to catch a wrong image_root, cheap on 665K records.
SAMPLE_IMAGES = 4


class PreflightError(SpecError):
    """Problems found before any trial started; the message lists every one."""


@dataclass
class Preflight:
    """What the checks look at."""

    spec: ExperimentSpec
    source: str
    tracker: Tracker
    trials: list[Trial] | None = None  # the trials this run would start (None: not expanded yet)
    confirmed: bool = False  # the user passed --yes
    cells: int = 0  # cells of the grid, counted before expansion


Check = Callable[[Preflight], list[str]]


def check_trial_count(ctx: Preflight) -> list[str]:
    """More trials than output.max_trials_unconfirmed need --yes (a typo in an axis can mean 10^6 runs)."""
    cap = ctx.spec.output.max_trials_unconfirmed
    n = ctx.cells if ctx.trials is None else len(ctx.trials)
    if n > cap and not ctx.confirmed:
        return [
            f"{ctx.source}: this run would start {n} trials, more than output.max_trials_unconfirmed={cap}; "
            "check the grid with `seagrid plan`, then rerun with --yes (or raise the setting)"
        ]
    return []


def check_tracking_store(ctx: Preflight) -> list[str]:
    """The MLflow store answers (a server within seconds) and can be written."""
    problem = store_problem(ctx.tracker.uri, ctx.tracker.setting)
    return [problem] if problem else []


def _writable_dir_problem(path: Path, setting: str) -> str | None:
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == path else f"is under the file {existing}"
        return f"{setting}={path}: {where}, not a directory; choose a directory for results"
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        return f"{setting}={path}: {existing} is not writable; choose a directory you can write to"
    return None


def check_output_root(ctx: Preflight) -> list[str]:
    """output.root and the steps root are (or can become) writable directories."""
    out = ctx.spec.output
    root = _writable_dir_problem(Path(out.root).expanduser().absolute(), "output.root")
    steps = _writable_dir_problem(steps_root(out), "output.steps_root") if out.steps_root else None
    return [p for p in (root, steps) if p]


def check_data_files(ctx: Preflight) -> list[str]:
    """The dataset, benchmark, diagnostics and word-list files of the trials to run, read as `seagrid data`
    reads them (the same findings)."""
    from grid.data_check import check, needs_of_trials, where_to_get

    problems = []
    for need in needs_of_trials(ctx.trials or []):
        found = check(need, SAMPLE_IMAGES)
        if not found.ok:
            detail = "; ".join(found.lines)
            problems.append(f"{need.label}: {detail}; get it: {where_to_get(need)} (details: `seagrid data`)")
    return problems


def check_gpu_memory(ctx: Preflight) -> list[str]:
    """Every GPU trial fits its GPUs' memory (grid/memory.py's estimate), or the settings that would fit."""
    from grid.memory import unfit_findings

    return unfit_findings({t.id: t.config for t in ctx.trials or []})


CHECKS: list[Check] = [
    check_trial_count,
    check_tracking_store,
    check_output_root,
    check_data_files,
    check_gpu_memory,
]


def run_preflight(ctx: Preflight, checks: list[Check] | None = None) -> list[str]:
    """Every finding of every check."""
    return [p for check in (CHECKS if checks is None else checks) for p in check(ctx)]


def refuse_problems(source: str, problems: list[str]) -> None:
    """Raise one PreflightError listing every problem (nothing when there is none)."""
    if problems:
        lines = "\n  - ".join(problems)
        raise PreflightError(
            f"{source}: {len(problems)} problem(s) found before any trial started:\n  - {lines}"
        )


def _finished_trials(tracker: Tracker) -> int:
    return sum(run.status == "FINISHED" for run in tracker.trial_runs().values())


def preflight_plan(
    spec: ExperimentSpec, source: str, tracker: Tracker, *, confirmed: bool = False
) -> list[PlanRow]:
    """The run's plan, after a pre-flight that found nothing; a PreflightError listing everything found
    otherwise. An over-large grid is refused from its cell count, before it is expanded."""
    ctx = Preflight(spec, source, tracker, confirmed=confirmed)
    ctx.cells = product_size(spec) + len(spec.grid.include)
    if ctx.cells > spec.output.max_trials_unconfirmed and not confirmed:
        # At least this many would start: the cells the filters keep, less every trial finished before.
        finished = 0 if check_tracking_store(ctx) else _finished_trials(tracker)
        ctx.cells = count_filters(spec, spec.base.model_dump(mode="json")).kept - finished
        if ctx.cells > spec.output.max_trials_unconfirmed:
            refuse_problems(
                source, run_preflight(ctx, [check_trial_count, check_tracking_store, check_output_root])
            )
    if check_tracking_store(ctx):  # no statuses without a store: check the data of every trial
        ctx.trials = expand(spec, source)
        refuse_problems(source, run_preflight(ctx))
    rows = make_plan(spec, source, tracker)
    ctx.trials = [r.trial for r in rows if r.status != "done"]
    refuse_problems(source, run_preflight(ctx))
    return rows


def preflight_search(spec: ExperimentSpec, source: str, tracker: Tracker, cells: list[Trial]) -> None:
    """A search's pre-flight: the tracking store, the output root and every cell's files (a search's trial
    count is its `num_samples`, bounded by the spec itself)."""
    ctx = Preflight(spec, source, tracker, trials=cells)
    checks: list[Check] = [check_tracking_store, check_output_root, check_data_files, check_gpu_memory]
    refuse_problems(source, run_preflight(ctx, checks))

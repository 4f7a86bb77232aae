"""Run a grid: skip finished trials, schedule the rest with Ray Tune, record everything in MLflow."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.console import Console

from core.paths import cache_dir
from core.ray_session import ensure_ray
from grid.expand import Trial
from grid.memory import refuse_if_unfit
from grid.plan import PlanRow, make_plan, plan_table
from grid.spec import ExperimentSpec, load_spec, steps_root
from grid.tracking import Tracker


@dataclass
class GridResult:
    """What a grid invocation did, per trial id."""

    status: dict[str, str] = field(default_factory=dict)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    run_ids: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [t for t, s in self.status.items() if s == "failed"]


class GridCallback(Callback):
    """Driver-side: turns Tune events into MLflow runs and progress lines (one writer for the store)."""

    def __init__(
        self, tracker: Tracker, parent_id: str, trials: dict[str, Trial], out: GridResult, console: Console
    ):
        self.tracker, self.parent_id, self.trials, self.out, self.console = (
            tracker,
            parent_id,
            trials,
            out,
            console,
        )
        self.started: dict[str, float] = {}
        self.last_print: dict[str, float] = {}
        self.last_step: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config for restoration; the live store handles must not travel.
        return {}

    @staticmethod
    def _tid(trial: Any) -> str:
        return trial.config["cell"]["trial_id"]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self._tid(trial)
        self.out.run_ids[tid] = self.tracker.start_trial(self.trials[tid], self.parent_id)
        self.out.status[tid] = "running"
        self.started[tid] = time.time()
        self.console.print(f"[cyan]start[/cyan]  {tid}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = self._tid(trial)
        sg = result.get("seagrid") or {}
        if "metrics" in sg:
            self.tracker.log_metrics(self.out.run_ids[tid], sg["metrics"], step=int(sg["step"]))
            self.last_step[tid] = max(self.last_step.get(tid, 0), int(sg["step"]))
            now = time.time()
            if sg["step"] == sg.get("total_steps") or now - self.last_print.get(tid, 0) > 5:
                self.last_print[tid] = now
                shown = "  ".join(f"{k.split('/', 1)[-1]} {v:.4g}" for k, v in sg["metrics"].items())
                self.console.print(
                    f"  {tid}  {sg['stage']} step {sg['step']}/{sg.get('total_steps', '?')}  {shown}"
                )
        if "final" in sg:
            self.out.summary[tid] = sg["final"]
        for artifact_path, local_dir in (sg.get("artifacts") or {}).items():
            if Path(local_dir).is_dir():
                self.tracker.log_artifacts(self.out.run_ids[tid], Path(local_dir), artifact_path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self._tid(trial)
        self.tracker.finish(self.out.run_ids[tid], self.out.summary.get(tid, {}), self.last_step.get(tid, 0))
        self.out.status[tid] = "done"
        self.console.print(f"[green]done[/green]   {tid}  ({time.time() - self.started[tid]:.0f} s)")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self._tid(trial)
        text = _error_text(trial)
        self.out.errors[tid] = text
        self.out.status[tid] = "failed"
        if tid in self.out.run_ids:
            self.tracker.fail(self.out.run_ids[tid], text)
        last = text.strip().splitlines()[-1] if text.strip() else "unknown error"
        self.console.print(f"[red]FAILED[/red] {tid}: {last}", markup=True)


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        return Path(path).read_text()
    return str(getattr(trial, "error_msg", None) or "the trial failed without a recorded error")


def run_grid(
    spec_path: str | Path,
    *,
    console: Console | None = None,
    spec: ExperimentSpec | None = None,
) -> tuple[list[PlanRow], GridResult]:
    """Run every trial not yet done; returns the plan as it was and what happened to each trial."""
    console = console or Console()
    spec = spec or load_spec(spec_path)
    tracker = Tracker(spec.name, spec.output.tracking_uri)
    rows = make_plan(spec, str(spec_path), tracker)
    todo = [r.trial for r in rows if r.status != "done"]
    # A trial that cannot fit its GPUs is refused before anything starts, with the settings that would fit.
    refuse_if_unfit({t.id: t.config for t in todo})
    result = GridResult(status={r.trial.id: "done (skipped)" for r in rows if r.status == "done"})
    console.print(
        f"[bold]{spec.name}[/bold]: {len(rows)} trials, {len(rows) - len(todo)} already done, {len(todo)} to run"
    )
    if todo:
        _tune(spec, todo, tracker, result, console)
    final_rows = [PlanRow(r.trial, result.status.get(r.trial.id, r.status), r.run) for r in rows]
    extra = {
        tid: {k: f"{v:.4g}" for k, v in s.items() if k.endswith("loss") and isinstance(v, float)}
        for tid, s in result.summary.items()
    }
    console.print(plan_table(f"{spec.name}: results", final_rows, extra))
    if result.failed:
        console.print(f"[red]{len(result.failed)} trial(s) failed:[/red] " + ", ".join(result.failed))
        console.print("Tracebacks are in each failed run's traceback.txt artifact (just mlflow).")
    return rows, result


def _tune(
    spec: ExperimentSpec, todo: list[Trial], tracker: Tracker, result: GridResult, console: Console
) -> None:
    import ray.tune

    from grid.trial import DRIVER_RESOURCES, TrialJob, run_trial

    ensure_ray()
    results_root = Path(spec.output.root).expanduser().resolve()
    storage = results_root / "ray"  # Tune's own state; each stage's Train run lives beside it
    parent_id = tracker.parent_run()
    cells = [
        TrialJob(
            trial_id=t.id,
            trial=t.config,
            results_root=str(results_root),
            steps_root=str(steps_root(spec.output)),
            cache_dir=str(cache_dir()),
        ).model_dump(mode="json")
        for t in todo
    ]
    callback = GridCallback(tracker, parent_id, {t.id: t for t in todo}, result, console)
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(run_trial, DRIVER_RESOURCES),
        param_space={"cell": ray.tune.grid_search(cells)},
        tune_config=ray.tune.TuneConfig(
            max_concurrent_trials=spec.output.max_concurrent_trials,
            trial_name_creator=lambda trial: trial.config["cell"]["trial_id"],
            trial_dirname_creator=lambda trial: trial.config["cell"]["trial_id"],
        ),
        run_config=ray.tune.RunConfig(
            name=f"{spec.name}-{int(time.time())}",
            storage_path=str(storage),
            callbacks=[callback],
            verbose=0,
        ),
    )
    tuner.fit()

"""Run a grid: skip finished trials, schedule the rest with Ray Tune, record everything in MLflow."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.console import Console

from core.config.methods import FINAL_LOSS, stage_metric
from core.paths import cache_dir
from core.ray_session import ensure_ray
from grid.cluster_check import check_cluster
from grid.console import Board, console_for, duration
from grid.expand import Trial
from grid.memory import refuse_if_unfit
from grid.plan import PlanRow, estimates
from grid.preflight import preflight_plan
from grid.ray_log import ray_output
from grid.redact import scrub
from grid.spec import ExperimentSpec, load_spec, steps_root
from grid.storage_check import check_shared_storage
from grid.tracking import Tracker, experiment_url, run_name
from grid.watchdog import Watchdog


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

    @property
    def interrupted(self) -> bool:
        """Whether the invocation was cut short (Ctrl-C): trials were left unfinished."""
        return any(s == "killed" for s in self.status.values())


class GridCallback(Callback):
    """Driver-side: turns Tune events into MLflow runs and board updates (one writer for the store).

    Restorable: Tune pickles it with the run config and unpickles it on `Tuner.restore`; the tracker is
    rebuilt from the tracking URI, run ids are found again by tag, and `attach` binds the new
    invocation's board and result.
    """

    def __init__(
        self, tracker: Tracker, parent_id: str, trials: dict[str, Trial], out: GridResult, board: Board
    ):
        self.tracker, self.parent_id, self.trials = tracker, parent_id, trials
        self.attach(board, out)
        self.last_step: dict[str, int] = {}

    def attach(self, board: Board, out: GridResult) -> None:
        """Report to this invocation's board and result."""
        self.board, self.out = board, out

    def __getstate__(self) -> dict[str, Any]:
        # The live store handle and the console stay behind; what rebuilds them travels.
        return {
            "grid": self.tracker.grid,
            "uri": self.tracker.uri,
            "parent_id": self.parent_id,
            "trials": self.trials,
            "last_step": self.last_step,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not state:  # pickled by an older seagrid
            state = {"grid": "unknown", "uri": None, "parent_id": "", "trials": {}, "last_step": {}}
        self.tracker = Tracker(state["grid"], state["uri"])
        self.parent_id, self.trials = state["parent_id"], state["trials"]
        self.last_step = dict(state["last_step"])
        self.attach(Board(state["grid"], Console(file=io.StringIO()), live=False), GridResult())

    @staticmethod
    def _tid(trial: Any) -> str:
        return trial.config["cell"]["trial_id"]

    def _find_run(self, tid: str) -> str | None:
        """The run an earlier invocation started for this trial (the latest with its id)."""
        runs = self.tracker.runs_tagged("trial_id", tid)
        return runs[-1].info.run_id if runs else None

    def run_id(self, tid: str) -> str:
        if tid not in self.out.run_ids:
            found = self._find_run(tid)
            if found is None:
                raise KeyError(f"no MLflow run for trial {tid}")
            self.out.run_ids[tid] = found
        return self.out.run_ids[tid]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self._tid(trial)
        self.out.run_ids[tid] = self.tracker.start_trial(self.trials[tid], self.parent_id)
        self.out.status[tid] = "running"
        self.board.start(tid)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = self._tid(trial)
        sg = result.get("seagrid") or {}
        if "phase" in sg and tid in self.board.lines:
            self.board.phase(tid, str(sg["phase"]))
        if "metrics" in sg:
            self.tracker.log_metrics(self.run_id(tid), sg["metrics"], step=int(sg["step"]))
            self.last_step[tid] = max(self.last_step.get(tid, 0), int(sg["step"]))
            if tid in self.board.lines:
                self.board.progress(tid, sg["stage"], int(sg["step"]), sg.get("total_steps"), sg["metrics"])
        if "final" in sg:
            self.out.summary[tid] = sg["final"]
        for artifact_path, local_dir in (sg.get("artifacts") or {}).items():
            if Path(local_dir).is_dir():
                self.tracker.log_artifacts(self.run_id(tid), Path(local_dir), artifact_path)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self._tid(trial)
        self.tracker.finish(self.run_id(tid), self.out.summary.get(tid, {}), self.last_step.get(tid, 0))
        self.out.status[tid] = "done"
        self.board.finish(tid, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = self._tid(trial)
        text = _error_text(trial)
        self.out.errors[tid] = text
        self.out.status[tid] = "failed"
        run_id = self.out.run_ids.get(tid) or self._find_run(tid)
        if run_id:
            self.tracker.fail(run_id, text)
        last = text.strip().splitlines()[-1] if text.strip() else "unknown error"
        if tid in self.board.lines:
            self.board.finish(tid, "failed", scrub(last))


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        return Path(path).read_text()
    return str(getattr(trial, "error_msg", None) or "the trial failed without a recorded error")


def log_path(spec: ExperimentSpec) -> Path:
    """Where one invocation's Ray and Tune output goes: <output.root>/logs/<grid>-<date>-<time>.log."""
    root = Path(spec.output.root).expanduser().resolve()
    return root / "logs" / f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def parent_status(result: GridResult, error: BaseException | None) -> str:
    """How an invocation ends its grid's parent run: KILLED (interrupted), FAILED (a trial or the
    command failed) or FINISHED."""
    if isinstance(error, KeyboardInterrupt):
        return "KILLED"
    return "FAILED" if error is not None or result.failed else "FINISHED"


def run_grid(
    spec_path: str | Path,
    *,
    console: Console | None = None,
    spec: ExperimentSpec | None = None,
    verbose: bool = False,
    confirmed: bool = False,
) -> tuple[list[PlanRow], GridResult]:
    """Run every trial not yet done; returns the plan as it was and what happened to each trial.

    On a terminal the trials show in one table updated in place, elsewhere as plain lines; Ray's and
    Tune's own output goes to <output.root>/logs/ (to the terminal with `verbose`).
    """
    console = console or console_for()
    spec = spec or load_spec(spec_path)
    tracker = Tracker(spec.name, spec.output.tracking_uri)
    # Every problem a user can fix (files, tracking store, output, grid size), reported at once.
    rows = preflight_plan(spec, str(spec_path), tracker, confirmed=confirmed)
    todo = [r.trial for r in rows if r.status != "done"]
    # A trial that cannot fit its GPUs is refused before anything starts, with the settings that would fit.
    refuse_if_unfit({t.id: t.config for t in todo})
    result = GridResult(status={r.trial.id: "done (skipped)" for r in rows if r.status == "done"})
    console.print(
        f"[bold]{spec.name}[/bold]: {len(rows)} trials, {len(rows) - len(todo)} already done, {len(todo)} to run",
        highlight=False,
    )
    board = Board(spec.name, console, show_prints=verbose)
    for r in rows:
        done = r.status == "done"
        board.add(r.trial.id, run_name(r.trial.axes, r.trial.id), "done earlier" if done else "queued")
        if done and r.run is not None:  # its final loss, from the store
            losses = [r.run.metrics.get(stage_metric(s, FINAL_LOSS)) for s in ("stage2", "stage1")]
            board.lines[r.trial.id].loss = next((v for v in losses if v is not None), None)
    _invocation(spec, str(spec_path), todo, tracker, result, board, verbose)
    console.print(board.table())
    counts = ", ".join(f"{n} {s}" for s, n in board.counts().items())
    console.print(f"{spec.name}: {counts} in {duration(time.time() - board.t0)}", highlight=False)
    if result.failed:
        console.print(f"[red]{len(result.failed)} trial(s) failed:[/red] " + ", ".join(result.failed))
        console.print("Tracebacks are in each failed run's traceback.txt artifact (just mlflow).")
    console.print(f"MLflow: {ui_link(tracker)}", highlight=False, soft_wrap=True)
    return rows, result


def ui_link(tracker: Tracker, local_ui: str = "http://127.0.0.1:5000") -> str:
    """Where to see the grid's runs: its experiment in the UI's model-training view (a local store: as
    `just mlflow` serves it)."""
    served = tracker.uri.startswith(("http://", "https://"))
    link = experiment_url(tracker.uri if served else local_ui, tracker.experiment_id)
    return link if served else f"{link} (after `just mlflow`)"


def _invocation(
    spec: ExperimentSpec,
    spec_path: str,
    todo: list[Trial],
    tracker: Tracker,
    result: GridResult,
    board: Board,
    verbose: bool,
    runner: Callable[..., None] | None = None,
    parent_id: str | None = None,
) -> None:
    """One invocation under the grid's parent run (reopened here, ended with the invocation: FINISHED,
    FAILED or KILLED): the trials to do run with Ray's output in the log; trial runs an interruption
    leaves RUNNING are marked KILLED."""
    parent_id = parent_id or tracker.parent_run(spec_path)
    error: BaseException | None = None
    try:
        if todo:
            log = log_path(spec)
            if not verbose:
                board.message(f"Ray's output: {log} (--verbose shows it here)")
            with ray_output(log, verbose), board:
                (runner or _tune)(spec, todo, tracker, result, board, parent_id)
    except BaseException as err:
        error = err
        raise
    finally:
        for tid, status in result.status.items():
            if status == "running":
                tracker.kill(result.run_ids[tid])
                result.status[tid] = "killed"
                board.finish(tid, "killed")
        # Tune returns normally after a Ctrl-C (it saves its state and stops the trials): the trials it left
        # unfinished say the grid was interrupted.
        if error is None and result.interrupted:
            error = KeyboardInterrupt()
        tracker.close_parent(parent_id, parent_status(result, error))


# A watchdog that keeps firing before any trial reports is set too short: stop instead of looping.
MAX_BARREN_RESTARTS = 3


def _tune(
    spec: ExperimentSpec,
    todo: list[Trial],
    tracker: Tracker,
    result: GridResult,
    board: Board,
    parent_id: str,
) -> None:
    """The trials in one Tune run; when the watchdog ends it (no running trial reported for
    `output.watchdog_minutes`), the unfinished trials again in a fresh Ray session: their MLflow runs
    are reopened and their stages resume from their checkpoints."""
    import ray

    ensure_ray()
    check_cluster({t.id: t.config for t in todo}, board.message)  # refuse what can never be placed
    results_root = Path(spec.output.root).expanduser().resolve()
    check_shared_storage({"output.root": results_root, "the steps root": steps_root(spec.output)})
    barren = 0  # restarts in a row in which no trial reported anything
    while todo:
        watchdog = Watchdog(spec.output.watchdog_minutes)
        _tune_once(spec, todo, tracker, result, board, parent_id, watchdog)
        if not watchdog.fired:
            return
        barren = 0 if watchdog.results else barren + 1
        if barren >= MAX_BARREN_RESTARTS:
            raise RuntimeError(
                f"{watchdog.message().split(':')[0]}, {barren} times in a row without a single report: the "
                "trials may need longer than output.watchdog_minutes before their first step; raise it"
            )
        board.message(watchdog.message())
        for tid, status in result.status.items():
            if status == "running":  # reopened by the next run (tracking.Tracker.start_trial)
                tracker.kill(result.run_ids[tid])
                result.status[tid] = "queued"
                board.finish(tid, "queued", "resumed in a fresh Ray session")
        todo = [t for t in todo if result.status.get(t.id) not in ("done", "failed")]
        ray.shutdown()
        ensure_ray()


def _tune_once(
    spec: ExperimentSpec,
    todo: list[Trial],
    tracker: Tracker,
    result: GridResult,
    board: Board,
    parent_id: str,
    watchdog: Watchdog,
) -> None:
    import ray.tune

    from grid.trial import DRIVER_RESOURCES, TrialJob, run_trial

    results_root = Path(spec.output.root).expanduser().resolve()
    storage = results_root / "ray"  # Tune's own state; each stage's Train run lives beside it
    # Longest first (by the plan's GPU-hour estimate): list scheduling that keeps a cluster busy to the end
    # (bench/cluster_sim.py: 97.5% busy, +2.5% over the ideal makespan, against 91.7% / +9.1% in spec order).
    todo = sorted(todo, key=lambda t: -(estimates(t)["gpu_hours"] or 0.0))
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
    callback = GridCallback(tracker, parent_id, {t.id: t for t in todo}, result, board)
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
            callbacks=[callback, watchdog],
            stop=watchdog,
            verbose=0,
        ),
    )
    tuner.fit()

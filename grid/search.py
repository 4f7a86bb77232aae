"""`seagrid tune SPEC`: a Ray Tune search per grid cell over the spec's `search:` space, its trials the
grid's own trial driver, tracked in MLflow, stoppable early (ASHA), resumable, summed up at the end."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml
from rich.console import Console
from rich.table import Table

from core.config.identity import content_hash
from core.paths import cache_dir
from grid.console import Board, console_for, duration
from grid.expand import Trial, expand, slug, trial_hash
from grid.memory import refuse_if_unfit
from grid.preflight import preflight_search
from grid.run import GridCallback, GridResult, _invocation, ui_link
from grid.search_budget import budget_line
from grid.search_guard import log_guard_override
from grid.search_report import conclude_search
from grid.search_spec import (
    SearchConfig,
    base_point,
    final_metrics,
    metric_stage,
    per_step_metrics,
    rung_metric,
    with_values,
)
from grid.spec import ExperimentSpec, SpecError, TrialConfig, load_spec, steps_root
from grid.tracking import INTERRUPTED, SEARCH_TAG, STOPPED_TAG, Tracker, run_name

BEST_DIR = Path("experiments/best")
TUNE_TRIAL_TAG = "seagrid.tune_trial"
SAMPLED_TAG = "seagrid.sampled"
STOP_REASON = {"asha": "asha", "none": "stopped"}


def _domains(search: SearchConfig) -> dict[str, Any]:
    """The space as Tune domains, keyed by dotted config path."""
    import ray.tune as tune

    makers = {
        "choice": lambda a: tune.choice(a),
        "grid": lambda a: tune.grid_search(a),
        "uniform": lambda a: tune.uniform(*a),
        "loguniform": lambda a: tune.loguniform(*a),
        "randint": lambda a: tune.randint(*a),
    }
    return {path: makers[kind](args) for path, raw in search.space.items() for kind, args in raw.items()}


def search_key(spec: ExperimentSpec, cell: Trial) -> str:
    """A search's stable name: spec, cell and the search block (its Tune experiment directory, its tag)."""
    assert spec.search is not None
    return f"{spec.name}-{cell.hash}-{content_hash(search_identity(spec.search), 6)}"


# Fields added after searches had run: part of a search's key only when set, so a running search resumes.
_KEY_IF_SET = {"accept_gameable_metric": None, "start_from_base": False}
_SCHEDULER_KEY_IF_SET = {"metric": None, "mode": None}


def search_identity(search: SearchConfig) -> dict[str, Any]:
    """The search block as it names its Tune experiment (later fields only when set)."""
    data = search.model_dump(mode="json")
    data = {k: v for k, v in data.items() if k not in _KEY_IF_SET or v != _KEY_IF_SET[k]}
    data["scheduler"] = {
        k: v for k, v in data["scheduler"].items() if k not in _SCHEDULER_KEY_IF_SET or v is not None
    }
    return data


def sampled_trial(cell: Trial, params: dict[str, Any]) -> Trial:
    """The grid trial a sample makes: the cell's config with the sampled values (validated), its id
    from the sampled values and the hash of what defines its result, as a grid trial's."""
    config = TrialConfig.model_validate(with_values(cell.config.model_dump(mode="json"), params))
    axes = {**cell.axes, **params}
    readable = slug({**cell.axes, **short_values(params)})
    return Trial(id=f"{readable}-{trial_hash(config)}", axes=axes, config=config)


def max_concurrent(search: SearchConfig, cfg: TrialConfig) -> int:
    """The search's max_concurrent, or how many trials the cluster's CPUs (and GPUs) hold at once."""
    if search.max_concurrent is not None:
        return search.max_concurrent
    import ray

    total = ray.cluster_resources()
    r = cfg.resources
    fits = [total.get("CPU", 1) / (r.num_workers * r.cpus_per_worker)]
    if r.gpus_per_worker:
        fits.append(total.get("GPU", 0) / (r.num_workers * r.gpus_per_worker))
    return max(1, int(min(fits)))


def short_values(params: dict[str, Any]) -> dict[str, Any]:
    """Sampled floats to 4 significant digits, for names (params and tags keep them whole)."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in params.items()}


class SearchCallback(GridCallback):
    """GridCallback for a search: runs are keyed by Tune's trial id (samples appear as the search goes),
    sampled values are params and tags; a trial stopped early is KILLED with `seagrid.stopped`."""

    def __init__(self, tracker: Tracker, parent_id: str, cell: Trial, key: str, reason: str, **kw: Any):
        super().__init__(tracker, parent_id, {}, kw["out"], kw["board"])
        self.cell, self.key, self.reason = cell, key, reason

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "cell": self.cell, "key": self.key, "reason": self.reason}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.cell, self.key, self.reason = state["cell"], state["key"], state["reason"]

    @staticmethod
    def _tid(trial: Any) -> str:
        return trial.trial_id

    def _find_run(self, tid: str) -> str | None:
        runs = self.tracker.runs_tagged(TUNE_TRIAL_TAG, tid)
        return runs[-1].info.run_id if runs else None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        params = dict(trial.config.get("params") or {})
        grid_trial = sampled_trial(self.cell, params)
        self.trials[tid] = grid_trial
        name = run_name({**self.cell.axes, **short_values(params)}, tid)
        tags = {
            "mlflow.runName": name,
            SEARCH_TAG: self.key,
            TUNE_TRIAL_TAG: tid,
            SAMPLED_TAG: json.dumps(params, sort_keys=True),
            **{f"sample.{k}": str(v) for k, v in params.items()},
        }
        self.out.run_ids[tid] = self.tracker.start_trial(grid_trial, self.parent_id, tags=tags)
        self.out.status[tid] = "running"
        if tid not in self.board.lines:
            self.board.add(tid, name)
        self.board.start(tid)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.trial_id
        if tid in self.out.summary:  # its final report came: it ran its course
            super().on_trial_complete(iteration, trials, trial, **info)
            return
        self.tracker.stop(self.run_id(tid), self.reason)
        self.out.status[tid] = "stopped"
        if tid in self.board.lines:
            self.board.finish(tid, f"stopped ({self.reason})")


@dataclass
class SearchOutcome:
    """What one search (one grid cell) did."""

    key: str
    cell: Trial
    parent_run: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_spec: Path | None = None
    interrupted: bool = False
    wall_s: float = 0.0


def run_search(
    spec_path: str | Path,
    *,
    console: Console | None = None,
    spec: ExperimentSpec | None = None,
    verbose: bool = False,
    best_dir: Path = BEST_DIR,
    callbacks: list[Any] | None = None,
) -> list[SearchOutcome]:
    """Run (or resume) the search of every grid cell of a spec with a `search:` block."""
    console = console or console_for()
    spec = spec or load_spec(spec_path)
    if spec.search is None:
        raise SpecError(f"{spec_path}: no search block; `seagrid grid` runs a plain grid")
    tracker = Tracker(spec.name, spec.output.tracking_uri)
    cells = expand(spec, str(spec_path))
    # Every problem a user can fix (files, tracking store, output), reported at once, as a grid does.
    preflight_search(spec, str(spec_path), tracker, cells)
    refuse_if_unfit({c.id: c.config for c in cells})  # before anything starts, as a grid does
    console.print(search_summary(spec, cells), highlight=False)
    board = Board(spec.name, console, show_prints=verbose)
    result = GridResult()
    outcomes: list[SearchOutcome] = []

    def runner(
        spec_: ExperimentSpec, todo: list[Trial], tracker_: Tracker, out: GridResult, b: Board, pid: str
    ):
        for cell in todo:
            _one_search(spec_, cell, tracker_, out, b, pid, callbacks or [], outcomes)

    try:
        _invocation(spec, str(spec_path), cells, tracker, result, board, verbose, runner=runner)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: `just tune SPEC` again resumes where it stopped")
    console.print(board.table())
    for outcome in outcomes:
        if not outcome.interrupted:
            _conclude(spec, outcome, tracker, console, best_dir)
    console.print(f"MLflow: {ui_link(tracker)}", highlight=False, soft_wrap=True)
    return outcomes


def total_trials(search: SearchConfig) -> int:
    """Trials a search runs at most: num_samples times the product of its `grid` lists."""
    grids = [len(a) for raw in search.space.values() for k, a in raw.items() if k == "grid"]
    return search.num_samples * math.prod(grids)


def search_summary(spec: ExperimentSpec, cells: list[Trial]) -> str:
    """The space and the trial budget (what `just plan` adds for a search spec)."""
    s = spec.search
    assert s is not None
    per_cell = total_trials(s)
    lines = [
        f"search: {len(cells)} cell(s) x {per_cell} trials = {len(cells) * per_cell} trials at most; "
        f"{s.mode} {s.metric}; {s.algorithm} (seed {s.seed}); scheduler {s.scheduler.kind}"
        + (
            f" (grace {s.scheduler.grace_period}, max_t {s.scheduler.max_t}, "
            f"reduction {s.scheduler.reduction_factor:g}"
            + (f", rungs on {s.scheduler.metric} ({rung_metric(s)[1]})" if s.scheduler.metric else "")
            + ")"
            if s.scheduler.kind == "asha"
            else ""
        )
        + f"; max_concurrent {s.max_concurrent or 'from the cluster'}"
        + (f"; time budget {duration(s.time_budget_s)}" if s.time_budget_s else "")
        + ("; first trial: the base config's values" if s.start_from_base else ""),
    ]
    lines += [f"  {path}: {k} {a}" for path, raw in s.space.items() for k, a in raw.items()]
    lines.append(budget_line(s, cells, per_cell))
    return "\n".join(lines)


def _restored_tuner(path: Path, trainable: Any, board: Board, out: GridResult) -> Any:
    """The interrupted search's Tuner, its callbacks re-attached to this process's console and result."""
    import ray.tune

    tuner = ray.tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True)
    local = tuner._local_tuner
    assert local is not None  # Tuner.restore in this process (not a Ray client) has a local tuner
    for cb in local.get_run_config().callbacks or []:
        if isinstance(cb, SearchCallback):
            cb.attach(board, out)
    return tuner


def _new_tuner(search: Any, cell: Trial, job: Any, trainable: Any, path: Path, callbacks: list[Any]) -> Any:
    """A new Tune experiment for the cell's search, its state under `path`."""
    import ray.tune

    return ray.tune.Tuner(
        trainable,
        param_space={"cell": job.model_dump(mode="json"), "params": _domains(search)},
        tune_config=_tune_config(search, cell.config),
        run_config=ray.tune.RunConfig(
            name=path.name, storage_path=str(path.parent), callbacks=callbacks, verbose=0
        ),
    )


def _stop_left_over(tracker: Tracker, out: GridResult, board: Board, why: str) -> None:
    """Trials the time budget or an interruption cut short never got a completion event: stop their runs."""
    for tid, status in list(out.status.items()):
        if status == "running":
            tracker.stop(out.run_ids[tid], why)
            out.status[tid] = "stopped"
            if tid in board.lines:
                board.finish(tid, f"stopped ({why})")


def _search_parent(spec: ExperimentSpec, cell: Trial, key: str, tracker: Tracker, grid_parent: str) -> str:
    """The search's MLflow parent run (reopened on resume), with an acknowledged gameable metric logged."""
    search = spec.search
    assert search is not None
    name = f"search {run_name(cell.axes, cell.id)}" if cell.axes else f"search {spec.name}"
    parent = tracker.search_run(key, name, grid_parent, tags={"cell": cell.id})
    reported = per_step_metrics(cell.config) | final_metrics(cell.config)
    log_guard_override(
        tracker, parent, search, cell.config, reported, [search.metric, rung_metric(search)[0]]
    )
    return parent


def _one_search(
    spec: ExperimentSpec,
    cell: Trial,
    tracker: Tracker,
    out: GridResult,
    board: Board,
    grid_parent: str,
    extra_callbacks: list[Any],
    outcomes: list[SearchOutcome],
) -> None:
    """One cell's search: a new Tune experiment, or the interrupted one resumed (`Tuner.restore`)."""
    import ray.tune

    from core.ray_session import ensure_ray
    from grid.cluster_check import check_cluster
    from grid.storage_check import check_shared_storage
    from grid.trial import DRIVER_RESOURCES, TrialJob, run_trial

    search = spec.search
    assert search is not None
    ensure_ray()
    check_cluster({cell.id: cell.config}, board.message)  # refuse what can never be placed
    key = search_key(spec, cell)
    parent = _search_parent(spec, cell, key, tracker, grid_parent)
    outcome = SearchOutcome(key, cell, parent)
    outcomes.append(outcome)
    results_root = Path(spec.output.root).expanduser().resolve()
    path = results_root / "ray" / "searches" / key
    check_shared_storage({"output.root": results_root, "the steps root": steps_root(spec.output)})
    trainable = ray.tune.with_resources(run_trial, DRIVER_RESOURCES)
    reason = STOP_REASON[search.scheduler.kind]
    t0 = time.time()
    if ray.tune.Tuner.can_restore(str(path)):
        board.message(f"resuming the search in {path}")
        tuner = _restored_tuner(path, trainable, board, out)
    else:
        job = TrialJob(
            trial_id=cell.id,
            trial=cell.config,
            results_root=str(results_root),
            steps_root=str(steps_root(spec.output)),
            cache_dir=str(cache_dir()),
            search_metric=rung_metric(search)[0],
            objective_metric=search.metric if rung_metric(search)[0] != search.metric else None,
        )
        callbacks = [
            SearchCallback(tracker, parent, cell, key, reason, out=out, board=board),
            *extra_callbacks,
        ]
        tuner = _new_tuner(search, cell, job, trainable, path, callbacks)
    grid = tuner.fit()
    outcome.wall_s = time.time() - t0
    # Tune ends an interrupted run (Ctrl-C, SIGUSR1) like a finished one, having saved its state with the
    # trials still running: left-over trials or samples without a spent time budget mean interrupted.
    left = any(s == "running" for s in out.status.values()) or len(grid) < total_trials(search)
    budget_spent = search.time_budget_s is not None and outcome.wall_s >= search.time_budget_s
    outcome.interrupted = left and not budget_spent
    _stop_left_over(tracker, out, board, INTERRUPTED if outcome.interrupted else "time_budget")
    tracker.close_parent(parent, "KILLED" if outcome.interrupted else "FINISHED")
    if outcome.interrupted:
        raise KeyboardInterrupt(f"search {key} interrupted; `seagrid tune` again resumes it")


def _tune_config(search: SearchConfig, cfg: TrialConfig) -> Any:
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    concurrent = max_concurrent(search, cfg)
    rung, rung_mode = rung_metric(search)
    separate = rung != search.metric
    # The paper's default first (one of num_samples): the search's report compares the best with it.
    first = [base_point(search, cfg)] if search.start_from_base else []
    if search.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        # Tune wraps a Searcher in a ConcurrencyLimiter of max_concurrent_trials.
        # With its own metric when ASHA compares another one (Tune then takes neither from TuneConfig).
        own: dict[str, Any] = {"metric": search.metric, "mode": search.mode} if separate else {}
        points = [{f"params/{k}": v for k, v in p.items()} for p in first]  # Optuna's flattened names
        algo: Any = OptunaSearch(seed=search.seed, points_to_evaluate=points or None, **own)
    else:
        # A SearchGenerator limits itself (Tune ignores max_concurrent_trials for one).
        algo = BasicVariantGenerator(
            random_state=search.seed,
            max_concurrent=concurrent,
            points_to_evaluate=[{"params": p} for p in first] or None,
        )
    scheduler = None
    if search.scheduler.kind == "asha":
        s = search.scheduler
        scheduler = ASHAScheduler(
            time_attr=f"{metric_stage(rung)}/step",
            **(cast(dict[str, Any], {"metric": rung, "mode": rung_mode}) if separate else {}),
            max_t=s.max_t,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
            # A trial past the last rung finishes its training and evaluation rather than being cut.
            stop_last_trials=False,
        )
    return ray.tune.TuneConfig(
        metric=None if separate else search.metric,
        mode=None if separate else search.mode,
        num_samples=search.num_samples,
        search_alg=algo,
        scheduler=scheduler,
        max_concurrent_trials=concurrent if search.algorithm == "optuna" else None,
        time_budget_s=search.time_budget_s,
        trial_dirname_creator=lambda trial: trial.trial_id,
    )


# --- the end of a search: table, best config, plot ---------------------------------------------------------


def search_rows(tracker: Tracker, key: str, metric: str) -> list[dict[str, Any]]:
    """One row per Tune trial of the search (its latest run): sampled values, status, the metric."""
    latest: dict[str, Any] = {}
    for run in tracker.runs_tagged(SEARCH_TAG, key):
        tid = run.data.tags.get(TUNE_TRIAL_TAG)
        if tid and run.data.tags.get("seagrid.role") == "trial":
            latest[tid] = run
    rows = []
    for tid, run in latest.items():
        stopped = run.data.tags.get(STOPPED_TAG)
        status = {"FINISHED": "done", "FAILED": "failed", "RUNNING": "running"}.get(run.info.status)
        rows.append(
            {
                "tune_trial": tid,
                "trial_id": run.data.tags.get("trial_id"),
                "run_id": run.info.run_id,
                "status": status or (f"stopped ({stopped})" if stopped else "killed"),
                "params": json.loads(run.data.tags.get(SAMPLED_TAG, "{}")),
                "value": run.data.metrics.get(metric),
            }
        )
    return rows


def sort_rows(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """By the metric, best first; trials without a value last."""

    def order(row: dict[str, Any]) -> tuple[int, float]:
        v = row["value"]
        if v is None or math.isnan(v):
            return (1, 0.0)
        return (0, v if mode == "min" else -v)

    return sorted(rows, key=order)


def best_row(rows: list[dict[str, Any]], mode: str) -> dict[str, Any] | None:
    """The best trial that ran its course (a stopped trial's value is from fewer steps)."""
    done = [r for r in sort_rows(rows, mode) if r["status"] == "done" and r["value"] is not None]
    return done[0] if done else None


def best_spec(spec: ExperimentSpec, cell: Trial, row: dict[str, Any]) -> dict[str, Any]:
    """A plain grid spec (no axes, no search) whose base is the best trial's config."""
    config = sampled_trial(cell, row["params"]).config
    suffix = f"-{cell.id}" if cell.axes else ""
    search = spec.search
    assert search is not None, "a search's best trial comes from a spec with a search block"
    return {
        "name": f"{spec.name}-best{suffix}"[:80],
        "description": f"best of search {spec.name}{suffix}: {search.metric} = {row['value']:.6g} "
        f"({search.mode}), sampled {row['params']}",
        "base": config.model_dump(mode="json"),
        "output": spec.output.model_dump(mode="json", exclude_none=True),
    }


def rows_table(title: str, rows: list[dict[str, Any]], metric: str) -> Table:
    paths = list(dict.fromkeys(p for r in rows for p in r["params"]))
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    for p in paths:
        table.add_column(p)
    table.add_column(metric, justify="right")
    table.add_column("status")
    table.add_column("trial id", no_wrap=True)
    for i, r in enumerate(rows, 1):
        v = r["value"]
        table.add_row(
            str(i),
            *[f"{short_values(r['params']).get(p, '')}" for p in paths],
            "" if v is None else f"{v:.5g}",
            r["status"],
            r["trial_id"] or "",
        )
    return table


def plot_params(rows: list[dict[str, Any]], metric: str, path: Path) -> Path:
    """The metric against each searched parameter (one panel each; stopped trials hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = list(dict.fromkeys(p for r in rows for p in r["params"]))
    fig, axes = plt.subplots(1, max(1, len(paths)), figsize=(4 * max(1, len(paths)), 3.2), squeeze=False)
    for ax, p in zip(axes[0], paths, strict=False):
        for done, style in ((True, {"color": "C0"}), (False, {"facecolors": "none", "edgecolors": "C3"})):
            pts = [
                (r["params"][p], r["value"])
                for r in rows
                if p in r["params"] and r["value"] is not None and (r["status"] == "done") == done
            ]
            if pts:
                xs = [x if isinstance(x, int | float) else str(x) for x, _ in pts]
                ax.scatter(xs, [y for _, y in pts], label="finished" if done else "stopped", **style)
        if p.endswith(("weight", "lr")) and all(
            isinstance(r["params"].get(p), int | float) and r["params"][p] > 0
            for r in rows
            if p in r["params"]
        ):
            ax.set_xscale("log")
        defaults = [(r["params"][p], r["value"]) for r in rows if r.get("default") and p in r["params"]]
        defaults = [(x if isinstance(x, int | float) else str(x), y) for x, y in defaults if y is not None]
        if defaults:  # the paper's default setting, run as the first trial
            ax.scatter(*zip(*defaults, strict=True), marker="*", s=160, color="C2", label="default", zorder=3)
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _conclude(
    spec: ExperimentSpec, outcome: SearchOutcome, tracker: Tracker, console: Console, best_dir: Path
) -> None:
    """Print the trials sorted by the metric and the best config; write the best spec and the plot;
    log them (and the table as CSV) to the search's parent run."""
    s = spec.search
    assert s is not None
    rows = sort_rows(search_rows(tracker, outcome.key, s.metric), s.mode)
    outcome.rows = rows
    console.print(rows_table(f"{outcome.key}: {len(rows)} trials by {s.metric} ({s.mode})", rows, s.metric))
    reports = Path(spec.output.root).expanduser().resolve() / "reports" / outcome.key
    reports.mkdir(parents=True, exist_ok=True)
    outcome.best = best_row(rows, s.mode)
    files = conclude_search(spec, outcome, tracker, console, reports)  # marks the default, adds numbers
    (reports / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    files.append(reports / "trials.json")
    if rows:
        files.append(plot_params(rows, s.metric, reports / "metric_vs_params.png"))
    if outcome.best is not None:
        data = best_spec(spec, outcome.cell, outcome.best)
        target = Path(best_dir) / f"{data['name']}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(data, sort_keys=False))
        outcome.best_spec = target
        files.append(target)
        console.print(
            f"best: {s.metric} = {outcome.best['value']:.6g} with {outcome.best['params']} "
            f"({outcome.best['trial_id']}); ready to run: just grid {target}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print("no trial of this search finished; no best config yet", highlight=False)
    for f in files:
        tracker.client.log_artifact(outcome.parent_run, str(f), "search")

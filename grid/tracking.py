"""MLflow bookkeeping of a grid: one parent run per grid, one child run per trial, written by the driver."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.config.identity import content_hash, flatten
from grid.expand import Trial
from grid.redact import redact, redact_flat, scrub, secret_values
from grid.tracking_check import setting_name

DEFAULT_STORE = Path("mlflow")
PARENT_TAG = "seagrid.role"
SEARCH_TAG = "seagrid.search"
STOPPED_TAG = "seagrid.stopped"
INTERRUPTED = "interrupted"  # the STOPPED_TAG value of a run an interruption cut short (reopened later)
# How many invocations have run a trial's run (it is reopened after an interruption).
ATTEMPT_TAG = "seagrid.attempt"
MAX_PARAMS_PER_BATCH = 100
# MLflow's UI (3.x) opens an experiment by its kind; without the tag it guesses GenAI (traces, judges)
# for a fresh experiment. The value the UI calls "Machine learning" (mlflow/server/js ExperimentKind).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
MAX_RUN_NAME = 250
GENERIC_LEAVES = frozenset({"name"})
# Text artifacts are scrubbed of secret values before they are logged; other files are copied as they are.
TEXT_SUFFIXES = frozenset({".txt", ".json", ".jsonl", ".yaml", ".yml", ".md", ".csv", ".log"})


def default_tracking_uri(root: Path | None = None, *, create: bool = True) -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store under ./mlflow (absolute, so Ray workers agree); its
    folder is made only with `create` (`seagrid plan` writes nothing)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    store = (root or Path.cwd()) / DEFAULT_STORE
    if create:
        store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(store / 'mlflow.db').resolve()}"


def experiment_url(server: str, experiment_id: str, view: str = "ml") -> str:
    """The UI page of an experiment. MLflow 3's UI shows every experiment in its GenAI view (traces)
    unless the URL or the browser's saved choice says 'machine_learning' (the "Model training"
    switch); the experiment kind tag does not decide it (checked in 3.17)."""
    page = f"{server.rstrip('/')}/#/experiments/{experiment_id}"
    return f"{page}?workflowType=machine_learning" if view == "ml" else page


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a local sqlite store, None for a server or another backend."""
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts in the `artifacts/` folder beside a local sqlite store's database (the store is one
    self-contained folder); a server decides for itself."""
    db = sqlite_path(tracking_uri)
    return (db.parent / "artifacts").resolve().as_uri() if db else None


def relocate_artifacts(tracking_uri: str) -> list[str]:
    """Point a moved local store at its own `artifacts/` folder again; returns the old roots rewritten.

    MLflow records absolute artifact paths. When a store folder is moved or copied (a re-cloned
    repository, another machine), the recorded `.../artifacts` root no longer exists while the folder
    beside the database does: the experiments' and runs' paths are rewritten to it.
    """
    db, new_root = sqlite_path(tracking_uri), default_artifact_location(tracking_uri)
    if db is None or new_root is None or not db.is_file():
        return []
    moved: list[str] = []
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"experiments", "runs"} <= tables:
            return []
        roots = [r[0] for r in con.execute("SELECT DISTINCT artifact_location FROM experiments")]
        for old in roots:
            if not old or old == new_root or not old.startswith("file://") or not old.endswith("/artifacts"):
                continue
            if Path(urllib.parse.unquote(urllib.parse.urlparse(old).path)).exists():
                continue  # another live store's folder (a shared root), not a move
            con.execute(
                "UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?", (new_root, old)
            )
            con.execute(
                "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE substr(artifact_uri, 1, ?) = ?",
                (new_root, len(old) + 1, len(old) + 1, old + "/"),
            )
            moved.append(old)
    return moved


def _name_parts(path: str) -> list[str]:
    parts = path.split(".")
    # 'method.name' says 'method': a leaf called 'name' names its section.
    return parts[:-1] if len(parts) > 1 and parts[-1] in GENERIC_LEAVES else parts


def axis_labels(paths: list[str]) -> dict[str, str]:
    """Short names of axis paths: the last part ('model.encoder' -> 'encoder', 'method.name' -> 'method'),
    or as many trailing parts as it takes to tell them apart ('stage1.lr' and 'stage2.lr' stay whole)."""
    parts = {p: _name_parts(p) for p in paths}
    depth = dict.fromkeys(paths, 1)

    def label(p: str) -> str:
        return ".".join(parts[p][-depth[p] :])

    while True:
        seen: dict[str, list[str]] = {}
        for p in paths:
            seen.setdefault(label(p), []).append(p)
        clashes = [p for group in seen.values() if len(group) > 1 for p in group if depth[p] < len(parts[p])]
        if not clashes:
            break
        for p in clashes:
            depth[p] += 1
    labels = {p: label(p) for p in paths}
    if len(set(labels.values())) < len(labels):
        return {p: p for p in paths}  # still ambiguous: the full paths
    return labels


def _value_text(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"#{content_hash(value, 6)}"  # as in the trial id's slug
    return str(value)


def run_name(axes: dict[str, Any], fallback: str) -> str:
    """A trial run's name from its axis values in spec order ('name=sea, encoder=tiny-clip')."""
    labels = axis_labels(list(axes))
    text = ", ".join(f"{labels[p]}={_value_text(v)}" for p, v in axes.items())
    return (text or fallback)[:MAX_RUN_NAME]


def code_version() -> str:
    """The git commit of the working tree (a tag, never part of a trial id)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class RunInfo:
    """What the store says about the latest run of one trial."""

    run_id: str
    status: str
    metrics: dict[str, float]


class Tracker:
    """Reads and writes the grid's MLflow experiment; every write happens in the driver process.

    Nothing secret is written: params, tags and text artifacts pass through grid.redact.
    """

    def __init__(self, grid_name: str, tracking_uri: str | None = None) -> None:
        self.grid = grid_name
        self.uri = tracking_uri or default_tracking_uri(create=False)
        self.setting = setting_name(tracking_uri)
        self._client = None
        self._experiment_id: str | None = None

    @property
    def client(self):
        """The MlflowClient, made on first use (a sqlite store is created only when written to)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            from grid.tracking_check import check_store

            check_store(self.uri, self.setting)  # seconds, not MLflow's minutes of retries
            db = sqlite_path(self.uri)
            if db is not None:  # the store's folder, made on first use (never by a read of a missing store)
                db.parent.mkdir(parents=True, exist_ok=True)
            relocate_artifacts(self.uri)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        """The grid's experiment, created (or tagged as a model-training experiment) on first write."""
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.grid)
            if exp is None:
                self._experiment_id = self.client.create_experiment(
                    self.grid,
                    artifact_location=default_artifact_location(self.uri),
                    tags={"grid": self.grid, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            else:
                self._experiment_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older seagrid; a user's choice stays
                    self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return self._experiment_id

    def existing_experiment_id(self) -> str | None:
        """The experiment's id if it exists; never creates one (plan must write nothing)."""
        if self._experiment_id is None:
            db = sqlite_path(self.uri)
            if db is not None and not db.exists():
                return None
            exp = self.client.get_experiment_by_name(self.grid)
            self._experiment_id = exp.experiment_id if exp else None
        return self._experiment_id

    def trial_runs(self, ids: list[str] | None = None) -> dict[str, RunInfo]:
        """Latest child run per trial id (a FINISHED run wins over later failed or killed ones).

        With `ids`, keyed by those ids, a run recorded under another spelling of the id's readable part
        (`lr=1e-3-<hash>` before ids were built from validated values) found by the config hash."""
        latest = self._latest_runs()
        if ids is None:
            return latest
        by_hash: dict[str, RunInfo] = {}
        for tid, info in latest.items():
            old = by_hash.get(_hash_part(tid))
            if old is None or info.status == "FINISHED" or old.status != "FINISHED":
                by_hash[_hash_part(tid)] = info
        found = {tid: latest.get(tid) or by_hash.get(_hash_part(tid)) for tid in ids}
        return {tid: info for tid, info in found.items() if info is not None}

    def _latest_runs(self) -> dict[str, RunInfo]:
        exp_id = self.existing_experiment_id()
        if exp_id is None:
            return {}
        runs = self.client.search_runs(
            [exp_id],
            filter_string=f"tags.grid = '{self.grid}' and tags.{PARENT_TAG} = 'trial'",
            order_by=["attributes.start_time ASC"],
            max_results=50000,
        )
        latest: dict[str, RunInfo] = {}
        for run in runs:
            tid = run.data.tags.get("trial_id")
            info = RunInfo(run.info.run_id, run.info.status, dict(run.data.metrics))
            # Oldest first: a later run replaces an earlier one, except that a failed or killed attempt
            # never hides a finished one.
            if tid and (
                info.status == "FINISHED" or not (tid in latest and latest[tid].status == "FINISHED")
            ):
                latest[tid] = info
        return latest

    def find_parent_run(self) -> str | None:
        """The grid's parent run id if the store has one; never creates anything."""
        exp_id = self.existing_experiment_id()
        if exp_id is None:
            return None
        runs = self.client.search_runs(
            [exp_id],
            filter_string=f"tags.grid = '{self.grid}' and tags.{PARENT_TAG} = 'grid'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def parent_run(self, spec_path: str | None = None) -> str:
        """The grid's parent run, RUNNING: created on first use, reopened by every later invocation
        (close_parent ends it when the invocation does)."""
        self.experiment_id  # noqa: B018 (creates and tags the experiment)
        run_id = self.find_parent_run()
        if run_id is not None:
            if self.client.get_run(run_id).info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        tags = {"grid": self.grid, PARENT_TAG: "grid", "mlflow.runName": self.grid}
        if spec_path:
            tags["spec_path"] = spec_path
        return self.client.create_run(self.experiment_id, tags=redact_flat(tags)).info.run_id

    def search_run(self, key: str, name: str, parent_id: str, tags: dict[str, str] | None = None) -> str:
        """A search's parent run (tag `seagrid.search`), nested in the grid's parent run, RUNNING:
        created on first use, reopened when the search resumes."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{SEARCH_TAG} = '{key}' and tags.{PARENT_TAG} = 'search'",
            max_results=1,
        )
        if runs:
            if runs[0].info.status != "RUNNING":
                self.client.update_run(runs[0].info.run_id, status="RUNNING")
            return runs[0].info.run_id
        all_tags = {
            "grid": self.grid,
            PARENT_TAG: "search",
            SEARCH_TAG: key,
            "mlflow.parentRunId": parent_id,
            "mlflow.runName": name[:MAX_RUN_NAME],
            **(tags or {}),
        }
        return self.client.create_run(self.experiment_id, tags=redact_flat(all_tags)).info.run_id

    def runs_tagged(self, tag: str, value: str) -> list[Any]:
        """Every run of the experiment with `tag` = `value`, oldest first."""
        exp_id = self.existing_experiment_id()
        if exp_id is None:
            return []
        return self.client.search_runs(
            [exp_id],
            filter_string=f"tags.`{tag}` = '{value}'",
            order_by=["attributes.start_time ASC"],
            max_results=50000,
        )

    def stop(self, run_id: str, reason: str, summary: dict[str, Any] | None = None, step: int = 0) -> None:
        """A trial a scheduler or a budget stopped early: KILLED with `seagrid.stopped` = reason (never
        FAILED nor FINISHED: it neither broke nor ran its course)."""
        if summary:
            numeric = {k: float(v) for k, v in summary.items() if isinstance(v, int | float)}
            self.log_metrics(run_id, numeric, step=step)
        self.client.set_tag(run_id, STOPPED_TAG, reason)
        self.client.set_terminated(run_id, "KILLED")

    def close_parent(self, run_id: str, status: str) -> None:
        """End the grid's parent run for this invocation: FINISHED, FAILED (a trial failed) or KILLED."""
        self.client.set_terminated(run_id, status)

    def interrupted_run(self, trial_id: str) -> Any | None:
        """The trial's latest run if an interrupted invocation left it (RUNNING after a SIGKILL, KILLED
        after a SIGINT) and no scheduler or budget stopped it on purpose; None otherwise."""
        runs = [r for r in self.runs_tagged("trial_id", trial_id) if r.data.tags.get(PARENT_TAG) == "trial"]
        if not runs:
            return None
        last = runs[-1]
        if (
            last.info.status in ("RUNNING", "KILLED")
            and last.data.tags.get(STOPPED_TAG, INTERRUPTED) == INTERRUPTED
        ):
            return last
        return None

    def start_trial(self, trial: Trial, parent_id: str, tags: dict[str, str] | None = None) -> str:
        """The trial's run for this attempt: the run an interrupted invocation left is reopened (so that a
        trial has one run however often it was interrupted; its steps resume from their checkpoints),
        else a new child run named by its axis values, every config value a param."""
        old = self.interrupted_run(trial.id)
        if old is not None:
            run_id = old.info.run_id
            attempt = int(old.data.tags.get(ATTEMPT_TAG, "1")) + 1
            self.client.update_run(run_id, status="RUNNING")
            if STOPPED_TAG in old.data.tags:
                self.client.delete_tag(run_id, STOPPED_TAG)
            for key, value in redact_flat({ATTEMPT_TAG: str(attempt), **(tags or {})}).items():
                self.client.set_tag(run_id, key, value)
            return run_id
        return self._new_trial_run(trial, parent_id, tags)

    def _new_trial_run(self, trial: Trial, parent_id: str, tags: dict[str, str] | None) -> str:
        from mlflow.entities import Param

        secrets = secret_values()
        all_tags = {
            "grid": self.grid,
            "trial_id": trial.id,
            PARENT_TAG: "trial",
            "mlflow.parentRunId": parent_id,
            "mlflow.runName": run_name(trial.axes, trial.id),
            "code_version": code_version(),
            **{f"axis.{k}": v for k, v in trial.axes.items()},
            **(tags or {}),
        }
        run_id = self.client.create_run(self.experiment_id, tags=redact_flat(all_tags, secrets)).info.run_id
        config = redact(trial.config.model_dump(mode="json"), secrets)
        params = [Param(k, v) for k, v in redact_flat(flatten(config), secrets).items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
        self.client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")
        return run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def finish(self, run_id: str, summary: dict[str, Any], step: int = 0) -> None:
        """Log the trial's summary at `step` (its last training step, so that a final value of a metric
        that also has a history, such as diag/tacs, extends its curve instead of adding a point at 0)."""
        numeric = {
            k: float(v) for k, v in summary.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        self.log_metrics(run_id, numeric, step=step)
        texts = {f"result.{k}": v for k, v in summary.items() if k not in numeric}
        for key, value in redact_flat(texts).items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, run_id: str, traceback_text: str) -> None:
        self.client.log_text(run_id, scrub(traceback_text), "traceback.txt")
        self.client.set_terminated(run_id, "FAILED")

    def kill(self, run_id: str) -> None:
        """A trial run the invocation left unfinished (interrupted): KILLED, so it never stays RUNNING."""
        self.client.set_terminated(run_id, "KILLED")

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        """Log a folder; text files holding a secret value are logged scrubbed (a copy, never the original)."""
        secrets = secret_values()
        texts = [
            f for f in Path(local_dir).rglob("*") if secrets and f.is_file() and f.suffix in TEXT_SUFFIXES
        ]
        dirty = {f: clean for f in texts if (clean := scrub(raw := _read(f), secrets)) != raw}
        if not dirty:
            self.client.log_artifacts(run_id, str(local_dir), artifact_path)
            return
        with tempfile.TemporaryDirectory(prefix="seagrid-scrubbed-") as tmp:
            copy = Path(tmp) / "a"
            shutil.copytree(local_dir, copy)
            for f, clean in dirty.items():
                (copy / f.relative_to(local_dir)).write_text(clean)
            self.client.log_artifacts(run_id, str(copy), artifact_path)


def _hash_part(trial_id: str) -> str:
    """The config hash that ends a trial id (`<readable part>-<hash>`)."""
    return trial_id.rsplit("-", 1)[-1]


def _read(path: Path) -> str:
    return path.read_text(errors="replace")

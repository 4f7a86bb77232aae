"""MLflow bookkeeping of a grid: one parent run per grid, one child run per trial, written by the driver."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from core.config.identity import flatten
from grid.expand import Trial

DEFAULT_STORE = Path("mlflow")
PARENT_TAG = "seagrid.role"
MAX_PARAMS_PER_BATCH = 100


def default_tracking_uri(root: Path | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store under ./mlflow (absolute, so Ray workers agree)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    store = (root or Path.cwd()) / DEFAULT_STORE
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(store / 'mlflow.db').resolve()}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts beside a local sqlite store (mlflow/artifacts); a server decides for itself."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return (db.parent / "artifacts").resolve().as_uri()
    return None


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
    """Reads and writes the grid's MLflow experiment; every write happens in the driver process."""

    def __init__(self, grid_name: str, tracking_uri: str | None = None) -> None:
        self.grid = grid_name
        self.uri = tracking_uri or default_tracking_uri()
        self._client = None
        self._experiment_id: str | None = None

    @property
    def client(self):
        """The MlflowClient, made on first use (a sqlite store is created only when written to)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.grid)
            if exp is None:
                self._experiment_id = self.client.create_experiment(
                    self.grid, artifact_location=default_artifact_location(self.uri), tags={"grid": self.grid}
                )
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def existing_experiment_id(self) -> str | None:
        """The experiment's id if it exists; never creates one (plan must write nothing)."""
        if self._experiment_id is None:
            if self.uri.startswith("sqlite:///") and not Path(self.uri.removeprefix("sqlite:///")).exists():
                return None
            exp = self.client.get_experiment_by_name(self.grid)
            self._experiment_id = exp.experiment_id if exp else None
        return self._experiment_id

    def trial_runs(self) -> dict[str, RunInfo]:
        """Latest child run per trial id (a FINISHED run wins over later failed or killed ones)."""
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
            if tid and not (tid in latest and latest[tid].status == "FINISHED"):
                latest[tid] = info
        return latest

    def parent_run(self, spec_path: str | None = None) -> str:
        """The grid's parent run, created on first use and reused by every later invocation."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.grid = '{self.grid}' and tags.{PARENT_TAG} = 'grid'",
            max_results=1,
        )
        if runs:
            return runs[0].info.run_id
        tags = {"grid": self.grid, PARENT_TAG: "grid", "mlflow.runName": self.grid}
        if spec_path:
            tags["spec_path"] = spec_path
        return self.client.create_run(self.experiment_id, tags=tags).info.run_id

    def start_trial(self, trial: Trial, parent_id: str, tags: dict[str, str] | None = None) -> str:
        """A child run for one attempt at a trial, with every config value as a param."""
        from mlflow.entities import Param

        all_tags = {
            "grid": self.grid,
            "trial_id": trial.id,
            PARENT_TAG: "trial",
            "mlflow.parentRunId": parent_id,
            "mlflow.runName": trial.id,
            "code_version": code_version(),
            **{f"axis.{k}": str(v) for k, v in trial.axes.items()},
            **(tags or {}),
        }
        run_id = self.client.create_run(self.experiment_id, tags=all_tags).info.run_id
        params = [Param(k, str(v)) for k, v in flatten(trial.config.model_dump(mode="json")).items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[i : i + MAX_PARAMS_PER_BATCH])
        self.client.log_text(
            run_id, yaml.safe_dump(trial.config.model_dump(mode="json"), sort_keys=False), "config.yaml"
        )
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
        for key, value in summary.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                self.client.set_tag(run_id, f"result.{key}", str(value))
        self.client.set_terminated(run_id, "FINISHED")

    def fail(self, run_id: str, traceback_text: str) -> None:
        self.client.log_text(run_id, traceback_text, "traceback.txt")
        self.client.set_terminated(run_id, "FAILED")

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

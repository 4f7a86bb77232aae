"""The grid command killed mid-grid (SIGKILL of its whole process group, then SIGINT): reruns skip the
finished trial, resume the interrupted one from its checkpoint, and MLflow ends with one FINISHED run each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]

# Trial "short" (4 steps) finishes while trial "long" (24 steps, a checkpoint every 4) is mid-stage.
SPEC = """\
name: interrupted
base:
  model: {{llm: tiny-llama, encoder: tiny-clip}}
  data: {{stage1: {{source: synthetic, synthetic: {{num_samples: 32, seed: 4}}}}}}
  stage1: {{lr: 0.01, global_batch_size: 8, micro_batch_size: 8, epochs: 1, checkpoint_every: 4}}
  resources: {{num_workers: 1, cpus_per_worker: 0.5}}
grid:
  axes:
    stage1.epochs: [1, 6]
output: {{root: {root}, tracking_uri: "sqlite:///{db}", max_concurrent_trials: 2}}
"""
DRIVER = "import sys; from grid.cli import main; sys.exit(main(['grid', sys.argv[1]]))"


def _start(spec: Path) -> subprocess.Popen:
    env = {**os.environ, "SEAGRID_RAY": "local", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(spec)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: SIGKILL takes its Ray session down with it
    )


def _runs(client: MlflowClient) -> dict[str, list]:
    exp = client.get_experiment_by_name("interrupted")
    if exp is None:
        return {}
    by_epochs: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], "tags.`seagrid.role` = 'trial'"):
        by_epochs.setdefault(r.data.params["stage1.epochs"], []).append(r)
    return by_epochs


def _wait(what: str, ready, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the grid ended before {what}:\n{proc.stdout.read()[-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def _checkpoints(root: Path) -> list[Path]:
    return [p for p in root.rglob("checkpoint_*") if p.is_dir()]


@pytest.mark.slow
def test_grid_killed_then_interrupted_resumes_with_one_run_per_trial(tmp_path: Path) -> None:
    root, db = tmp_path / "results", tmp_path / "mlflow.db"
    spec = tmp_path / "interrupted.yaml"
    spec.write_text(SPEC.format(root=root, db=db))
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")

    def status(epochs: str) -> str | None:
        runs = _runs(client).get(epochs, [])
        return runs[-1].info.status if runs else None

    # 1. SIGKILL (the machine's OOM killer, a closed terminal): once the short trial finished and the long
    # one has a checkpoint, the whole process group dies; the long trial's run is left RUNNING.
    proc = _start(spec)
    _wait(
        "the short trial to finish and a checkpoint",
        lambda: status("1.0") == "FINISHED" and _checkpoints(root),
        proc,
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert status("6.0") == "RUNNING"

    # 2. SIGINT (Ctrl-C) once the rerun has reopened the long trial's run: it ends KILLED, never RUNNING.
    proc = _start(spec)
    reopened = lambda: any(r.data.tags.get("seagrid.attempt") == "2" for r in _runs(client).get("6.0", []))  # noqa: E731
    _wait("the long trial's run to be reopened", reopened, proc)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out[-3000:]  # as a shell reports Ctrl-C
    assert status("6.0") == "KILLED", out[-3000:]
    exp = client.get_experiment_by_name("interrupted")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`seagrid.role` = 'grid'")
    assert parent.info.status == "KILLED"

    # 3. The rerun skips the finished trial and resumes the other from its latest checkpoint.
    proc = _start(spec)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "1 already done" in out, out[-3000:]
    # Issue 22: the summary ends the output; no worker line (Ray prefixes them "(... pid=N)") reaches the
    # terminal, before it or after it: they go to the grid's log file, late ones too.
    assert out.rstrip().splitlines()[-1].startswith("MLflow:"), out[-3000:]
    assert " pid=" not in out, out[-3000:]
    runs = _runs(client)
    assert {k: [r.info.status for r in v] for k, v in runs.items()} == {
        "1.0": ["FINISHED"],
        "6.0": ["FINISHED"],
    }
    (long_run,) = runs["6.0"]
    assert long_run.data.tags["seagrid.attempt"] == "3"
    result = json.loads((Path(long_run.data.tags["result.stage1/dir"]) / "result.json").read_text())
    assert result["resumed_from_step"] >= 4 and result["resumed_from_step"] % 4 == 0
    assert result["steps"] == 24

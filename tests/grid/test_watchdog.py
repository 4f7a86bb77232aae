"""A silent driver recovered (grid/watchdog.py): a trial whose reports stall is ended with its Tune run and
resumed in a fresh Ray session from its checkpoint, with one MLflow run and every step's metric kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from grid.watchdog import Watchdog

REPO = Path(__file__).resolve().parents[2]

# 48 samples, micro = global = 8: 6 steps an epoch, 12 in two; a checkpoint every 2 steps.
SPEC = """\
name: silent
base:
  data: {{stage1: {{source: synthetic, synthetic: {{num_samples: 48, seed: 7}}}}}}
  stage1: {{lr: 0.01, global_batch_size: 8, micro_batch_size: 8, epochs: 2, checkpoint_every: 2}}
  resources: {{num_workers: 1, cpus_per_worker: 1}}
output: {{root: {root}, tracking_uri: "sqlite:///{db}", watchdog_minutes: 2.5}}
"""
DRIVER = "import sys; from grid.cli import main; sys.exit(main(['grid', sys.argv[1]]))"


def test_the_watchdog_fires_only_on_silence_of_running_trials() -> None:
    class T:
        trial_id = "a"

    dog = Watchdog(minutes=1 / 600)  # 0.1 s
    assert not dog.stop_all()  # nothing running: nothing to watch
    dog.on_trial_start(0, [], T())
    assert not dog.stop_all()
    time.sleep(0.2)
    assert dog.stop_all() and "no running trial has reported" in dog.message()
    off = Watchdog(minutes=None)
    off.on_trial_start(0, [], T())
    assert not off.stop_all()


@pytest.mark.slow
def test_a_stalled_trial_is_resumed_in_a_fresh_ray_session(tmp_path: Path) -> None:
    root, db = tmp_path / "results", tmp_path / "mlflow.db"
    spec = tmp_path / "silent.yaml"
    spec.write_text(SPEC.format(root=root, db=db))
    marker = tmp_path / "stalled"
    env = {
        **os.environ,
        "SEAGRID_RAY": "local",
        "PYTHONPATH": str(REPO),
        # After step 4's report (and its checkpoint), the reports stall for 30 minutes, once; the
        # watchdog (2.5 min: above a trial's start on a loaded 2-core machine) ends it long before.
        "SEAGRID_TEST_STALL": f"{marker}:4:1800",
    }
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(spec)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert marker.exists() and time.time() - t0 < 1500  # it stalled, and did not wait the stall out
    assert "no running trial has reported for" in out.stdout and "fresh Ray session" in out.stdout

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("silent")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # reopened, not duplicated
    history = client.get_metric_history(runs[0].info.run_id, "stage1/loss")
    assert sorted({m.step for m in history}) == list(range(1, 13))  # nothing lost
    result = json.loads(next(root.rglob("stage1-*/result.json")).read_text())
    assert result["resumed_from_step"] in (2, 4) and result["steps"] == 12  # from a checkpoint

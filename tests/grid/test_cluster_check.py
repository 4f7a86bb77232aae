"""The cluster is checked against each trial's workers before Tune starts (grid/cluster_check.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from grid.cluster_check import ClusterTooSmallError, Need, check_cluster, cluster_findings, fits, live_nodes
from grid.spec import TrialConfig

REPO = Path(__file__).resolve().parents[2]


def _trial(workers: int, gpus: float, cpus: float = 1) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "stage1": {"global_batch_size": 16 * workers},
            "resources": {"num_workers": workers, "gpus_per_worker": gpus, "cpus_per_worker": cpus},
        }
    )


def test_workers_spread_over_nodes_unless_one_node_is_asked() -> None:
    two = [{"CPU": 8, "GPU": 4}, {"CPU": 8, "GPU": 4}]
    assert fits(Need(8, 1, 1), two)  # PACK spreads 4 + 4
    assert not fits(Need(8, 1, 1, one_node=True), two)
    assert not fits(Need(3, 5, 1), two)  # each node holds one 5-CPU worker: two, not three
    assert fits(Need(2, 5, 1), two)
    assert not fits(Need(1, 1, 0.5), [{"CPU": 0.5, "GPU": 8}])


def test_with_an_autoscaler_the_finding_says_the_grid_waits() -> None:
    found = cluster_findings({"big": _trial(2, 4)}, [{"CPU": 16, "GPU": 1}], autoscaler=True)
    assert len(found) == 1 and "waits for the autoscaler" in found[0] and "trial big" in found[0]


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_a_local_session_with_two_gpus(ray_gpus) -> None:
    """A real Ray session given 2 (fake) GPUs: a 2x1-GPU trial passes, a 4x1-GPU one is refused with
    what it needs and what the cluster has."""
    assert live_nodes() == [{"CPU": 2.0, "GPU": 2.0}]
    said: list[str] = []
    check_cluster({"ok": _trial(2, 1)}, said.append)
    assert said == []
    with pytest.raises(ClusterTooSmallError) as err:
        check_cluster({"ok": _trial(2, 1), "big": _trial(4, 1)}, said.append)
    text = str(err.value)
    assert text.startswith("trial big needs 4 worker(s) x (1 GPU, 1 CPU)") and "\n" not in text
    assert "1 node(s): 2 CPU + 2 GPU" in text and "no autoscaler" in text


@pytest.fixture
def ray_gpus():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False)
    yield
    ray.shutdown()


CLUSTER = """
import json, ray
from ray.cluster_utils import Cluster
from grid.cluster_check import cluster_findings, live_nodes
from grid.spec import TrialConfig

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
cluster.add_node(num_cpus=4, num_gpus=2)
cluster.add_node(num_cpus=4, num_gpus=2)
cluster.wait_for_nodes()
ray.init(address=cluster.address)
def trial(n, g):
    return TrialConfig.model_validate({"stage1": {"global_batch_size": 16 * n},
        "resources": {"num_workers": n, "gpus_per_worker": g, "cpus_per_worker": 2}})
nodes = sorted(live_nodes(), key=lambda n: (n["GPU"], n["CPU"]))
found = cluster_findings({"four": trial(4, 1), "six": trial(6, 1), "fat": trial(1, 3)}, nodes, autoscaler=False)
print("RESULT " + json.dumps({"nodes": nodes, "found": found}))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_a_three_node_cluster(tmp_path: Path) -> None:
    """ray.cluster_utils.Cluster: 4 one-GPU workers spread over two 2-GPU nodes; 6, or one 3-GPU worker,
    can never be placed."""
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SEAGRID_RAY")}
    env.update(RAY_TMPDIR=str(_short_tmp()), PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    out = subprocess.run(
        [sys.executable, "-c", CLUSTER], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    result = json.loads(
        next(x for x in out.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT ")
    )
    assert result["nodes"] == [{"CPU": 2.0, "GPU": 0.0}, {"CPU": 4.0, "GPU": 2.0}, {"CPU": 4.0, "GPU": 2.0}]
    assert [f.split(" needs")[0] for f in result["found"]] == ["trial six", "trial fat"]


def _short_tmp() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="sg-", dir="/tmp"))  # Ray's socket paths must stay short


SPEC = """\
name: toolarge
base:
  data: {{stage1: {{source: synthetic, synthetic: {{num_samples: 16}}}}}}
  stage1: {{global_batch_size: 16, micro_batch_size: 16}}
  resources: {{num_workers: 1, gpus_per_worker: 1, gpu_memory_gb: 80}}
output: {{root: {root}, tracking_uri: "sqlite:///{db}"}}
"""


@pytest.mark.slow
def test_the_grid_refuses_a_trial_the_local_cluster_cannot_hold(tmp_path: Path) -> None:
    """`seagrid grid` on a machine without GPUs, for a 1-GPU trial: exit 2 before Tune starts, one
    sentence naming the trial, its need and the cluster."""
    spec = tmp_path / "toolarge.yaml"
    spec.write_text(SPEC.format(root=tmp_path / "results", db=tmp_path / "mlflow.db"))
    env = {**os.environ, "SEAGRID_RAY": "local", "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    driver = "import sys; from grid.cli import main; sys.exit(main(['grid', sys.argv[1]]))"
    out = subprocess.run(
        [sys.executable, "-c", driver, str(spec)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, (out.stdout + out.stderr)[-3000:]
    error = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(error) == 1 and "needs 1 worker(s) x (1 GPU, 1 CPU)" in error[0] and "+ 0 GPU" in error[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "results" / "ray").exists()  # Tune never started

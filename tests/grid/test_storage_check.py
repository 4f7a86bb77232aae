"""On more than one node, output.root and the steps root must be one shared directory (grid/storage_check.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Head and a second node from ray.cluster_utils.Cluster: both on this machine, so the directories are shared.
SHARED = """
import json, sys, ray
from pathlib import Path
from ray.cluster_utils import Cluster
from grid.storage_check import storage_findings

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address)
root = Path(sys.argv[1])
found = storage_findings({"output.root": root, "the steps root": root / "steps"})
left = sorted(p.name for p in root.rglob(".seagrid-shared-check*"))
print("RESULT " + json.dumps({"nodes": len(ray.nodes()), "found": found, "left": left}))
ray.shutdown()
cluster.shutdown()
"""

# The second node runs in its own mount namespace with a tmpfs over the results directory: a node-local
# directory at the same path, as a node without the shared mount would have.
LOCAL = """
import json, os, subprocess, sys, time, ray
from pathlib import Path
from ray.cluster_utils import Cluster
from grid.storage_check import StorageNotSharedError, check_shared_storage

root = Path(sys.argv[1])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
ray_bin = str(Path(sys.executable).parent / "ray")
node = subprocess.Popen(["unshare", "-m", "sh", "-c",
    f"mount -t tmpfs none {root} && exec {ray_bin} start --address={cluster.address} --num-cpus=1 --block"])
ray.init(address=cluster.address)
deadline = time.time() + 120
while sum(n["Alive"] for n in ray.nodes()) < 2:
    assert node.poll() is None and time.time() < deadline, "the second node did not join"
    time.sleep(0.5)
try:
    check_shared_storage({"output.root": root})
    message = None
except StorageNotSharedError as err:
    message = str(err)
print("RESULT " + json.dumps({"message": message}))
ray.shutdown()
node.terminate()  # `ray start --block` stops the node's processes as it exits
node.wait(60)
cluster.shutdown()
"""


def _run(script: str, root: Path) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="sg-", dir="/tmp"))  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SEAGRID_RAY", "RAY_AUTH_MODE")}
    env.update(
        RAY_TMPDIR=str(tmp),
        HOME=str(tmp / "home"),
        PYTHONPATH=str(REPO),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script, str(root)],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.slow
def test_two_nodes_on_one_filesystem_pass(tmp_path: Path) -> None:
    result = _run(SHARED, tmp_path / "results")
    assert result == {"nodes": 2, "found": [], "left": []}  # checked on both nodes, markers removed


def _can_unshare() -> bool:
    probe = (
        subprocess.run(["unshare", "-m", "true"], capture_output=True) if shutil.which("unshare") else None
    )
    return probe is not None and probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(
    not _can_unshare(), reason="needs mount namespaces (unshare -m) for a node-local directory"
)
def test_a_node_local_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "results"
    root.mkdir()
    result = _run(LOCAL, root)
    message = result["message"]
    assert message is not None and message.startswith(
        f"output.root {root} is not the directory the driver wrote"
    )
    assert "shared filesystem" in message and "\n" not in message

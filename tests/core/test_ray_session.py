"""ensure_ray against real `ray start --head` clusters: join a live one, ignore a stale address file, choose."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.ray_session import MODE_ENV, _runtime_env, join_target, resolve_mode

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
SECRET = "hf_test_secret_value_123"

# One driver per fresh Python (a process can ray.init once); it prints what it joined as JSON.
DRIVER = """
import json, os, ray
from core.ray_session import ensure_ray
ensure_ray(num_cpus=2)
token = ray.get(ray.remote(lambda: os.environ.get("HF_TOKEN")).remote())
print("RESULT " + json.dumps({"cpus": ray.cluster_resources().get("CPU"),
                             "gcs": ray.get_runtime_context().gcs_address,
                             "worker_token_ok": token == os.environ["HF_TOKEN"]}))
ray.shutdown()
"""


def _short_tmp() -> Path:
    # Ray's socket paths live under its temp dir and must stay under 107 characters.
    return Path(tempfile.mkdtemp(prefix="sg-", dir="/tmp"))


def _env(root: Path, **extra: str) -> dict[str, str]:
    """An environment isolated from other Ray users: own RAY_TMPDIR (address file) and HOME (token)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", MODE_ENV, "RAY_AUTH_MODE")}
    env.update(
        RAY_TMPDIR=str(root),
        HOME=str(root / "home"),
        HF_TOKEN=SECRET,
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",  # workers share this venv; no `uv run` per worker
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=str(REPO),
        **extra,
    )
    return env


def _drive(env: dict[str, str]) -> tuple[dict, str]:
    out = subprocess.run(
        [sys.executable, "-c", DRIVER], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT ")), log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head() -> Iterator[tuple[Path, str, str]]:
    """A 1-CPU `ray start --head` cluster with token authentication on, in its own temp dir and session."""
    root = _short_tmp()
    (root / "home" / ".ray").mkdir(parents=True)
    (root / "home" / ".ray" / "auth_token").write_text("0123456789abcdef0123456789abcdef")
    cmd = [RAY, "start", "--head", "--port=0", "--num-cpus=1", "--include-dashboard=false"]
    # A session of its own, so teardown kills exactly this head's processes (`ray stop` kills every
    # Ray on the machine, other users' included).
    proc = subprocess.Popen(
        cmd,
        env=_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, log
        address = (root / "ray" / "ray_current_cluster").read_text().strip()
        yield root, address, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_joins_live_local_cluster_with_token_auth(head: tuple[Path, str, str]) -> None:
    root, address, head_log = head
    assert "Token authentication is enabled" in head_log  # the case that makes joining hard
    result, log = _drive(_env(root))
    assert result == {"cpus": 1.0, "gcs": address, "worker_token_ok": True}  # the head's 1 CPU, not 2
    assert SECRET not in log


@pytest.mark.slow
def test_joins_ray_address_of_local_token_cluster(head: tuple[Path, str, str]) -> None:
    root, address, _ = head
    result, _ = _drive(_env(root, RAY_ADDRESS=address, **{MODE_ENV: "existing"}))
    assert (result["cpus"], result["gcs"]) == (1.0, address)


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_mode_chooses_between_live_cluster_and_local(
    head: tuple[Path, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, address, _ = head
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # A live cluster's address file is followed in auto and existing modes; local starts its own
    # session (ray.init(address="local"), which test_stale_address_file_is_ignored runs for real).
    assert (join_target("auto"), join_target("existing"), join_target("local")) == (address, address, None)
    monkeypatch.setenv("RAY_ADDRESS", address)
    assert join_target("local") is None


@pytest.mark.slow
def test_stale_address_file_is_ignored() -> None:
    root = _short_tmp()
    (root / "ray").mkdir()
    stale = f"127.0.0.1:{_free_port()}"  # what a head killed without `ray stop` leaves behind
    (root / "ray" / "ray_current_cluster").write_text(stale)
    try:
        result, _ = _drive(_env(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert result["cpus"] == 2.0 and result["gcs"] != stale


def test_existing_mode_without_cluster_names_the_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}")
    with pytest.raises(ConnectionError, match=r"no Ray cluster to join.*ray start --head.*SEAGRID_RAY=local"):
        join_target("existing")
    assert join_target("auto") is None


def test_ray_address_local_means_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert join_target("existing") is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert join_target("auto") == "10.0.0.1:6379" and join_target("local") is None


def test_unknown_mode_lists_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODE_ENV, "clustr")
    with pytest.raises(ValueError, match=r"SEAGRID_RAY='clustr'.*auto.*local.*existing"):
        resolve_mode()
    assert resolve_mode("Existing") == "existing"


def test_hub_credentials_forwarded_unless_the_job_sets_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "HF_TOKEN": SECRET,
        "HF_HOME": "/data/hf",
        "HF_ENDPOINT": "https://hub.example",
    }.items():
        monkeypatch.setenv(key, value)
    env = _runtime_env()
    assert env is not None
    assert {k: env["env_vars"][k] for k in ("HF_TOKEN", "HF_HOME", "HF_ENDPOINT")} == {
        "HF_TOKEN": SECRET,
        "HF_HOME": "/data/hf",
        "HF_ENDPOINT": "https://hub.example",
    }
    # Under `ray job submit --runtime-env-json`, Ray refuses a driver runtime_env that repeats a job key.
    job = {"runtime_env": {"env_vars": {"HF_TOKEN": SECRET}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    env = _runtime_env()
    assert env is not None and "HF_TOKEN" not in env["env_vars"] and env["env_vars"]["HF_HOME"] == "/data/hf"


# Two raylets on this machine, a 2-worker Train run spread over both (gloo), joined through ensure_ray.
TWO_NODES = """
import json, sys, tempfile, torch
import ray
from ray.cluster_utils import Cluster
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from core.ray_session import ensure_ray

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ensure_ray(mode="existing")  # joins through the address file the head wrote in $RAY_TMPDIR

def loop(config):
    import json, ray.train, torch.distributed as dist
    rank = ray.train.get_context().get_world_rank()
    total = torch.tensor([float(rank + 1)])
    dist.all_reduce(total)
    nodes = [None, None]
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    if rank == 0:  # through the run's shared storage, as a real stage's outputs go
        out = {"nodes": nodes, "sum": float(total), "backend": dist.get_backend()}
        with open(config["out"], "w") as f:
            json.dump(out, f)

storage = sys.argv[1]
result = TorchTrainer(
    loop,
    train_loop_config={"out": f"{storage}/nodes.json"},
    scaling_config=ScalingConfig(num_workers=2, placement_strategy="STRICT_SPREAD"),
    run_config=RunConfig(storage_path=storage, name="spread"),
).fit()
alive = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
with open(f"{storage}/nodes.json") as f:
    print("RESULT " + json.dumps({**json.load(f), "alive": alive, "path": result.path}))
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_train_run_spreads_over_two_nodes(tmp_path: Path) -> None:
    root = _short_tmp()
    env = _env(root, RAY_AUTH_MODE="disabled")
    (tmp_path / "storage").mkdir()
    try:
        out = subprocess.run(
            [sys.executable, "-c", TWO_NODES, str(tmp_path / "storage")],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    result = json.loads(
        next(x for x in out.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT ")
    )
    assert len(result["alive"]) == 2 and sorted(result["nodes"]) == result["alive"]  # one rank per node
    assert (result["sum"], result["backend"]) == (3.0, "gloo")
    assert Path(result["path"]).is_relative_to(tmp_path / "storage")

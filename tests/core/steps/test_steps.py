"""Steps without Ray: identity, the status protocol, leases, crashes in the middle, concurrent callers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import Field

from core.config import NOT_IDENTITY, Strict
from core.config.identity import content_hash
from core.diskfull import DiskFull
from core.steps import Lease, Step, StepStatus, materialize, read_failure, step_status, walk
from core.steps.lease import is_stale, this_machine
from core.steps.status import lock_file, partial_dir


class Cfg(Strict):
    value: int = 1
    where: str | None = Field(None, json_schema_extra=NOT_IDENTITY)


def test_hash_covers_name_identity_fields_and_dependencies():
    a = Step("labels", Cfg(value=1))
    assert a.hash == content_hash({"name": "labels", "format": 1, "config": {"value": 1}, "deps": {}})
    assert Step("labels", Cfg(value=1, where="/x")).hash == a.hash  # not identity
    assert Step("labels", Cfg(value=2)).hash != a.hash
    assert Step("other", Cfg(value=1)).hash != a.hash
    b1 = Step("stage1", Cfg(), deps=(a,))
    b2 = Step("stage1", Cfg(), deps=(Step("labels", Cfg(value=2)),))
    assert b1.hash != b2.hash  # a dependency's change moves its dependants
    assert b1.dirname == f"stage1-{b1.hash}" and len(b1.hash) == 10
    assert [s.name for s in walk([b1, Step("eval", Cfg(), deps=(b1,))])] == ["labels", "stage1", "eval"]


def test_success_is_reused_and_written_atomically(tmp_path):
    step = Step("s", Cfg())
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        assert out.name.endswith(".partial") and not step.path(tmp_path).exists()
        (out / "result.txt").write_text("42")

    assert step_status(tmp_path, step.dirname) is StepStatus.NEW
    first = materialize(step, tmp_path, build)
    again = materialize(step, tmp_path, build)
    assert (first.reused, again.reused, len(calls)) == (False, True, 1)
    assert (first.path / "result.txt").read_text() == "42"
    assert json.loads((first.path / "step.json").read_text())["hash"] == step.hash
    assert step_status(tmp_path, step.dirname) is StepStatus.SUCCESS
    assert not partial_dir(tmp_path, step.dirname).exists() and not lock_file(tmp_path, step.dirname).exists()


def test_a_failure_is_recorded_and_the_next_attempt_resumes(tmp_path):
    step = Step("s", Cfg())

    def fails(out: Path) -> None:
        (out / "half.txt").write_text("first half")
        raise RuntimeError("boom in the middle")

    with pytest.raises(RuntimeError, match="boom"):
        materialize(step, tmp_path, fails)
    assert step_status(tmp_path, step.dirname) is StepStatus.FAILED
    assert "boom in the middle" in read_failure(tmp_path, step.dirname)["traceback"]
    assert not step.path(tmp_path).exists()  # never mistaken for a finished step

    def resumes(out: Path) -> None:
        assert (out / "half.txt").read_text() == "first half"
        (out / "rest.txt").write_text("second half")

    done = materialize(step, tmp_path, resumes)
    assert sorted(p.name for p in done.path.iterdir() if not p.name.startswith(".")) == [
        "half.txt",
        "rest.txt",
        "step.json",
    ]
    assert step_status(tmp_path, step.dirname) is StepStatus.SUCCESS
    assert read_failure(tmp_path, step.dirname) is None


def test_a_directory_without_success_is_not_a_finished_step(tmp_path):
    step = Step("s", Cfg())
    step.path(tmp_path).mkdir(parents=True)
    (step.path(tmp_path) / "junk").write_text("left by an old layout")
    assert step_status(tmp_path, step.dirname) is StepStatus.NEW
    done = materialize(step, tmp_path, lambda out: (out / "ok").write_text("1"))
    assert not done.reused and not (done.path / "junk").exists()


def test_a_dead_holders_lease_expires_and_a_live_one_is_waited_for(tmp_path):
    step = Step("s", Cfg())
    lock = lock_file(tmp_path, step.dirname)
    lock.write_text(json.dumps({"holder": "dead-host:1:x", "lease_s": 5}))
    old = time.time() - 60
    os.utime(lock, (old, old))
    assert step_status(tmp_path, step.dirname) is StepStatus.NEW  # stale lease: not running
    assert materialize(step, tmp_path, lambda out: None, poll_s=0.05).reused is False

    live = Step("t", Cfg())
    holder = Lease(lock_file(tmp_path, live.dirname), lease_s=2)
    assert holder.try_acquire()
    assert step_status(tmp_path, live.dirname) is StepStatus.RUNNING
    time.sleep(1.5)  # the heartbeat keeps it fresh past most of a lease
    assert step_status(tmp_path, live.dirname) is StepStatus.RUNNING
    waits: list[object] = []
    other = Lease(lock_file(tmp_path, live.dirname), lease_s=2)
    assert not other.try_acquire()
    holder.release()
    other.acquire(poll_s=0.05, on_wait=waits.append)
    other.release()


def _materialize_in_child(root: str, counter: str) -> None:
    def build(out: Path) -> None:
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(0.5)
        (out / "x").write_text("1")

    materialize(Step("shared", Cfg()), Path(root), build, poll_s=0.05)


def test_concurrent_callers_build_once(tmp_path):
    counter = tmp_path / "count.txt"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_materialize_in_child, args=(str(tmp_path), str(counter))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert counter.read_text().splitlines() == ["built"]


_KILLED_CHILD = """
import sys, time
from pathlib import Path
from core.steps import Step, materialize
sys.path.insert(0, "tests/core/steps")  # not `tests.test_steps`: an installed package (latex2sympy2) owns `tests`
from test_steps import Cfg
def build(out):
    (out / "part.txt").write_text("written before the kill")
    Path(sys.argv[2]).write_text("ready")
    time.sleep(60)
materialize(Step("killed", Cfg()), Path(sys.argv[1]), build, lease_s=600.0)
"""


def test_a_dead_process_of_this_machine_is_stale_at_once_others_after_their_lease():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fresh = {"age_s": 1.0, "lease_s": 120.0}
    assert is_stale({**fresh, "machine": this_machine(), "pid": dead.pid})
    assert not is_stale({**fresh, "machine": this_machine(), "pid": os.getpid()})
    # Another machine's process table is not ours to read: its holder is trusted until the lease ends.
    assert not is_stale({**fresh, "machine": "elsewhere/boot", "pid": dead.pid})
    assert is_stale({"age_s": 121.0, "lease_s": 120.0, "machine": "elsewhere/boot", "pid": dead.pid})


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_a_killed_holder_is_taken_over_without_waiting_out_its_lease(tmp_path):
    ready = tmp_path / "ready"
    repo = Path(__file__).resolve().parents[3]
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(tmp_path / "steps"), str(ready)], cwd=repo
    )
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        step = Step("killed", Cfg())
        root = tmp_path / "steps"
        assert step_status(root, step.dirname) is StepStatus.RUNNING
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        t0 = time.time()
        done = materialize(step, root, lambda out: (out / "rest.txt").write_text("2"), poll_s=0.1)
        assert time.time() - t0 < 60, "a dead holder of this machine must not be waited for (lease 600 s)"
        assert (done.path / "part.txt").read_text() == "written before the kill"
        assert step_status(root, step.dirname) is StepStatus.SUCCESS
    finally:
        if child.poll() is None:
            child.kill()


needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this system")


@needs_dev_full
def test_a_full_disk_is_a_clear_error_and_keeps_what_was_written(tmp_path):
    """A write the kernel refuses with ENOSPC (through /dev/full) names the step, the path and the fix;
    what the step wrote before stays for the next attempt, and nothing is marked finished."""
    step = Step("full", Cfg())
    work = partial_dir(tmp_path, step.dirname)
    work.mkdir(parents=True)
    (work / "big.bin").symlink_to("/dev/full")

    def build(out: Path) -> None:
        (out / "first-shard.txt").write_text("written before the disk filled")
        (out / "big.bin").write_bytes(b"x" * 4096)

    with pytest.raises(DiskFull) as err:
        materialize(step, tmp_path, build)
    text = str(err.value)
    assert f"step {step.dirname}" in text and str(work) in text and "GiB free" in text
    assert "output.root" in text and "run the same command again" in text
    assert (work / "first-shard.txt").read_text() == "written before the disk filled"
    assert step_status(tmp_path, step.dirname) is not StepStatus.SUCCESS
    assert not (tmp_path / step.dirname).exists()


@needs_dev_full
def test_a_checkpoint_on_a_full_disk_leaves_the_previous_one_latest(tmp_path):
    from core.train.checkpoint import LocalCheckpoints

    ckpts = LocalCheckpoints(tmp_path)
    ckpts.report({"step": 4}, write=lambda d: (d / "state.pt").write_text("step 4"))

    def fill(d: Path) -> None:
        (d / "state.pt").symlink_to("/dev/full")
        (d / "state.pt").write_bytes(b"x" * 4096)

    with pytest.raises(DiskFull, match="checkpoint at step 8"):
        ckpts.report({"step": 8}, write=fill)
    with ckpts.latest() as latest:
        assert latest is not None and (latest / "state.pt").read_text() == "step 4"

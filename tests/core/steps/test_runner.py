"""The one runner without Ray: dependency order, what a step function receives, reuse, failures; the one
directory protocol behind caches."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from core.cache import DONE_MARKER, build_once, is_built
from core.config import Strict, TrialConfig
from core.steps import Step, StepContext, StepStatus, TrialRuntime, read_failure, step_status
from core.steps.runner import dep_dirs, run_step, run_steps


class Cfg(Strict):
    value: int


CALLS: list[tuple[str, dict[str, str], str]] = []


def write_value(config: Cfg, deps: Mapping[str, Path], out_dir: Path, ctx: StepContext) -> None:
    """A step function: its value plus the values of every step it depends on."""
    CALLS.append((ctx.dirname, {k: Path(v).name for k, v in deps.items()}, str(ctx.runtime.cache_dir)))
    total = config.value + sum(int((Path(d) / "value").read_text()) for d in deps.values())
    (out_dir / "value").write_text(str(total))


def fail(config: Cfg, deps: Mapping[str, Path], out_dir: Path, ctx: StepContext) -> None:
    raise RuntimeError(f"step with value {config.value} failed")


def never_in_task(config: object, runtime: TrialRuntime) -> bool:
    return False


@pytest.fixture
def runtime(tmp_path: Path) -> TrialRuntime:
    CALLS.clear()
    return TrialRuntime(trial=TrialConfig(), cache_dir=str(tmp_path / "cache"))


def test_steps_run_in_dependency_order_with_every_upstream_directory(tmp_path: Path, runtime) -> None:
    a = Step("a", Cfg(value=1), fn=write_value)
    b = Step("b", Cfg(value=10), (a,), fn=write_value, in_task=never_in_task)
    c = Step("c", Cfg(value=100), (b,), fn=write_value)
    done = dict((s.name, m) for s, m in run_steps([c], tmp_path, runtime))
    assert list(done) == ["a", "b", "c"] and not any(m.reused for m in done.values())
    # c reads b's output and, through b, a's: every step upstream is named in `deps`.
    assert (done["c"].path / "value").read_text() == str(100 + 11 + 1)
    assert CALLS[-1] == (c.dirname, {"a": a.dirname, "b": b.dirname}, runtime.cache_dir)
    assert dep_dirs(c, tmp_path) == {"a": a.path(tmp_path), "b": b.path(tmp_path)}
    assert json.loads((done["c"].path / "step.json").read_text())["hash"] == c.hash
    again = [m.reused for _, m in run_steps([c], tmp_path, runtime)]
    assert again == [True, True, True] and len(CALLS) == 3  # nothing rebuilt


def test_a_failing_step_records_its_failure_and_stops_the_graph(tmp_path: Path, runtime) -> None:
    bad = Step("bad", Cfg(value=7), fn=fail)
    after = Step("after", Cfg(value=1), (bad,), fn=write_value)
    with pytest.raises(RuntimeError, match="value 7 failed"):
        list(run_steps([after], tmp_path, runtime))
    assert step_status(tmp_path, bad.dirname) is StepStatus.FAILED
    assert "value 7 failed" in read_failure(tmp_path, bad.dirname)["traceback"]
    assert step_status(tmp_path, after.dirname) is StepStatus.NEW and CALLS == []


def test_a_step_without_a_function_is_refused(tmp_path: Path, runtime) -> None:
    with pytest.raises(ValueError, match="no function"):
        run_step(Step("bare", Cfg(value=1)), tmp_path, runtime)


def test_build_once_starts_afresh_and_keeps_directories_finished_before(tmp_path: Path) -> None:
    target = tmp_path / "artefact"

    def crash(out: Path) -> None:
        (out / "half").write_text("x")
        raise OSError("interrupted")

    with pytest.raises(OSError):
        build_once(target, crash)
    assert not is_built(target) and not target.exists()
    seen: list[list[str]] = []

    def build(out: Path) -> None:
        seen.append(sorted(p.name for p in out.iterdir()))  # nothing the crashed attempt left
        (out / "whole").write_text("y")

    assert build_once(target, build) == target and is_built(target) and seen == [[]]
    legacy = tmp_path / "legacy"  # finished by the former cache protocol: a `.done` marker
    legacy.mkdir()
    (legacy / DONE_MARKER).write_text("ok\n")
    assert build_once(legacy, build) == legacy and len(seen) == 1

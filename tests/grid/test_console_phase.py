"""While a trial has no step to show, the console says what it is doing: the runner tells which step starts,
the trial reports it as a phase, the grid's callback puts it in the trial's row (no Ray needed)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from core.config import Strict, TrialConfig
from core.pipeline import trial_steps
from core.steps import Step, StepContext, TrialRuntime
from core.steps.runner import run_steps
from grid.console import Board
from grid.run import GridCallback, GridResult
from grid.trial import PHASES, phase_text


class Cfg(Strict):
    value: int


def write(config: Cfg, deps: Mapping[str, Path], out_dir: Path, ctx: StepContext) -> None:
    (out_dir / "value").write_text(str(config.value))


def test_the_runner_tells_which_step_starts_and_not_the_reused_ones(tmp_path: Path) -> None:
    a = Step("a", Cfg(value=1), fn=write)
    b = Step("b", Cfg(value=2), (a,), fn=write)
    runtime = TrialRuntime(trial=TrialConfig())
    started: list[str] = []
    list(run_steps([a], tmp_path, runtime))
    list(run_steps([b], tmp_path, runtime, on_start=lambda s: started.append(s.name)))
    assert started == ["b"]  # a was done: nothing to wait for


def test_every_step_of_a_full_graph_has_a_phase() -> None:
    c = TrialConfig.model_validate(
        {
            "model": {"llm": "tiny-llama", "encoder": "tiny-dinov2"},
            "method": {"name": "sea", "sea": {"labels_from": "tiny-clip"}},
            "stage2": {"enabled": True},
            "eval": {"enabled": True},
        }
    )
    names = [s.name for s in trial_steps(c).all()]
    assert {n.split("-stage")[0] for n in names} == (set(PHASES) - {"stage"}) | {"stage1", "stage2"}
    texts = [phase_text(n) for n in names]
    assert not any(t.endswith(": starting") for t in texts), texts
    assert phase_text("stage2") == f"stage2: {PHASES['stage']}"
    assert phase_text("eval-stage1") == f"eval-stage1: {PHASES['eval']}"


def _tune_trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(config={"cell": {"trial_id": tid}}, error_file=None)


class _NoTracking:
    """The callback's tracker: phases log nothing to MLflow, so none of these is called for them."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"a phase report reached the tracker ({name})")


def test_phase_reports_fill_the_row_until_the_first_step() -> None:
    buf = io.StringIO()
    board = Board("phase", Console(file=buf, width=200))
    board.add("t-1", "method=llava")
    board.start("t-1")
    cb = GridCallback(_NoTracking(), "parent", {}, GridResult(), board)
    for name in ("labels", "stage1"):
        cb.on_trial_result(0, [], _tune_trial("t-1"), {"seagrid": {"phase": phase_text(name)}})
    line = board.lines["t-1"]
    assert line.stage == phase_text("stage1") and line.total is None
    wide = Console(file=io.StringIO(), width=250)
    wide.print(board.table())
    assert "stage1: waiting for resources, starting workers, loading the model" in wide.file.getvalue()
    plain = buf.getvalue()
    assert "method=llava  labels: building SEA labels" in plain
    assert "method=llava  stage1: waiting for resources" in plain
    board.progress("t-1", "stage1", 1, 4, {"stage1/loss": 2.0})
    assert (line.stage, line.step, line.total) == ("stage1", 1, 4)
    board.phase("t-1", phase_text("export-stage1"))
    assert line.stage == "export-stage1: exporting a transformers checkpoint" and line.total is None

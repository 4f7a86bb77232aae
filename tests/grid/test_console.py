"""grid.console and the grid's callback: the trial table (live on a terminal, plain lines elsewhere), Ray's
output kept in a log file, and Tune's events turned into MLflow runs and board rows (no Ray needed)."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from grid.console import Board, duration
from grid.expand import expand
from grid.ray_log import ray_output
from grid.redact import MASK
from grid.run import GridCallback, GridResult, run_grid
from grid.spec import load_spec
from grid.tracking import Tracker, run_name

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain_console(width: int = 200) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width), buf


def test_duration() -> None:
    assert [duration(x) for x in (None, 4.4, 65, 3725)] == ["", "4 s", "1 min 05 s", "1 h 02 min"]


def test_plain_board_prints_lines_and_a_table_that_keeps_ids_whole() -> None:
    console, buf = plain_console()
    board = Board("demo", console)
    assert not board.live  # a StringIO is no terminal
    long_id = "method=sea+basic_encoder=tiny-dinov2_seed=12-0123456789"
    board.add(long_id, "method=sea+basic, encoder=tiny-dinov2, seed=12")
    board.add("b-1", "method=llava")
    with board:
        board.start(long_id)
        board.progress(long_id, "stage1", 1, 4, {"stage1/loss": 6.9, "stage1/samples_per_s": 100.0})
        board.progress(long_id, "stage1", 2, 4, {"stage1/loss": 6.8})  # within 10 s of the last line: quiet
        board.progress(long_id, "stage1", 4, 4, {"stage1/loss": 6.5, "stage1/samples_per_s": 120.0})
        board.finish(long_id, "done")
        board.start("b-1")
        board.finish("b-1", "failed", "FileNotFoundError: missing-0.png")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 7, lines
    assert lines[0].endswith(f"start   method=sea+basic, encoder=tiny-dinov2, seed=12  ({long_id})")
    assert "stage1 1/4  loss 6.9  100 samples/s" in lines[1]
    assert "stage1 4/4  loss 6.5  120 samples/s" in lines[2] and "ETA" not in lines[2]
    assert "done    method=sea+basic" in lines[3]
    assert "failed  method=llava  (b-1)" in lines[5] and "missing-0.png" in lines[6]
    assert board.counts() == {"done": 1, "failed": 1}

    narrow, out = plain_console(width=90)
    narrow.print(board.table())
    assert long_id in out.getvalue()  # on one line, never folded nor cut; the other columns give way
    wide, out = plain_console(width=200)
    wide.print(board.table())
    text = out.getvalue()
    assert "4/4" in text and "6.5" in text and "failed: FileNotFoundError: missing-0.png" in text


def test_eta_from_the_rate_seen_in_the_stage() -> None:
    console, _ = plain_console()
    board = Board("eta", console)
    board.add("t", "x=1")
    board.start("t")
    board.progress("t", "stage1", 2, 12, {"stage1/loss": 1.0})
    line = board.lines["t"]
    line.stage_t0 -= 10.0  # 10 s ago at step 2
    board.progress("t", "stage1", 7, 12, {"stage1/loss": 1.0})  # 5 steps in 10 s: 5 more take 10 s
    assert line.eta(line.stage_t0 + 10.0) == pytest.approx(10.0)


def test_live_board_draws_in_place_and_prints_no_lines() -> None:
    buf = io.StringIO()
    console = Console(file=buf, width=150, force_terminal=True)
    board = Board("live", console)
    assert board.live
    board.add("a-0123456789", "method=sea")
    with board:
        board.start("a-0123456789")
        board.progress("a-0123456789", "stage1", 3, 8, {"stage1/loss": 5.5})
        board.finish("a-0123456789", "done")
    text = ANSI.sub("", buf.getvalue())
    assert "a-0123456789" in text and "3/8" in text
    assert "start   " not in text  # no plain lines on a terminal


def test_ray_output_goes_to_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray  # noqa: F401 (sets up the 'ray' logger and its stderr handler)

    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-1234567890")
    monkeypatch.delenv("SEAGRID_RAY_LOGS", raising=False)
    real = sys.stdout
    console = Console(file=real, width=120)
    log = tmp_path / "logs" / "g.log"
    with ray_output(log, verbose=False) as where:
        assert where == log and os.environ["SEAGRID_RAY_LOGS"] == "1"
        print("(raylet) 12 PYTHON worker processes have been started on node ...")
        logging.getLogger("ray.tune").warning("View detailed results here: /x (token tok-1234567890)")
        sys.stderr.write("a warning\n")
        console.print("seagrid's own line")
    assert "SEAGRID_RAY_LOGS" not in os.environ
    text = log.read_text()
    assert "PYTHON worker processes" in text and "View detailed results" in text and "a warning" in text
    assert "tok-1234567890" not in text and MASK in text
    assert "seagrid's own line" not in text
    with ray_output(tmp_path / "logs" / "v.log", verbose=True) as where:
        assert where is None
    assert not (tmp_path / "logs" / "v.log").exists()


def test_worker_lines_arriving_late_still_go_to_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ray forwards a worker's last prints after the Tune run has returned: they reach the log too."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    def ray_printer(data: dict) -> None:  # stands for the printer ray.init(log_to_driver=True) registers
        print("\n".join(data["lines"]))

    dispatcher.add_handler("ray_print_logs", ray_printer)
    try:
        log = tmp_path / "g.log"
        with ray_output(log, verbose=False):
            pass
        line = {"lines": ["[eval] pope: 0.6667"], "pid": 4242, "ip": "127.0.0.1", "is_err": False}
        dispatcher.emit({**line, "actor_name": "RayTrainWorker"})
        assert "[eval] pope: 0.6667" in log.read_text() and "RayTrainWorker pid=4242" in log.read_text()
        assert "[eval]" not in capsys.readouterr().out
    finally:
        dispatcher.remove_handler("ray_print_logs")


def test_lines_ray_holds_back_to_count_repeats_go_to_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's own printer holds a line repeated across workers back, to print it once as "[repeated Nx
    across cluster]" when Ray shuts down, after the grid's summary (issue 22: the smoke grid's last
    evaluation lines, twice): the block's end writes what it holds into the log."""
    import functools

    from ray._private import ray_logging, worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    from ray._private.ray_logging import stdout_deduplicator

    monkeypatch.setattr(ray_logging, "RAY_DEDUP_LOGS", True)  # Ray's default (the suite turns it off)
    ray_printer = functools.partial(worker.print_to_stdstream, ignore_prefix=False)
    try:
        log = tmp_path / "g.log"
        with ray_output(log, verbose=False):
            dispatcher.add_handler("ray_print_logs", ray_printer)  # as ray.init(log_to_driver=True) in a grid
            for pid in (4242, 4243, 4244):  # three workers print the same line
                line = {"lines": ["[eval] pope: 0.6667"], "pid": pid, "ip": "127.0.0.1", "is_err": False}
                dispatcher.emit({**line, "actor_name": "RayTrainWorker", "job": "01000000"})
        assert list(stdout_deduplicator.flush()) == []  # nothing left for ray.shutdown to print
        text = log.read_text()
        assert "[eval] pope: 0.6667" in text and "repeated 2x across cluster" in text, text
        assert "[eval]" not in capsys.readouterr().out
    finally:
        dispatcher.remove_handler("ray_print_logs")


SPEC = """\
name: cb
base:
  data: {{stage1: {{source: synthetic, synthetic: {{num_samples: 32, seed: 0}}}}}}
grid:
  axes:
    method.name: [llava, sea]
output: {{root: {root}, tracking_uri: "sqlite:///{db}"}}
"""


@pytest.fixture(scope="module")
def cb_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cb")
    path = tmp / "cb.yaml"
    path.write_text(textwrap.dedent(SPEC.format(root=tmp / "results", db=tmp / "mlflow.db")))
    return path


def tune_trial(tid: str, error_file: Path | None = None) -> SimpleNamespace:
    """What the callback reads of a Tune trial: its config's cell and, on error, its error file."""
    return SimpleNamespace(
        config={"cell": {"trial_id": tid}}, error_file=str(error_file) if error_file else None
    )


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_callback_writes_runs_and_rows(cb_spec: Path, tmp_path: Path) -> None:
    spec = load_spec(cb_spec)
    trials = {t.id: t for t in expand(spec, str(cb_spec))}
    llava, sea = (t for t in trials.values())
    tracker = Tracker("cb", spec.output.tracking_uri)
    parent = tracker.parent_run(str(cb_spec))
    console, buf = plain_console()
    board = Board("cb", console)
    for t in trials.values():
        board.add(t.id, run_name(t.axes, t.id))
    out = GridResult()
    cb = GridCallback(tracker, parent, trials, out, board)

    cb.on_trial_start(0, [], tune_trial(llava.id))
    for step in (1, 2):
        metrics = {"stage1/loss": 7.0 - step, "stage1/samples_per_s": 50.0}
        report = {"seagrid": {"stage": "stage1", "step": step, "total_steps": 2, "metrics": metrics}}
        cb.on_trial_result(0, [], tune_trial(llava.id), report)
    cb.on_trial_result(
        0, [], tune_trial(llava.id), {"seagrid": {"final": {"eval/pope": 0.5, "stage1/dir": "/x"}}}
    )
    cb.on_trial_complete(0, [], tune_trial(llava.id))
    err = tmp_path / "error.txt"
    err.write_text("Traceback (most recent call last):\nFileNotFoundError: missing-0.png\n")
    cb.on_trial_start(0, [], tune_trial(sea.id))
    cb.on_trial_error(0, [], tune_trial(sea.id, err))

    client = MlflowClient(spec.output.tracking_uri)
    done, failed = client.get_run(out.run_ids[llava.id]), client.get_run(out.run_ids[sea.id])
    assert (done.info.status, failed.info.status) == ("FINISHED", "FAILED")
    assert done.info.run_name == "method=llava" and failed.info.run_name == "method=sea"
    assert [m.value for m in client.get_metric_history(done.info.run_id, "stage1/loss")] == [6.0, 5.0]
    # The final summary is logged at the last training step, text values as result.* tags.
    (pope,) = client.get_metric_history(done.info.run_id, "eval/pope")
    assert (pope.value, pope.step) == (0.5, 2) and done.data.tags["result.stage1/dir"] == "/x"
    assert out.status == {llava.id: "done", sea.id: "failed"}
    assert board.lines[sea.id].note == "FileNotFoundError: missing-0.png"
    text = buf.getvalue()
    assert f"done    method=llava  ({llava.id})" in text and "stage1 2/2  loss 5" in text
    assert "FileNotFoundError: missing-0.png" in text


def test_grid_with_nothing_to_run_starts_no_ray_and_ends_the_parent(cb_spec: Path) -> None:
    """Every trial finished: the summary lists them, the parent run is reopened and ended FINISHED."""
    import ray

    spec = load_spec(cb_spec)
    tracker = Tracker("cb", spec.output.tracking_uri)
    parent = tracker.parent_run(str(cb_spec))
    for t in expand(spec, str(cb_spec)):
        tracker.finish(tracker.start_trial(t, parent), {"eval/pope": 0.6, "stage1/final_loss": 5.25})
    tracker.close_parent(parent, "FAILED")
    console, buf = plain_console()
    was_up = ray.is_initialized()
    rows, result = run_grid(cb_spec, console=console)
    assert ray.is_initialized() == was_up
    assert set(result.status.values()) == {"done (skipped)"} and len(rows) == 2
    text = buf.getvalue()
    assert "cb: 2 trials, 2 already done, 0 to run" in text and "cb: 2 done earlier in" in text
    assert all(r.trial.id in text for r in rows) and text.count("5.25") == 2  # final losses from the store
    exp_id = tracker.experiment_id
    assert f"MLflow: http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning" in text
    assert MlflowClient(spec.output.tracking_uri).get_run(parent).info.status == "FINISHED"

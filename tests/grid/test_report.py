"""`seagrid report`: a grid's store written through Tracker as the driver does, read back as tables and plots."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from rich.console import Console

from core.evaluation.step import read_metrics
from core.pipeline import trial_steps
from core.steps import TrialRuntime
from core.steps.runner import run_step
from grid.cli import main
from grid.expand import Trial, expand
from grid.plots import llm_parameters
from grid.report import _tacs_history, build_report, default_columns
from grid.spec import load_spec
from grid.tracking import Tracker

REPO = Path(__file__).resolve().parents[2]

SPEC = """\
name: {name}
description: report test - 3 LLMs x {{llava, sea}} x 2 seeds on tiny-clip.
base:
  model: {{llm: tiny-llama, encoder: tiny-clip, adapter: mlp2x_gelu}}
  method:
    name: llava
    sea: {{top_n: 5}}
  data:
    stage1: {{source: synthetic, synthetic: {{num_samples: 64, seed: 0}}}}
  stage1: {{lr: 1.0e-3, global_batch_size: 16, micro_batch_size: 8, epochs: 1, log_every: 1}}
grid:
  axes:
    model.llm: [tiny-llama, gemma-2b, phi3-mini]
    method.name: [llava, sea]
    seed: [0, 1]
output: {{root: {root}, tracking_uri: "{uri}"}}
"""

# (llm, method, seed) -> attempts in order: ("FINISHED", final metrics, tacs history), ("FAILED",) or
# ("RUNNING",) (started, never ended). Every phi3-mini/sea trial is never run.
TACS_LLAVA = {0: [0.10, 0.20, 0.30], 1: [0.20, 0.30, 0.40]}
TACS_SEA = {0: [0.30, 0.50, 0.70], 1: [0.35, 0.55, 0.80]}
ATTEMPTS: dict[tuple[str, str, int], list[tuple[Any, ...]]] = {
    ("tiny-llama", "llava", 0): [("FINISHED", {"eval/pope": 0.80, "eval/gqa": 0.50}, TACS_LLAVA[0])],
    ("tiny-llama", "llava", 1): [("FINISHED", {"eval/pope": 0.84, "eval/gqa": 0.54}, TACS_LLAVA[1])],
    ("tiny-llama", "sea", 0): [("FINISHED", {"eval/pope": 0.85, "eval/gqa": 0.60}, TACS_SEA[0])],
    ("tiny-llama", "sea", 1): [("FINISHED", {"eval/pope": 0.89, "eval/gqa": 0.61}, TACS_SEA[1])],
    ("gemma-2b", "llava", 0): [("FINISHED", {"eval/pope": 0.70}, [])],
    ("gemma-2b", "llava", 1): [("RUNNING",)],
    ("gemma-2b", "sea", 0): [("FINISHED", {"eval/pope": 0.66}, [])],
    # A failed attempt, then a retry that finished: the finished one is the trial's result.
    ("gemma-2b", "sea", 1): [("FAILED",), ("FINISHED", {"eval/pope": 0.70}, [])],
    ("phi3-mini", "llava", 0): [("FAILED",)],
    ("phi3-mini", "llava", 1): [("FAILED",)],
}


def stdev(*xs: float) -> float:
    """Sample standard deviation (ddof 1), written out."""
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def write_spec(path: Path, name: str, root: Path, uri: str) -> Path:
    path.write_text(textwrap.dedent(SPEC.format(name=name, root=root, uri=uri)))
    return path


def key(t: Trial) -> tuple[str, str, int]:
    return (t.config.model.llm, t.config.method.name, t.config.seed)


def record_attempts(tracker: Tracker, spec_path: Path, attempts: dict) -> str:
    """Write parent and child runs as grid.run's callback does: start_trial, log_metrics per step, finish/fail."""
    trials = expand(load_spec(spec_path), str(spec_path))
    parent = tracker.parent_run(str(spec_path))
    for t in trials:
        for attempt in attempts.get(key(t), []):
            run_id = tracker.start_trial(t, parent)
            if attempt[0] == "RUNNING":
                tracker.log_metrics(run_id, {"stage1/loss": 3.0, "eval/pope": 0.99}, step=1)
                continue
            if attempt[0] == "FAILED":
                tracker.log_metrics(run_id, {"stage1/loss": 9.0}, step=1)
                tracker.fail(run_id, "Traceback (most recent call last):\nRuntimeError: out of memory\n")
                continue
            _, final, tacs = attempt
            for step, value in enumerate(tacs, start=1):
                tracker.log_metrics(run_id, {"stage1/loss": 2.0 / step, "diag/tacs": value}, step=step)
            extra = {f"{k}/adversarial/f1": v - 0.01 for k, v in final.items() if k == "eval/pope"}
            tracker.finish(run_id, {**final, **extra, "stage1/loss": 0.5, "checkpoint": "/tmp/ckpt"})
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A sqlite store with the grid of ATTEMPTS, shared by the tests of this module (read-mostly)."""
    tmp = tmp_path_factory.mktemp("report_store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    spec_path = write_spec(tmp / "grid.yaml", "reportgrid", tmp / "results", uri)
    tracker = Tracker("reportgrid", uri)
    parent = record_attempts(tracker, spec_path, ATTEMPTS)
    return {"tmp": tmp, "uri": uri, "spec": spec_path, "parent": parent}


def md_rows(markdown: str) -> list[list[str]]:
    """Body rows of the Markdown table."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[1:]]


def md_header(markdown: str) -> list[str]:
    line = next(ln for ln in markdown.splitlines() if ln.startswith("| "))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_default_columns_put_diagnostics_beside_benchmarks() -> None:
    found = [
        "diag/modality_gap",
        "diag/tacs",
        "diag/tacs/after_stage2",
        "diag/other",
        "eval/pope",
        "eval/pope/x",
    ]
    assert default_columns(found) == ["eval/pope", "diag/tacs", "diag/modality_gap", "diag/tacs/after_stage2"]
    assert default_columns(["diag/label_recall", "stage1/loss"]) == ["diag/label_recall"]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_report_numbers_files_and_artifacts(store: dict[str, Any]) -> None:
    report = build_report(store["spec"], console=quiet())
    # Benchmark headlines (no eval/pope/adversarial/f1), then the alignment diagnostics the runs have.
    assert report.columns == ["eval/gqa", "eval/pope", "diag/tacs"]
    assert report.averaged == ["seed"]
    assert report.parent_run_id == store["parent"]

    cell = report.cell("eval/pope", {"method.name": "sea", "model.llm": "tiny-llama"})
    assert cell["mean"] == pytest.approx((0.85 + 0.89) / 2)
    assert cell["std"] == pytest.approx(stdev(0.85, 0.89))
    assert (cell["n"], cell["trials"], cell["done"]) == (2, 2, 2)
    assert cell["delta"] == pytest.approx((0.85 + 0.89) / 2 - (0.80 + 0.84) / 2)
    base = report.cell("eval/pope", {"method.name": "llava", "model.llm": "tiny-llama"})
    assert base["delta"] is None and base["mean"] == pytest.approx(0.82)
    # The retried trial counts its finished attempt only; the failed attempt is not a failure of the cell.
    gemma_sea = report.cell("eval/pope", {"method.name": "sea", "model.llm": "gemma-2b"})
    assert (gemma_sea["n"], gemma_sea["failed"]) == (2, 0)
    assert gemma_sea["std"] == pytest.approx(stdev(0.66, 0.70))
    assert gemma_sea["delta"] == pytest.approx((0.66 + 0.70) / 2 - 0.70)
    gemma_llava = report.cell("eval/pope", {"method.name": "llava", "model.llm": "gemma-2b"})
    # The running trial's partial numbers are no result yet.
    assert (gemma_llava["n"], gemma_llava["trials"], gemma_llava["running"]) == (1, 2, 1)
    assert (gemma_llava["mean"], gemma_llava["std"]) == (pytest.approx(0.70), None)
    failed = report.cell("eval/pope", {"method.name": "llava", "model.llm": "phi3-mini"})
    assert (failed["cell"], failed["failed"], failed["mean"]) == ("failed", 2, None)
    missing = report.cell("eval/pope", {"method.name": "sea", "model.llm": "phi3-mini"})
    assert (missing["cell"], missing["new"], missing["delta"]) == ("missing", 2, None)

    # The Markdown table: grouped by LLM in spec order, baseline first, x100 with one decimal.
    rows = md_rows(report.markdown)
    assert [r[:2] for r in rows] == [
        ["tiny-llama", "llava"],
        ["tiny-llama", "sea"],
        ["gemma-2b", "llava"],
        ["gemma-2b", "sea"],
        ["phi3-mini", "llava"],
        ["phi3-mini", "sea"],
    ]
    by = {(r[0], r[1]): r[2:] for r in rows}  # trials, gqa, pope, tacs (as logged: its last value)
    assert by["tiny-llama", "llava"] == [
        "2 done",
        "52.0 ± 2.8 (n=2)",
        "82.0 ± 2.8 (n=2)",
        "0.35 ± 0.07071 (n=2)",
    ]
    assert by["tiny-llama", "sea"] == [
        "2 done",
        "60.5 ± 0.7 (n=2) (+8.5)",
        "87.0 ± 2.8 (n=2) (+5.0)",
        "0.75 ± 0.07071 (n=2) (+0.4)",
    ]
    assert by["gemma-2b", "llava"] == ["1 done, 1 running", "running", "70.0 [1/2]", "running"]
    assert by["gemma-2b", "sea"] == ["2 done", "n/a", "68.0 ± 2.8 (n=2) (-2.0)", "n/a"]
    assert by["phi3-mini", "llava"] == ["2 failed", "failed", "failed", "failed"]
    assert by["phi3-mini", "sea"] == ["2 new", "missing", "missing", "missing"]
    assert md_header(report.markdown)[2:] == ["trials", "gqa", "pope", "diag/tacs"]
    assert "Averaged over: `seed`" in report.markdown
    assert "12 trials (7 done, 2 failed, 1 running, 2 new)" in report.markdown

    out = store["tmp"] / "results" / "reports" / "reportgrid"
    assert report.out_dir == out
    assert (out / "report.md").read_text() == report.markdown
    csv = pl.read_csv(out / "report.csv")
    sea = csv.filter((pl.col("model.llm") == "tiny-llama") & (pl.col("method.name") == "sea")).row(
        0, named=True
    )
    assert sea["eval/pope:mean"] == pytest.approx(0.87)
    assert sea["eval/pope:std"] == pytest.approx(stdev(0.85, 0.89))
    assert (sea["eval/pope:n"], sea["eval/pope:status"]) == (2, "ok")
    assert sea["eval/pope:delta"] == pytest.approx(0.05)
    phi = csv.filter(pl.col("model.llm") == "phi3-mini").sort("method.name")
    assert phi["eval/pope:status"].to_list() == ["failed", "missing"]
    assert phi["eval/pope:mean"].to_list() == [None, None]

    # Plots: POPE has two LLM sizes; GQA only one, so its scaling plot is skipped with a note.
    names = sorted(p.name for p in report.files)
    assert names == ["report.csv", "report.md", "scaling_pope.png", "tacs.png"]
    assert not (out / "scaling_gqa.png").exists()
    # One note for every metric skipped for the same reason.
    assert [n for n in report.notes if "two LLM sizes" in n] == [
        "scaling plots of eval/gqa, diag/tacs: needs results from at least two LLM sizes; has tiny-llama"
    ]
    for png in ("scaling_pope.png", "tacs.png"):
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200
            img.verify()

    client = MlflowClient(store["uri"])
    logged = {Path(a.path).name for a in client.list_artifacts(store["parent"], "report")}
    assert logged == set(names)
    md = client.download_artifacts(store["parent"], "report/report.md", str(store["tmp"] / "dl"))
    assert Path(md).read_text() == report.markdown


def test_tacs_history_is_per_step_and_method(store: dict[str, Any]) -> None:
    report = build_report(store["spec"], console=quiet(), log_artifacts=False)
    hist = _tacs_history(Tracker("reportgrid", store["uri"]), report.trials, ["model.llm"])
    mean = hist.group_by("method", "step").agg(pl.col("value").mean()).sort("method", "step")
    assert mean.filter(pl.col("method") == "sea")["value"].to_list() == pytest.approx(
        [(a + b) / 2 for a, b in zip(TACS_SEA[0], TACS_SEA[1], strict=True)]
    )
    assert mean.filter(pl.col("method") == "llava")["step"].to_list() == [1, 2, 3]
    assert set(hist["panel"]) == {"llm=tiny-llama"}


def test_other_rows_and_columns(store: dict[str, Any]) -> None:
    """Rows (model.llm, seed): methods are averaged, so no deltas; a detail metric as the only column."""
    report = build_report(
        store["spec"],
        rows=("model.llm", "seed"),
        columns=["eval/pope/adversarial/f1", "eval/nope"],
        console=quiet(),
    )
    assert report.averaged == ["method.name"]
    cell = report.cell("eval/pope/adversarial/f1", {"model.llm": "tiny-llama", "seed": 0})
    assert cell["mean"] == pytest.approx(((0.80 - 0.01) + (0.85 - 0.01)) / 2)
    assert cell["delta"] is None
    assert report.table["delta"].is_null().all()
    nope = report.cell("eval/nope", {"model.llm": "tiny-llama", "seed": 0})
    assert nope["cell"] == "n/a"
    assert any("eval/nope" in n and "did you mean 'eval/pope'" in n for n in report.notes)


def test_no_parent_run_writes_files_only(store: dict[str, Any], tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path / "other.yaml", "nevergrid", tmp_path / "results", store["uri"])
    report = build_report(spec_path, console=quiet())
    assert report.parent_run_id is None
    assert any("no parent run" in n for n in report.notes)
    assert report.columns == [] and any(
        "no finished trial has an eval/<name> or diag/ metric" in n for n in report.notes
    )
    assert report.table.height == 6 and report.table["new"].to_list() == [2] * 6
    assert [r[2] for r in md_rows(report.markdown)] == ["2 new"] * 6
    assert report.trials.height == 12 and set(report.trials["status"]) == {"new"}
    assert (report.out_dir / "report.md").exists() and (report.out_dir / "report.csv").exists()
    assert MlflowClient(store["uri"]).get_experiment_by_name("nevergrid") is None  # nothing created


def test_cli_report(store: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["report", str(store["spec"]), "--rows", "method.name,model.llm", "--columns", "eval/pope"]) == 0
    )
    text = capsys.readouterr().out
    assert "87.0 ± 2.8" in text and "averaged over: seed" in text
    assert main(["report", str(store["spec"]), "--rows", "method.nam,model.llm"]) == 2
    assert "unknown config path 'method.nam'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "absent.yaml")]) == 2


def test_llm_size_of_tiny_model_matches_its_architecture() -> None:
    """The size the scaling plot uses for tiny-llama agrees with a count from its architecture facts."""
    from core.models.llm import LLMS

    a = LLMS["tiny-llama"].arch
    h, inter, layers, vocab = (
        a["hidden_size"],
        a["intermediate_size"],
        a["num_hidden_layers"],
        a["vocab_size"],
    )
    kv = a["num_key_value_heads"] * h // a["num_attention_heads"]
    # Llama: q and o are h x h, k and v h x kv, a gated MLP of three h x inter matrices, two RMSNorms per
    # layer, a final norm, input embeddings and an untied LM head.
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    counted = vocab * h + layers * per_layer + h + (0 if a["tie_word_embeddings"] else vocab * h)
    assert counted == 315_968
    assert llm_parameters("tiny-llama") == pytest.approx(counted, rel=2e-3)
    assert llm_parameters("vicuna-7b") == pytest.approx(6.74e9)
    assert llm_parameters("gemma-2b") < llm_parameters("phi3-mini") < llm_parameters("vicuna-13b")


# --- a real `mlflow server` -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` on 127.0.0.1 with a sqlite store and proxied artifacts; yields its base URL.

    One worker and no job runner keep the start near 15 s (4 workers take about a minute on 2 cores).
    """
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = open(tmp / "server.log", "w")  # noqa: SIM115
    cmd = [
        "uv",
        "run",
        "--frozen",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp / 'mlflow.db'}",
    ]
    cmd += ["--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    # Its own session, so the finalizer can stop uv, mlflow and uvicorn together by this group id.
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()

    start = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - start > 180:
                raise RuntimeError(
                    f"mlflow server not healthy after 180 s:\n{(tmp / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.25)
    except BaseException:
        stop()
        raise
    print(f"mlflow server healthy after {time.monotonic() - start:.1f} s")
    yield url
    stop()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


POINTS_PER_WRITER = 20  # optimizer steps, each a batch of METRICS_PER_STEP values (as a grid logs them)
METRICS_PER_STEP = 5


def _log_trial_metrics(url: str, run_id: str) -> float:
    """One trial's writer (its own process, as separate grid drivers are): a metric batch per step."""
    from grid.tracking import Tracker

    tracker = Tracker("concurrent", url)
    t0 = time.monotonic()
    for step in range(1, POINTS_PER_WRITER + 1):
        tracker.log_metrics(run_id, {f"m{i}": step + i / 10 for i in range(METRICS_PER_STEP)}, step=step)
    return time.monotonic() - t0


@pytest.mark.slow
def test_eight_concurrent_writers_lose_no_metric_point(mlflow_server: str) -> None:
    """8 trials' writers logging at once to one served store: every point arrives (counted per metric)."""
    import multiprocessing as mp

    from grid.tracking import Tracker

    tracker = Tracker("concurrent", mlflow_server)
    parent = tracker.parent_run()
    run_ids = [
        tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
        for _ in range(8)
    ]
    t0 = time.monotonic()
    with mp.get_context("spawn").Pool(8) as pool:
        pool.starmap(_log_trial_metrics, [(mlflow_server, r) for r in run_ids])
    wall = time.monotonic() - t0
    total = 0
    for run_id in run_ids:
        for i in range(METRICS_PER_STEP):
            q = urllib.parse.urlencode({"run_id": run_id, "metric_key": f"m{i}"})
            history = json.loads(_get(f"{mlflow_server}/api/2.0/mlflow/metrics/get-history?{q}"))["metrics"]
            assert sorted(m["step"] for m in history) == list(range(1, POINTS_PER_WRITER + 1)), (run_id, i)
            total += len(history)
    assert total == 8 * POINTS_PER_WRITER * METRICS_PER_STEP
    print(
        f"{total} points from 8 writers in {wall:.1f} s ({total / wall:.0f} points/s, sqlite-backed server)"
    )


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_served_store_round_trip(mlflow_server: str, tmp_path: Path) -> None:
    url = mlflow_server
    spec_path = write_spec(tmp_path / "served.yaml", "served", tmp_path / "results", url)
    tracker = Tracker("served", url)
    attempts = {("tiny-llama", "llava", 0): ATTEMPTS["tiny-llama", "llava", 0]}
    parent = record_attempts(tracker, spec_path, attempts)
    trial = next(t for t in expand(load_spec(spec_path)) if key(t) == ("tiny-llama", "llava", 0))
    run_id = tracker.trial_runs()[trial.id].run_id
    notes = tmp_path / "extra"
    notes.mkdir()
    (notes / "note.txt").write_text("written through the server\n")
    tracker.log_artifacts(run_id, notes, "extra")

    # Read back with plain HTTP: the REST API, not the mlflow client.
    exp = json.loads(_get(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served"))
    exp_id = exp["experiment"]["experiment_id"]
    found = _post(
        f"{url}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [exp_id], "filter": f"tags.trial_id = '{trial.id}'"},
    )["runs"]
    assert [r["info"]["run_id"] for r in found] == [run_id]
    got = json.loads(_get(f"{url}/api/2.0/mlflow/runs/get?run_id={run_id}"))["run"]
    assert got["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in got["data"]["metrics"]}
    assert metrics["eval/pope"] == pytest.approx(0.80) and metrics["diag/tacs"] == pytest.approx(0.30)
    tags = {t["key"]: t["value"] for t in got["data"]["tags"]}
    assert tags["axis.model.llm"] == "tiny-llama" and tags["mlflow.parentRunId"] == parent
    q = urllib.parse.urlencode({"run_id": run_id, "path": "extra/note.txt"})
    assert _get(f"{url}/get-artifact?{q}") == b"written through the server\n"
    # The same file through the proxied-artifact route the artifact URI names (mlflow-artifacts:/...).
    root = got["info"]["artifact_uri"]
    assert root.startswith("mlflow-artifacts:/")
    proxied = (
        f"{url}/api/2.0/mlflow-artifacts/artifacts/{root.removeprefix('mlflow-artifacts:/')}/extra/note.txt"
    )
    assert _get(proxied) == b"written through the server\n"

    report = build_report(spec_path, tracking_uri=url, console=quiet())
    cell = report.cell("eval/pope", {"method.name": "llava", "model.llm": "tiny-llama"})
    assert (cell["mean"], cell["n"], cell["trials"]) == (pytest.approx(0.80), 1, 2)
    assert report.parent_run_id == parent
    listed = json.loads(_get(f"{url}/api/2.0/mlflow/artifacts/list?run_id={parent}&path=report"))
    assert {Path(f["path"]).name for f in listed["files"]} >= {"report.md", "report.csv", "tacs.png"}
    q = urllib.parse.urlencode({"run_id": parent, "path": "report/report.md"})
    assert _get(f"{url}/get-artifact?{q}").decode() == report.markdown


@pytest.mark.slow
def test_real_grid_evaluates_into_served_store(
    mlflow_server: str, tmp_path: Path, ray_session, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real trial (stage 1, then the evaluation step) against the served store: its evaluation metrics,
    diagnostics curve and pictures read back through the REST API, then the report."""
    url = mlflow_server
    spec_path = tmp_path / "evaluated.yaml"
    spec_path.write_text(
        textwrap.dedent(
            f"""\
            name: evaluated
            base:
              data: {{stage1: {{source: synthetic, synthetic: {{num_samples: 48, seed: 5}}}}}}
              stage1: {{lr: 1.0e-3, global_batch_size: 16, micro_batch_size: 8, epochs: 1}}
              eval:
                enabled: true
                diagnostics: {{every_steps: 1, heldout_samples: 16}}
                synthetic: {{num_images: 8, num_text_questions: 8}}
                benchmarks:
                  - {{name: pope, kind: pope}}
                  - {{name: text-mc, kind: text_mc}}
              resources: {{num_workers: 1, cpus_per_worker: 1}}
            output: {{root: {tmp_path / "results"}, tracking_uri: "{url}"}}
            """
        )
    )
    assert main(["grid", str(spec_path)]) == 0
    # The summary ends what the command printed (the workers' own lines: tests/grid/test_interrupt.py).
    out = capsys.readouterr().out
    assert "[eval]" not in out and out.rstrip().splitlines()[-1].startswith("MLflow:"), out[-2000:]
    exp = json.loads(_get(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=evaluated"))
    (run,) = [
        r
        for r in _post(
            f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment"]["experiment_id"]]}
        )["runs"]
        if {"key": "seagrid.role", "value": "trial"} in r["data"]["tags"]
    ]
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    for name in ("eval/pope", "eval/pope/random/f1", "eval/text-mc", "diag/tacs", "diag/modality_gap"):
        assert name in metrics, name
    assert 0 <= metrics["eval/pope"] <= 1 and 0 <= metrics["eval/text-mc"] <= 1
    # The stage-1 curve: one TACS point per optimizer step (48 samples / 16 = 3 steps).
    q = urllib.parse.urlencode({"run_id": run_id, "metric_key": "diag/tacs"})
    history = json.loads(_get(f"{url}/api/2.0/mlflow/metrics/get-history?{q}"))["metrics"]
    assert sorted({m["step"] for m in history}) == [1, 2, 3]

    listed = json.loads(_get(f"{url}/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=eval/stage1"))
    names = {Path(f["path"]).name for f in listed["files"]}
    assert {"metrics.json", "patch_words.png", "pca.png", "tacs_curve.png", "predictions"} <= names
    q = urllib.parse.urlencode({"run_id": run_id, "path": "eval/stage1/metrics.json"})
    served = json.loads(_get(f"{url}/get-artifact?{q}"))
    assert served["metrics"]["eval/pope"] == pytest.approx(metrics["eval/pope"])
    q = urllib.parse.urlencode({"run_id": run_id, "path": "eval/stage1/patch_words.png"})
    Image.open(io.BytesIO(_get(f"{url}/get-artifact?{q}"))).verify()

    report = build_report(spec_path, tracking_uri=url, console=quiet())
    cell = report.cell("eval/pope", {"method.name": "llava", "model.llm": "tiny-llama"})
    assert cell["mean"] == pytest.approx(metrics["eval/pope"]) and cell["n"] == 1

    # The trial evaluated in its training worker; the grid's own evaluation step (a Ray task that loads
    # the stage's saved weights) gives the same numbers.
    (trial,) = expand(load_spec(spec_path))
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    elsewhere = tmp_path / "elsewhere" / "steps"
    stage1 = Path(tags["result.stage1/dir"])
    shutil.copytree(stage1, elsewhere / stage1.name)
    runtime = TrialRuntime(trial=trial.config, cache_dir=os.environ["SEAGRID_CACHE"])
    out_dir = run_step(trial_steps(trial.config).evals["stage1"], elsewhere, runtime).path
    again = read_metrics(out_dir)
    assert out_dir.parent == elsewhere and (out_dir / "patch_words.png").is_file()
    assert again.keys() == served["metrics"].keys()
    for key, value in served["metrics"].items():
        assert again[key] == pytest.approx(value, abs=1e-6), key

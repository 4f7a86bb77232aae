"""Searches: the `search:` block's validation, and a real ASHA search on tiny models that is interrupted,
resumed, tracked in MLflow and leaves no placement group or Train actor behind."""

from __future__ import annotations

import io
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune import Callback
from rich.console import Console

from grid.search import best_row, sampled_trial, sort_rows
from grid.search_spec import final_metrics, per_step_metrics
from grid.spec import SpecError, TrialConfig, load_spec, parse_spec
from grid.trial import final_flat, flat_metrics

BASE = {
    "model": {"llm": "tiny-llama", "encoder": "tiny-clip"},
    "method": {"name": "sea"},
    "stage1": {"global_batch_size": 16, "micro_batch_size": 16},
}


def spec_with(search: dict[str, Any], **extra: Any) -> dict[str, Any]:
    # L_lm alone: the total loss contains align_weight x L_align, which the guard refuses for a search of it.
    return {
        "name": "s",
        "base": BASE,
        "search": {"metric": "stage1/loss/lm", "mode": "min", **search},
        **extra,
    }


@pytest.mark.parametrize(
    ("search", "extra", "expected"),
    [
        (
            {"space": {"method.sea.windo": {"choice": [1]}}},
            {},
            "search.space: unknown config path 'method.sea.windo'",
        ),
        (
            {"space": {"method.sea.window": {"uniform": [1, 3]}}},
            {},
            "search.space.method.sea.window.uniform: the field holds int",
        ),
        (
            {"space": {"method.sea.window": {"randint": [0, 3]}}},
            {},
            "the value 0 does not fit: method.sea.window",
        ),
        ({"space": {"method.sea.align_weight": {"loguniform": [0, 1]}}}, {}, "low must be > 0"),
        ({"space": {"method.sea.align_weight": {"uniform": [2, 1]}}}, {}, "low 2 must be below high 1"),
        ({"space": {"method.sea.align_weight": {"normal": [0, 1]}}}, {}, "write one distribution"),
        ({"space": {"method.sea": {"choice": [1]}}}, {}, "'method.sea' is a section"),
        ({"space": {"method.sea.top_n": {"choice": [1, 0]}}}, {}, "the value 0 does not fit"),
        (
            {"space": {"stage1.lr": {"choice": [0.1]}}, "metric": "eval/pope"},
            {},
            "no trial reports 'eval/pope'",
        ),
        (
            {
                "space": {"stage1.lr": {"choice": [0.1]}},
                "metric": "stage1/final_loss",
                "scheduler": {"kind": "asha"},
            },
            {},
            "asha needs a metric reported at every step",
        ),
        (
            {"space": {"stage1.lr": {"grid": [0.1, 0.2]}}, "algorithm": "optuna"},
            {},
            "optuna samples its values itself",
        ),
        (
            {"space": {"stage1.lr": {"choice": [0.1]}}},
            {"grid": {"axes": {"stage1.lr": [0.1, 0.2]}}},
            "search.space.stage1.lr: this path is a grid axis too",
        ),
    ],
)
def test_search_block_errors_name_the_yaml_path(search: dict, extra: dict, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(search, **extra), "x.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("x.yaml: ")


def test_diag_metric_is_per_step_only_with_a_curve() -> None:
    curve = {"enabled": True, "diagnostics": {"every_steps": 2}}
    with pytest.raises(SpecError, match="set eval.diagnostics.every_steps"):
        parse_spec(
            spec_with(
                {
                    "space": {"stage1.lr": {"choice": [0.1]}},
                    "metric": "diag/tacs",
                    "scheduler": {"kind": "asha"},
                },
                base={**BASE, "eval": {"enabled": True}},
            ),
            "x.yaml",
        )
    spec = parse_spec(
        spec_with(
            {"space": {"stage1.lr": {"choice": [0.1]}}, "metric": "diag/tacs", "scheduler": {"kind": "asha"}},
            base={**BASE, "eval": curve},
        )
    )
    assert spec.search is not None and spec.search.metric == "diag/tacs"
    cfg = TrialConfig.model_validate({**BASE, "eval": curve})
    assert "diag/label_recall" in per_step_metrics(cfg) and "stage1/loss/align" in per_step_metrics(cfg)
    assert "stage1/final_loss" in final_metrics(cfg) and "stage1/final_loss" not in per_step_metrics(cfg)


def test_experiment_search_specs_load() -> None:
    from grid.expand import expand
    from grid.search import search_summary

    for name in ("search_sea", "search_basic", "smoke_search"):
        spec = load_spec(Path(__file__).resolve().parents[2] / "experiments" / f"{name}.yaml")
        assert spec.search is not None and spec.search.num_samples >= 6
        if name == "search_sea":  # one search per LLM: the plan shows the space and the budget
            text = search_summary(spec, expand(spec))
            assert "2 cell(s) x 24 trials = 48 trials at most" in text
            assert "method.sea.window: choice [1, 2, 3, 4]" in text


def test_reports_carry_the_search_metric() -> None:
    step = {"stage": "stage1", "step": 3, "metrics": {"stage1/loss": 2.5}}
    assert flat_metrics(step, "stage1/loss") == {"stage1/loss": 2.5, "stage1/step": 3}
    diag = flat_metrics(step, "diag/tacs")  # no fresh value: NaN and no step, so ASHA skips it
    assert math.isnan(diag["diag/tacs"]) and "stage1/step" not in diag
    final = final_flat({"stage1/final_loss": 1.5, "stage1/reused": False, "eval/pope": 0.5}, "stage1/loss")
    assert final == {"stage1/final_loss": 1.5, "eval/pope": 0.5, "stage1/loss": 1.5}


def test_samples_that_agree_on_stage1_share_its_step() -> None:
    from core.pipeline import trial_steps
    from grid.expand import expand

    spec = parse_spec(
        spec_with(
            {"space": {"eval.max_new_tokens": {"choice": [8, 16]}}, "metric": "stage1/final_loss"},
            base={**BASE, "eval": {"enabled": True}},
        )
    )
    cell = expand(spec)[0]
    a, b = (trial_steps(sampled_trial(cell, {"eval.max_new_tokens": n}).config) for n in (8, 16))
    assert a.stages["stage1"].dirname == b.stages["stage1"].dirname  # materialised once, then reused
    assert a.evals["stage1"].dirname != b.evals["stage1"].dirname


def test_sampled_trial_is_a_grid_trial_and_best_skips_stopped() -> None:
    spec = parse_spec(spec_with({"space": {"method.sea.align_weight": {"choice": [0.5, 2.0]}}}))
    from grid.expand import expand

    cell = expand(spec)[0]
    a, b = (
        sampled_trial(cell, {"method.sea.align_weight": 0.5}),
        sampled_trial(cell, {"method.sea.align_weight": 2.0}),
    )
    assert a.config.method.sea.align_weight == 0.5 and a.id != b.id
    assert a.id == sampled_trial(cell, {"method.sea.align_weight": 0.5}).id
    rows = [
        {"status": "stopped (asha)", "value": 0.1},
        {"status": "done", "value": 0.3},
        {"status": "done", "value": 0.2},
        {"status": "done", "value": None},
    ]
    assert [r["value"] for r in sort_rows(rows, "min")] == [0.1, 0.2, 0.3, None]
    assert best_row(rows, "min") == {"status": "done", "value": 0.2}
    assert best_row(rows, "max") == {"status": "done", "value": 0.3}


# BASIC's total loss at step 1 grows with das_weight whatever the learning: ASHA's rung-1 decisions are
# deterministic. One trial at a time, so the order is the grid's: das 0.01 finishes, the interruption
# comes; after the resume (Tune does not save ASHA's rungs) das 1 is recorded, 10 and 100 are stopped.
SEARCH_SPEC = """\
name: {name}
base:
  model: {{llm: tiny-llama, encoder: tiny-clip}}
  method: {{name: basic}}
  data:
    stage1: {{source: synthetic, synthetic: {{num_samples: 64, seed: 1}}}}
  stage1: {{lr: 1.0e-3, global_batch_size: 16, micro_batch_size: 16, epochs: 1, warmup_ratio: 0.0, log_every: 1}}
  resources: {{num_workers: 1, cpus_per_worker: 0.5}}
search:
  space:
    method.basic.das_weight: {{grid: [0.01, 1.0, 10.0, 100.0]}}
  metric: stage1/loss
  mode: min
  num_samples: 1
  scheduler: {{kind: asha, grace_period: 1, max_t: 2, reduction_factor: 2}}
  max_concurrent: 1
  accept_gameable_metric: "the test wants ASHA's decisions fixed by das_weight, so the total loss on purpose"
output: {{root: {root}, tracking_uri: "sqlite:///{db}"}}
"""


COMPLETED_BEFORE: list[str] = []


class InterruptAfterFirst(Callback):
    """Stops the Tune run (as Ctrl-C would: Tune's SIGUSR1 handler) once the first trial has completed."""

    def __init__(self) -> None:
        self.sent = False

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        COMPLETED_BEFORE.append(trial.trial_id)
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGUSR1)

    def __getstate__(self) -> dict[str, Any]:
        return {"sent": True}  # restored: never interrupts again


@pytest.mark.slow
def test_asha_search_interrupted_resumed_tracked_and_clean(ray_session, tmp_path: Path) -> None:
    from core.train.cleanup import leftover_train_resources
    from grid.search import run_search

    spec_path = tmp_path / "search.yaml"
    db = tmp_path / "mlflow.db"
    spec_path.write_text(SEARCH_SPEC.format(name="tiny_search", root=tmp_path / "results", db=db))
    best_dir = tmp_path / "best"

    t0 = time.time()
    first = run_search(spec_path, best_dir=best_dir, callbacks=[InterruptAfterFirst()])
    assert first[0].interrupted
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("tiny_search")
    done_before = set(COMPLETED_BEFORE)
    assert done_before  # a trial completed (finished or stopped by ASHA) before the interruption
    interrupted = client.search_runs([exp.experiment_id], "tags.`seagrid.stopped` = 'interrupted'")
    assert all(r.info.status == "KILLED" for r in interrupted)  # a trial the interruption cut short
    assert not client.search_runs(
        [exp.experiment_id], "attributes.status = 'RUNNING' and tags.`seagrid.role` = 'trial'"
    )

    second = run_search(spec_path, best_dir=best_dir)
    wall = time.time() - t0
    print(f"search wall time (interrupted + resumed): {wall:.0f} s")
    outcome = second[0]
    assert not outcome.interrupted
    runs = client.search_runs([exp.experiment_id], "tags.`seagrid.role` = 'trial'")
    by_trial: dict[str, list] = {}
    for r in runs:
        by_trial.setdefault(r.data.tags["seagrid.tune_trial"], []).append(r)
    assert len(by_trial) == 4
    for tid in done_before:  # completed trials were not run again
        assert len(by_trial[tid]) == 1
    for r in interrupted:  # the interrupted one ran again, to its end, in its reopened run
        (again,) = by_trial[r.data.tags["seagrid.tune_trial"]]
        assert again.info.run_id == r.info.run_id and again.info.status != "RUNNING"
        assert (
            again.data.tags["seagrid.attempt"] == "2"
            and again.data.tags.get("seagrid.stopped") != "interrupted"
        )
    latest = {tid: max(rs, key=lambda r: r.info.start_time) for tid, rs in by_trial.items()}
    stopped = [r for r in latest.values() if r.data.tags.get("seagrid.stopped") == "asha"]
    assert {float(r.data.params["method.basic.das_weight"]) for r in stopped} == {10.0, 100.0}
    assert all(r.info.status == "KILLED" for r in stopped)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in latest.values())
    # Sampled values are params (every config value is) and tags; runs nest under the search's run.
    search_run = client.get_run(outcome.parent_run)
    assert search_run.info.status == "FINISHED" and search_run.data.tags["seagrid.role"] == "search"
    # The spec acknowledged its gameable metric: the acknowledgement and the guard's reason are on record.
    assert search_run.data.tags["seagrid.guard_override"].startswith("the test wants ASHA's decisions")
    assert "method.basic.das_weight x L_das" in search_run.data.tags["seagrid.guard_reason"]
    for r in latest.values():
        assert r.data.tags["mlflow.parentRunId"] == outcome.parent_run
        sampled = r.data.tags["sample.method.basic.das_weight"]
        assert float(r.data.params["method.basic.das_weight"]) == float(sampled)
    # The best config: the smallest das weight, a ready-to-run spec, logged with the table and the plot.
    assert outcome.best is not None and outcome.best["params"]["method.basic.das_weight"] == 0.01
    best = load_spec(outcome.best_spec)
    assert best.search is None and best.base.method.basic.das_weight == 0.01
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run, "search")}
    assert {"search/trials.json", "search/metric_vs_params.png"} <= artifacts
    assert yaml.safe_load(outcome.best_spec.read_text())["name"] == "tiny_search-best"
    # No placement group and no Train actor of a stopped trial is left (the GCS cleaner's work).
    deadline = time.time() + 30
    while (left := leftover_train_resources()) != {
        "placement_groups": [],
        "actors": [],
    } and time.time() < deadline:
        time.sleep(1)
    assert left == {"placement_groups": [], "actors": []}


def test_callbacks_pickle_to_what_rebuilds_them(tmp_path: Path) -> None:
    """Tune restores callbacks from a pickle: the tracker comes back from its URI and the run an earlier
    invocation started is found again by tag, so results after a resume land in the same run."""
    import pickle

    from grid.console import Board
    from grid.expand import expand
    from grid.run import GridResult
    from grid.search import SearchCallback
    from grid.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = parse_spec(spec_with({"space": {"method.sea.align_weight": {"choice": [0.5, 2.0]}}}))
    cell = expand(spec)[0]
    tracker = Tracker("s", uri)
    parent = tracker.search_run("key", "search s", tracker.parent_run())
    board = Board("s", Console(file=io.StringIO()), live=False)
    cb = SearchCallback(tracker, parent, cell, "key", "asha", out=GridResult(), board=board)
    tune_trial = type(
        "T", (), {"trial_id": "abc_00000", "config": {"params": {"method.sea.align_weight": 2.0}}}
    )()
    cb.on_trial_start(0, [], tune_trial)
    run_id = cb.out.run_ids["abc_00000"]

    back = pickle.loads(pickle.dumps(cb))
    assert back.tracker.uri == uri and back.parent_id == parent and back.key == "key"
    assert back.out.run_ids == {}  # a new invocation's result; the run is found by its tag
    back.attach(board, GridResult())
    step = {"seagrid": {"stage": "stage1", "step": 1, "total_steps": 4, "metrics": {"stage1/loss": 3.0}}}
    back.on_trial_result(0, [], tune_trial, step)
    back.on_trial_complete(0, [], tune_trial)  # no final report: stopped by ASHA
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["seagrid.stopped"] == "asha"
    assert run.data.metrics["stage1/loss"] == 3.0 and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["method.sea.align_weight"] == "2.0"

"""A tiny two-stage search end to end (experiments/smoke_search.yaml, fewer samples): each trial runs SEA's
label step, stage 1, stage 2 with its held-out L_lm every step, and POPE; ASHA compares stage 2's held-out
L_lm; the first trial is the base config and the report says how much the best beats it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~4 min on an idle 2-core machine; three times that under other tests' load
def test_tiny_two_stage_search_end_to_end(ray_session, tmp_path: Path) -> None:
    from grid.search import run_search
    from grid.search_report import VS_DEFAULT_FILE

    data = yaml.safe_load((REPO / "experiments" / "smoke_search.yaml").read_text())
    data["search"].update(num_samples=2, max_concurrent=1)
    db = tmp_path / "mlflow.db"
    data["output"] = {"root": str(tmp_path / "results"), "tracking_uri": f"sqlite:///{db}"}
    spec_path = tmp_path / "smoke_search.yaml"
    spec_path.write_text(yaml.safe_dump(data))

    t0 = time.time()
    (outcome,) = run_search(spec_path, best_dir=tmp_path / "best")
    print(f"two-stage search wall time: {time.time() - t0:.0f} s")
    assert not outcome.interrupted and len(outcome.rows) == 2

    client = MlflowClient(f"sqlite:///{db}")
    runs = [client.get_run(r["run_id"]) for r in outcome.rows]
    for run in runs:  # every trial reached stage 2: its held-out L_lm curve is logged
        curve = client.get_metric_history(run.info.run_id, "stage2/heldout/lm")
        assert curve and all(m.value > 0 for m in curve)
        assert "stage1/loss" in run.data.metrics  # stage 1 ran first, in the same trial
    finished = [r for r in outcome.rows if r["status"] == "done"]
    assert finished and all(r["value"] is not None for r in finished)  # POPE F1 after stage 2
    for row in finished:
        assert json.loads(client.get_run(row["run_id"]).data.tags["seagrid.sampled"]) == row["params"]
        assert "stage2/heldout/lm" in row["extra"] and "eval/pope" in row["extra"]

    # The first trial ran the base config's own values; the comparison with it is written and logged.
    (default,) = [r for r in outcome.rows if r["default"]]
    assert default["params"] == {"stage1.lr": 1.0e-3, "method.sea.align_weight": 1.0}
    assert default["status"] == "done"  # first at one trial at a time: no rung had anyone to beat
    reports = tmp_path / "results" / "reports" / outcome.key
    summary = json.loads((reports / VS_DEFAULT_FILE).read_text())
    assert outcome.best is not None
    assert summary["best"]["value"] == outcome.best["value"] >= summary["default"]["value"]
    assert summary["gain"] == pytest.approx(outcome.best["value"] - default["value"])
    parent = client.get_run(outcome.parent_run)
    assert parent.data.metrics["search/gain"] == pytest.approx(summary["gain"])
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run, "search")}
    assert {
        "search/vs_default.json",
        "search/metric_by_knob.json",
        "search/metric_vs_params.png",
    } <= artifacts
    knobs = json.loads((reports / "metric_by_knob.json").read_text())
    assert set(knobs) == {"stage1.lr", "method.sea.align_weight"} and len(knobs["stage1.lr"]) == 2

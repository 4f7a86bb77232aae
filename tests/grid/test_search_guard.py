"""The search guard: the shipped searches as they were are refused at load time, with the reason and the
metrics that would serve; an explicit acknowledgement lets one through; the new shipped searches load."""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.config import TrialConfig
from core.methods.terms import METHOD_TERMS, trained_metrics, weighted_metrics
from grid.search_budget import asha_fraction
from grid.search_guard import gameable
from grid.search_spec import base_point
from grid.spec import SpecError, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]
BEFORE = REPO / "tests" / "fixtures" / "searches_before_guard"


def test_search_basic_as_it_was_is_refused() -> None:
    with pytest.raises(SpecError) as err:
        load_spec(BEFORE / "search_basic.yaml")
    text = str(err.value)
    assert text.startswith(f"{BEFORE / 'search_basic.yaml'}: search.metric: 'stage1/loss' rewards")
    assert "method.basic.das_weight (it contains method.basic.das_weight x L_das)" in text
    assert "method.basic.sds_weight (it contains method.basic.sds_weight x L_sds)" in text
    assert "e.g. stage1/loss/lm" in text and "search.accept_gameable_metric" in text


def test_search_sea_as_it_was_is_refused() -> None:
    with pytest.raises(SpecError) as err:
        load_spec(BEFORE / "search_sea.yaml")
    text = str(err.value)
    assert "'diag/label_recall' rewards the searched knobs by construction" in text
    assert "method.sea.align_weight, method.sea.window, method.sea.top_n" in text
    # What would serve: a benchmark and L_lm, not SEA's other diagnostics (L_a trains those too).
    assert "eval/pope" in text and "stage1/loss/lm" in text and "diag/tacs" not in text


def test_smoke_search_as_it_was_passes() -> None:
    """Its metric was already the LM loss alone, which no searched knob scales."""
    assert load_spec(BEFORE / "smoke_search.yaml").search is not None


def _data(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_an_acknowledged_gameable_metric_loads() -> None:
    data = _data(BEFORE / "search_basic.yaml")
    data["search"]["accept_gameable_metric"] = "we want the smallest total loss on purpose, for a plot"
    spec = parse_spec(data, "x.yaml")
    assert spec.search is not None and spec.search.metric == "stage1/loss"


@pytest.mark.parametrize(
    ("method", "space", "metric", "refused"),
    [
        ("sea", ["method.sea.align_weight"], "stage1/loss", True),
        ("sea", ["method.sea.align_weight"], "stage1/final_loss", True),
        ("sea", ["method.sea.top_n"], "stage1/loss", False),  # top_n scales nothing
        ("sea", ["method.sea.top_n"], "diag/label_recall", True),  # but shapes what L_a trains
        ("sea", ["stage1.lr"], "diag/label_recall", False),
        ("sea", ["method.sea.align_weight"], "stage2/loss", False),  # SEA trains in stage 1 only
        ("basic", ["method.basic.sds_weight"], "stage2/loss", True),
        ("basic", ["method.basic.das_weight"], "stage1/loss/lm", False),
        ("sea+basic", ["method.basic.das_weight"], "stage1/loss", True),
        ("llava", ["stage1.lr"], "stage1/loss", False),
    ],
)
def test_guard_reads_the_terms_declared_with_the_objectives(
    method: str, space: list[str], metric: str, refused: bool
) -> None:
    cfg = TrialConfig.model_validate({"method": {"name": method}, "stage2": {"enabled": True}})
    assert bool(gameable(metric, space, cfg)) is refused


def test_every_weight_is_a_config_field_and_its_term_is_logged() -> None:
    from grid.search_spec import per_step_metrics

    cfg = TrialConfig.model_validate({"method": {"name": "sea+basic"}, "stage2": {"enabled": True}})
    steps = per_step_metrics(cfg)
    for parts in METHOD_TERMS.values():
        for terms in parts:
            for weight in terms.weights:
                section, name = weight.rsplit(".", 1)
                assert name in type(attrgetter(section)(cfg)).model_fields
                assert {m for m in weighted_metrics(terms, weight) if "final" not in m} <= steps
            assert {m for m in trained_metrics(terms) if "/loss/" in m} <= steps


def test_shipped_searches_use_held_out_scores_and_the_default_first() -> None:
    for name, metric in (
        ("search_sea", "eval/pope"),
        ("search_basic", "eval/gqa"),
        ("smoke_search", "eval/pope"),
    ):
        spec = load_spec(REPO / "experiments" / f"{name}.yaml")
        s = spec.search
        assert s is not None and s.metric == metric and s.mode == "max" and not s.accept_gameable_metric
        assert s.scheduler.metric == "stage2/heldout/lm" and s.start_from_base
        cfg = spec.base
        assert cfg.stage2.enabled and cfg.stage2.heldout.every_steps
        assert base_point(s, cfg)  # the paper's default lies inside the space


@pytest.mark.parametrize(
    ("search", "expected"),
    [
        (
            {"scheduler": {"kind": "asha", "metric": "stage1/final_loss", "mode": "min"}},
            "search.scheduler.metric: 'stage1/final_loss' is not reported at every step",
        ),
        (
            {"space": {"method.sea.align_weight": {"loguniform": [2.0, 10.0]}}, "start_from_base": True},
            "start_from_base: the base value of method.sea.align_weight (1.0) is outside loguniform",
        ),
        (
            {"space": {"method.sea.align_weight": {"grid": [1.0, 2.0]}}, "start_from_base": True},
            "start_from_base: method.sea.align_weight is a grid",
        ),
    ],
)
def test_scheduler_metric_and_base_point_are_checked(search: dict, expected: str) -> None:
    block = {"space": {"stage1.lr": {"choice": [0.1]}}, "metric": "stage1/loss/lm", "mode": "min", **search}
    data = {
        "name": "s",
        "base": {"model": {"llm": "tiny-llama", "encoder": "tiny-clip"}, "method": {"name": "sea"}},
        "search": block,
    }
    with pytest.raises(SpecError, match="x.yaml: ") as err:
        parse_spec(data, "x.yaml")
    assert expected in str(err.value)


def test_asha_share_of_steps() -> None:
    share, rungs = asha_fraction(1000, 200, 1000, 3)
    assert rungs == [200, 600]
    assert share == pytest.approx((200 + 400 / 3 + 400 / 9) / 1000)
    assert asha_fraction(10, 20, 100, 2) == (1.0, [])  # the stage ends before the first rung


def test_plan_shows_the_gpu_hours_of_the_whole_search_at_its_budget() -> None:
    from grid.expand import expand
    from grid.search import search_summary
    from grid.search_budget import search_budget

    spec = load_spec(REPO / "experiments" / "search_sea.yaml")
    text = search_summary(spec, expand(spec))
    assert "GPU-hours of the whole search: at most" in text and "rungs at steps 200, 600" in text
    s, cfg = spec.search, expand(spec)[0].config
    assert s is not None
    one, two = search_budget(s, cfg, 24), search_budget(s, cfg, 48)
    assert one is not None and two is not None
    assert two.full == pytest.approx(2 * one.full) and one.expected < one.full  # ASHA cuts stage 2
    no_asha = search_budget(
        s.model_copy(update={"scheduler": s.scheduler.model_copy(update={"kind": "none"})}), cfg, 24
    )
    assert no_asha is not None and no_asha.expected == pytest.approx(one.full)
    wider = search_budget(s.model_copy(update={"max_concurrent": 2}), cfg, 24)
    assert wider is not None and wider.wall == pytest.approx(one.wall / 2)


def test_an_override_is_logged_to_the_search_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from grid.search_guard import OVERRIDE_TAG, REASON_TAG, log_guard_override
    from grid.tracking import Tracker

    data = _data(BEFORE / "search_basic.yaml")
    note = "we want the smallest total loss on purpose, for a plot"
    data["search"]["accept_gameable_metric"] = note
    spec = parse_spec(data, "x.yaml")
    assert spec.search is not None
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker("s", uri)
    run = tracker.search_run("key", "search s", tracker.parent_run())
    from grid.search_spec import final_metrics, per_step_metrics

    def log(run_id: str, s: Any, cfg: TrialConfig) -> str | None:
        reported = per_step_metrics(cfg) | final_metrics(cfg)
        return log_guard_override(tracker, run_id, s, cfg, reported, [s.metric])

    reason = log(run, spec.search, spec.base)
    tags = MlflowClient(uri).get_run(run).data.tags
    assert tags[OVERRIDE_TAG] == note and tags[REASON_TAG] == reason
    assert "method.basic.das_weight (it contains method.basic.das_weight x L_das)" in reason
    # A fair search logs nothing.
    fair = load_spec(REPO / "experiments" / "search_basic.yaml")
    other = tracker.search_run("key2", "search s2", tracker.parent_run())
    assert fair.search is not None and log(other, fair.search, fair.base) is None
    assert OVERRIDE_TAG not in MlflowClient(uri).get_run(other).data.tags


def test_tune_gets_the_objective_the_rung_metric_and_the_default_first() -> None:
    from grid.search import _tune_config

    spec = load_spec(REPO / "experiments" / "search_sea.yaml")
    s = spec.search
    assert s is not None
    tc = _tune_config(s, spec.base)
    # Tune takes neither from TuneConfig: the searcher optimises POPE, ASHA's rungs compare stage 2's L_lm.
    assert tc.metric is None and tc.mode is None
    assert (tc.scheduler._metric, tc.scheduler._mode, tc.scheduler._time_attr) == (
        "stage2/heldout/lm",
        "min",
        "stage2/step",
    )
    assert (tc.search_alg._metric, tc.search_alg._mode) == ("eval/pope", "max")
    assert tc.search_alg._points_to_evaluate == [
        {"params/method.sea.align_weight": 1.0, "params/method.sea.window": 2, "params/method.sea.top_n": 10}
    ]
    smoke = load_spec(REPO / "experiments" / "smoke_search.yaml")
    assert smoke.search is not None
    random_tc = _tune_config(smoke.search.model_copy(update={"max_concurrent": 1}), smoke.base)
    assert random_tc.search_alg._points_to_evaluate == [
        {"params": {"stage1.lr": 1.0e-3, "method.sea.align_weight": 1.0}}
    ]
    # Optuna reads its space from Tune's param space; its first suggestion is the default.
    from grid.search import _domains

    algo = tc.search_alg
    assert algo.set_search_properties(None, None, {"cell": {}, "params": _domains(s)})
    assert algo.suggest("t0")["params"] == {
        "method.sea.align_weight": 1.0,
        "method.sea.window": 2,
        "method.sea.top_n": 10,
    }


def test_mmlu_retention_is_a_search_metric_of_a_two_stage_trial() -> None:
    from grid.search_report import retention_metrics
    from grid.search_spec import final_metrics

    spec = load_spec(REPO / "experiments" / "search_sea.yaml")
    assert "eval/mmlu/retention" in final_metrics(spec.base)  # MMLU runs after both stages
    assert "eval/pope/retention" not in final_metrics(spec.base)  # POPE after the last stage only
    summary = {"eval/mmlu/before_stage2": 0.5, "eval/mmlu": 0.375, "eval/pope": 0.8, "stage2/reused": False}
    assert retention_metrics(summary) == {"eval/mmlu/retention": -0.125}


def test_a_benchmark_metric_must_be_one_its_kind_declares() -> None:
    """`eval/pope/<split>/f1` (POPE declares it) loads; a misspelt sub-metric is refused at load time with
    the names that exist, instead of a search whose every trial reports NaN."""
    data = _data(REPO / "experiments" / "smoke_search.yaml")
    data["search"]["metric"] = "eval/pope/adversarial/f1"
    assert parse_spec(data, "x.yaml").search is not None
    data["search"]["metric"] = "eval/pope/adversarial/f_1"
    with pytest.raises(SpecError) as err:
        parse_spec(data, "x.yaml")
    text = str(err.value)
    assert "no trial reports 'eval/pope/adversarial/f_1'" in text and "eval/pope/adversarial/f1" in text

"""`just report SPEC` beside the paper: a tiny grid, a made-up "published" table, deltas and missing cells."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from grid.cli import main
from grid.expand import expand
from grid.published import load_published, published_path
from grid.report import build_report
from grid.spec import SpecError, load_spec
from grid.tracking import Tracker

SPEC = """\
name: beside
base:
  model: {{llm: tiny-llama, encoder: tiny-clip, adapter: mlp2x_gelu}}
  stage1: {{global_batch_size: 16, micro_batch_size: 8}}
grid:
  axes:
    method.name: [llava, sea]
    seed: [0, 1, 2]
output: {{root: {root}, tracking_uri: "{uri}"}}
"""
# Not a paper's numbers: a fake table for the test, in percent like the papers'.
PUBLISHED = {
    "tables": [{
        "title": "Fake Table 9",
        "source": "made up for this test",
        "columns": {"eval/pope": {"label": "POPE"}, "eval/mme": {"label": "MME", "scale": 1}},
        "rows": [
            {"label": "LLaVA", "match": {"method.name": "llava"}, "values": {"eval/pope": 80.0, "eval/mme": 1500}},
            {"label": "+ SEA", "match": {"method.name": "sea"}, "values": {"eval/pope": 85.0, "eval/mme": 1510}},
            {"label": "+ BASIC", "match": {"method.name": "basic"}, "values": {"eval/pope": 86.0}},
        ],
    }]
}  # fmt: skip
# (method, seed) -> eval/pope as logged (a fraction); sea seed 2 never finishes.
POPE = {("llava", 0): 0.81, ("llava", 1): 0.83, ("llava", 2): 0.82, ("sea", 0): 0.86, ("sea", 1): 0.88}


def _grid(tmp_path: Path) -> Path:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = tmp_path / "beside.yaml"
    spec.write_text(SPEC.format(root=tmp_path / "results", uri=uri))
    (tmp_path / "published").mkdir()
    published_path(spec).write_text(yaml.safe_dump(PUBLISHED, sort_keys=False))
    tracker = Tracker("beside", uri)
    parent = tracker.parent_run(str(spec))
    for trial in expand(load_spec(spec), str(spec)):
        value = POPE.get((trial.config.method.name, trial.config.seed))
        run_id = tracker.start_trial(trial, parent)
        if value is not None:
            tracker.finish(run_id, {"eval/pope": value})
    return spec


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_report_prints_the_paper_beside_the_run(tmp_path: Path) -> None:
    spec = _grid(tmp_path)
    console = Console(record=True, width=200)
    report = build_report(spec, console=console, log_artifacts=False)
    (table, rows), = report.published.tables  # fmt: skip
    llava, sea, basic = rows
    assert llava["eval/pope"].mean == pytest.approx(82.0) and len(llava["eval/pope"].values) == 3
    assert llava["eval/pope"].delta == pytest.approx(2.0) and llava["eval/pope"].std == pytest.approx(1.0)
    assert llava["eval/pope"].text() == "82 ± 1 (n=3) / 80 (+2)"
    assert sea["eval/pope"].text() == "87 ± 1.4 (n=2) / 85 (+2)"  # the unfinished seed is not a result
    assert llava["eval/mme"].text() == "no result / 1500"  # the grid never logged MME
    assert basic["eval/pope"].text() == "no trial / 86"  # the spec has no BASIC trial
    assert basic["eval/mme"].text() == "no trial / -"  # and the paper no number there
    markdown = (report.out_dir / "report.md").read_text()
    assert "## Beside the paper: Fake Table 9" in markdown and "made up for this test" in markdown
    assert "| + SEA | 87 ± 1.4 (n=2) / 85 (+2) | no result / 1510 |" in markdown
    csv = (report.out_dir / "published.csv").read_text().splitlines()
    assert csv[0].startswith("table,row,metric,column,published,mean,std,n,trials,delta") and len(csv) == 7
    text = console.export_text()
    assert "beside the paper: Fake Table 9" in text and "82 ± 1 (n=3) / 80 (+2)" in text
    # The run's own table aggregates the seed axis as mean ± std (n) too.
    assert (
        report.cell("eval/pope", {"method.name": "llava", "model.llm": "tiny-llama"})["cell"]
        == "82.0 ± 1.0 (n=3)"
    )


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_a_spec_without_published_numbers_reports_as_before(tmp_path: Path) -> None:
    spec = _grid(tmp_path)
    published_path(spec).unlink()
    report = build_report(spec, console=Console(record=True), log_artifacts=False)
    assert report.published is None and "Beside the paper" not in report.markdown
    assert not (report.out_dir / "published.csv").exists()


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_a_bad_published_file_names_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _grid(tmp_path)
    bad = {"tables": [{**PUBLISHED["tables"][0], "rows": [{"label": "x", "match": {"method.nam": "sea"}}]}]}
    published_path(spec).write_text(yaml.safe_dump(bad))
    with pytest.raises(
        SpecError, match=r"published/beside.yaml: tables\[0\] row 'x' match: unknown config path"
    ):
        load_published(spec)
    assert main(["report", str(spec)]) == 2
    assert "unknown config path 'method.nam'" in capsys.readouterr().err
    extra = {
        "tables": [{**PUBLISHED["tables"][0], "rows": [{"label": "y", "match": {}, "values": {"eval/x": 1}}]}]
    }
    published_path(spec).write_text(yaml.safe_dump(extra))
    with pytest.raises(SpecError, match=textwrap.dedent("row 'y': values for \\['eval/x'\\]")):
        load_published(spec)


def test_every_paper_spec_has_a_valid_published_table() -> None:
    repo = Path(__file__).resolve().parents[2]
    for name in ("scaling", "encoders", "transfer", "basic", "ablation_basic"):
        spec = repo / "experiments" / f"{name}.yaml"
        published = load_published(spec)
        assert published is not None, name
        trials = expand(load_spec(spec), str(spec))
        for table in published.tables:
            assert table.source and "papers/" in table.source
            for row in table.rows:  # every paper row is a trial of the spec
                from grid.published import matching

                assert matching(row, trials), f"{name}: {table.title}: row {row.label} matches no trial"


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_plan_shows_which_paper_cells_the_trials_fill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from grid.table_cells import FILLED, NO_BENCHMARK, NO_TRIAL, cell_states

    spec = _grid(tmp_path)
    text = spec.read_text().replace(
        "  stage1: {global_batch_size: 16, micro_batch_size: 8}\n",
        "  stage1: {global_batch_size: 16, micro_batch_size: 8}\n"
        "  eval: {enabled: true, benchmarks: [{name: pope, kind: pope}]}\n",
    )
    spec.write_text(text)
    trials = expand(load_spec(spec), str(spec))
    (table,) = load_published(spec).tables
    states = cell_states(table, trials)
    assert [len(hits) for hits, _ in states] == [3, 3, 0]  # three seeds each; no BASIC trial
    assert states[0][1] == {"eval/pope": FILLED, "eval/mme": NO_BENCHMARK}
    assert states[2][1] == {"eval/pope": NO_TRIAL, "eval/mme": NO_TRIAL}
    assert main(["plan", str(spec)]) == 0
    out = capsys.readouterr().out
    assert (
        "cells of Fake Table 9" in out
        and "2 of 6 cells planned; no benchmark in the spec logs eval/mme" in out
    )

"""A researcher's mistakes in a spec never change what runs silently: YAML's traps, spellings of one value,
filters that match nothing, empty and huge grids; each refused with one sentence, exit 2, nothing written."""

from __future__ import annotations

import os
import textwrap
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from grid.cli import main
from grid.expand import Trial, expand, expand_grid
from grid.plan import make_plan
from grid.spec import SpecError, load_spec
from grid.tracking import Tracker


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _spec(tmp_path: Path, body: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], spec: Path) -> str:
    """Run the CLI in tmp_path; it must exit 2 with no traceback and leave nothing new behind."""
    before = _tree(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main([*args, str(spec)]) == 2
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert str(spec) in err, err
    assert _tree(tmp_path) == before, "a refused command wrote something"
    return err


# ---------------------------------------------------------------- YAML read strictly


def test_unquoted_off_is_the_string_off_not_zero_stage_0(tmp_path: Path) -> None:
    text = "name: g\ndescription: yes\nbase: {stage1: {deepspeed: {zero: off}}, stage2: {enabled: on}}\n"
    assert yaml.safe_load(text)["base"]["stage1"]["deepspeed"]["zero"] is False  # YAML 1.1: the trap
    spec = load_spec(_spec(tmp_path, text))
    assert spec.base.stage1.deepspeed.zero == "off"  # plain DDP, as the README documents
    assert spec.base.stage2.enabled is True  # `on` for a switch still means on
    assert spec.description == "yes"  # a string stays the word written (YAML 1.1 made it True: refused)


def test_a_yaml11_boolean_where_a_number_is_expected_names_the_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path, "name: g\noutput: {max_concurrent_trials: no}\n")
    err = _refused(tmp_path, capsys, ["plan"], spec)
    assert "output.max_concurrent_trials" in err and "'no'" in err
    assert "YAML 1.2" in err and "yes/no/on/off are strings" in err


def test_duplicate_keys_name_both_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(
        tmp_path,
        """\
        name: g
        grid:
          axes:
            seed: [0, 1]
            stage1.lr: [0.1]
            seed: [2, 3]
        """,
    )
    err = _refused(tmp_path, capsys, ["plan"], spec)
    assert "key 'seed' is given twice, on line 4 and line 6" in err and "keep one" in err


def test_e_notation_is_a_number_everywhere(tmp_path: Path) -> None:
    spec = load_spec(
        _spec(
            tmp_path,
            """\
            name: g
            base:
              method: {name: sea}
              stage1: {lr: 1e-3, warmup_ratio: 0}
            grid: {axes: {seed: [010]}}
            search:
              space:
                stage1.lr: {loguniform: [1e-4, 1e-2]}
                method.sea.align_weight: {uniform: ['1e-2', '1']}
              metric: stage1/loss/lm
              mode: min
              num_samples: 2
            """,
        )
    )
    assert spec.base.stage1.lr == 0.001
    assert spec.grid.axes["seed"] == [10]  # YAML 1.2: a leading zero is not octal
    assert spec.search is not None and spec.search.space["stage1.lr"] == {"loguniform": [1e-4, 1e-2]}


def test_a_spec_that_is_utf16_or_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "utf16.yaml"
    spec.write_bytes("name: g\n".encode("utf-16"))
    err = _refused(tmp_path, capsys, ["plan"], spec)
    assert "not UTF-8 text" in err and "save the spec as UTF-8" in err
    folder = tmp_path / "experiments"
    folder.mkdir()
    err = _refused(tmp_path, capsys, ["plan"], folder)
    assert "is a directory" in err and "give the path of a spec file" in err


# ---------------------------------------------------------------- one value, one id


def test_spellings_of_one_value_are_one_cell_with_one_id(tmp_path: Path) -> None:
    spellings = expand_grid(
        load_spec(_spec(tmp_path, "name: g\ngrid: {axes: {stage1.lr: [1e-3, 1.0e-3, 0.001, '1e-3']}}\n"))
    )
    (plain,) = expand(load_spec(_spec(tmp_path, "name: g\ngrid: {axes: {stage1.lr: [0.001]}}\n", "b.yaml")))
    assert [t.id for t in spellings.trials] == [plain.id] and plain.id.startswith("lr=0.001-")
    assert spellings.counts.merged == 3
    assert spellings.trials[0].axes == {"stage1.lr": 0.001}


def test_a_section_value_is_named_by_what_was_written(tmp_path: Path) -> None:
    """A section given in part: its slug hash covers the keys written, as validated (not the defaults)."""
    a = expand(load_spec(_spec(tmp_path, "name: g\ngrid: {axes: {method.sea: [{align_weight: 1e-1}]}}\n")))
    b = expand(
        load_spec(_spec(tmp_path, "name: g\ngrid: {axes: {method.sea: [{align_weight: 0.1}]}}\n", "b.yaml"))
    )
    assert a[0].axes == {"method.sea": {"align_weight": 0.1}} and a[0].id == b[0].id


def test_a_run_recorded_under_the_old_spelling_is_still_done(tmp_path: Path) -> None:
    """Ids once took the raw YAML text (`lr=1e-3-<hash>`); such a finished run keeps its trial done."""
    db = f"sqlite:///{tmp_path / 'm.db'}"
    spec = load_spec(
        _spec(
            tmp_path,
            f"name: g\ngrid: {{axes: {{stage1.lr: [1e-3, 0.01]}}}}\noutput: {{tracking_uri: '{db}'}}\n",
        )
    )
    new = expand(spec)
    old = Trial(id=f"lr=1e-3-{new[0].hash}", axes={"stage1.lr": "1e-3"}, config=new[0].config)
    tracker = Tracker("g", db)
    run_id = tracker.start_trial(old, tracker.parent_run())
    tracker.finish(run_id, {})
    statuses = {r.trial.id: r.status for r in make_plan(spec, "spec", Tracker("g", db))}
    assert statuses == {new[0].id: "done", new[1].id: "new"} and new[0].id == f"lr=0.001-{new[0].hash}"


# ---------------------------------------------------------------- filters say what they did


GRID = """\
name: g
grid:
  axes: {model.encoder: [tiny-clip, tiny-dinov2], stage1.lr: [1.0e-3, 1.0e-2]}
  exclude: [EXCLUDE]
"""


def test_an_exclude_written_in_another_notation_still_matches(tmp_path: Path) -> None:
    spec = load_spec(
        _spec(tmp_path, GRID.replace("EXCLUDE", "{stage1.lr: 1e-3, model.encoder: tiny-dinov2}"))
    )
    found = expand_grid(spec)
    assert len(found.trials) == 3 and found.counts.excluded == [1]


def test_an_exclude_with_a_typo_is_refused_with_the_closest_cells(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path, GRID.replace("EXCLUDE", "{model.encoder: tiny-dinov, stage1.lr: 0.01}"))
    err = _refused(tmp_path, capsys, ["plan"], spec)
    assert "grid.exclude[0]" in err and "matches no cell" in err
    assert "closest cells: model.encoder='tiny-dinov2', stage1.lr=0.01" in err


@pytest.mark.parametrize(
    ("grid", "fragments"),
    [
        ("axes: {seed: [1]}\n  exclude: [{seed: 1}]", ["no cell left", "grid.exclude[0] removes 1"]),
        ("zip: [{}]", ["grid.zip[0]", "empty group"]),
        ("zip: [{seed: []}]", ["grid.zip[0].seed", "at least one value"]),
        ("axes: {seed: [1, 2]}\n  include: [{seed: 2}]", ["grid.include[0]", "adds nothing", "seed=2"]),
    ],
)
def test_grids_that_vanish_are_refused(
    grid: str, fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path, f"name: g\ngrid:\n  {grid}\n")
    err = _refused(tmp_path, capsys, ["plan"], spec)
    assert all(f in err for f in fragments), err


def test_plan_prints_what_each_filter_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = GRID.replace("EXCLUDE", "{model.encoder: tiny-dinov2}, {stage1.lr: 0.01}")
    spec = _spec(tmp_path, text + "  include: [{seed: 7}]\n")
    assert main(["plan", str(spec)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "4 cells from grid.axes/grid.zip; grid.exclude[0] removes 2; grid.exclude[1] removes 2" in out
    assert "3 removed in all" in out and "grid.include adds 1" in out


def test_an_axis_value_error_names_the_cell_not_the_base(tmp_path: Path) -> None:
    spec = load_spec(
        _spec(
            tmp_path,
            "name: g\nbase: {stage1: {deepspeed: {zero: 2}}}\n"
            "grid: {axes: {stage1.deepspeed.offload: [none, optimizer+params]}}\n",
        )
    )
    with pytest.raises(SpecError) as err:
        expand(spec, "s.yaml")
    text = str(err.value)
    assert "the cell stage1.deepspeed.offload='optimizer+params' is invalid" in text
    assert "in this cell, stage1.deepspeed" in text and "base.stage1" not in text


# ---------------------------------------------------------------- big grids stay cheap

BIG = """\
name: big
grid:
  axes:
    seed: {seeds}
    stage1.lr: {lrs}
    stage1.warmup_ratio: {warmups}
  exclude: [{{seed: 3}}]
output: {{tracking_uri: 'sqlite:///{db}'}}
"""


def _big(tmp_path: Path) -> Path:
    return _spec(
        tmp_path,
        BIG.format(
            seeds=list(range(100)),
            lrs=[round(0.001 * (i + 1), 6) for i in range(100)],
            warmups=[round(i / 200, 4) for i in range(100)],
            db=tmp_path / "m.db",
        ),
    )


def test_plan_of_a_million_cells_is_a_summary_in_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _big(tmp_path)
    before = _tree(tmp_path)
    tracemalloc.start()
    t0 = time.perf_counter()
    assert main(["plan", str(spec)]) == 0
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = " ".join(capsys.readouterr().out.split())
    assert "big: 990000 cells, too many to list" in out
    assert "1000000 cells from grid.axes/grid.zip; grid.exclude[0] removes 10000" in out
    assert "seed=0_lr=0.001_warmup_ratio=0.0-" in out and "seed=99_lr=0.1_warmup_ratio=0.495-" in out
    assert seconds < 10, seconds
    assert peak < 50e6, f"{peak / 1e6:.0f} MB"
    assert _tree(tmp_path) == before
    err = _refused(tmp_path, capsys, ["plan", "--format", "json"], spec)
    assert "too many for --format json" in err


def test_run_of_more_trials_than_the_setting_needs_yes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _big(tmp_path)
    t0 = time.perf_counter()
    err = _refused(tmp_path, capsys, ["grid"], spec)
    # Counted, not expanded (validating 10^6 configs takes many minutes); the bound covers importing Ray.
    assert time.perf_counter() - t0 < 30
    assert "would start 990000 trials, more than output.max_trials_unconfirmed=500" in err and "--yes" in err
    small = _spec(
        tmp_path,
        f"name: s\ngrid: {{axes: {{seed: [1, 2, 3]}}}}\n"
        f"output: {{root: {tmp_path / 'spec.yaml'}, max_trials_unconfirmed: 2, tracking_uri: 'sqlite:///{tmp_path}/m.db'}}\n",
        "small.yaml",
    )
    err = _refused(tmp_path, capsys, ["grid"], small)
    assert "would start 3 trials" in err and "output.root" in err  # every problem at once
    err = _refused(tmp_path, capsys, ["grid", "--yes"], small)
    assert "would start" not in err and "output.root" in err  # --yes lifts the limit, nothing else


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_a_large_grid_already_done_needs_no_yes(tmp_path: Path) -> None:
    """The limit counts the trials a run would start, not the grid's cells."""
    from grid.preflight import preflight_plan

    db = f"sqlite:///{tmp_path / 'm.db'}"
    text = f"name: d\ngrid: {{axes: {{seed: [1, 2, 3]}}}}\noutput: {{root: {tmp_path / 'r'}, max_trials_unconfirmed: 2, tracking_uri: '{db}'}}\n"
    spec = load_spec(_spec(tmp_path, text))
    tracker = Tracker("d", db)
    parent = tracker.parent_run()
    for t in expand(spec)[:2]:
        tracker.finish(tracker.start_trial(t, parent), {})
    rows = preflight_plan(spec, "spec.yaml", Tracker("d", db))  # 1 trial to start: no --yes needed
    assert [r.status for r in rows] == ["done", "done", "new"]

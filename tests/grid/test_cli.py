"""The `seagrid` command line and the justfile: every command and option explained, plans as JSON / CSV,
recipes that pass their arguments through, servers bound to 127.0.0.1."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import textwrap
from pathlib import Path

import pytest
from justfile_recipes import recipe

from grid.cli import build_parser, main
from grid.expand import expand
from grid.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_and_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    commands = subparsers(parser)
    assert set(commands) == {"plan", "grid", "tune", "labels", "report", "data", "export", "lmms"}
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for name, sub in commands.items():
        assert re.search(rf"^\s+{name}\s+\S", top, re.M), f"{name} has no summary in seagrid --help"
        assert sub.description, name
        for action in sub._actions:
            assert action.help, f"seagrid {name}: {action.dest} has no help"
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert sub.description.split()[0] in capsys.readouterr().out
    options = {name: {o for a in sub._actions for o in a.option_strings} for name, sub in commands.items()}
    assert {"--format"} <= options["plan"] and {"--verbose"} <= options["grid"]
    assert {"--rows", "--columns"} <= options["report"]
    assert {"--trial", "--stage", "--out", "--push"} <= options["export"] and "--tasks" in options["lmms"]


@pytest.mark.parametrize("command", ["grid", "plan", "tune", "labels", "report", "data", "export", "lmms"])
def test_recipes_pass_arguments_through(command: str) -> None:
    header, body = recipe(command)
    assert header.startswith(f"{command} SPEC *ARGS:")
    assert any(f"seagrid {command} {{{{SPEC}}}} {{{{ARGS}}}}" in ln for ln in body)


def test_mlflow_ui_binds_localhost_unless_told() -> None:
    header, body = recipe("mlflow")
    host = re.search(r'HOST="([^"]+)"', header)
    assert host and host.group(1) == "127.0.0.1"
    (serve,) = [ln for ln in body if "mlflow ui" in ln or "mlflow server" in ln]
    assert "--host {{HOST}}" in serve
    # Nothing in the justfile opens a server to the network by default.
    assert "0.0.0.0" not in "\n".join(
        ln for ln in (REPO / "justfile").read_text().splitlines() if not ln.startswith("#")
    )


SPEC = """\
name: planned
base:
  model: {{llm: tiny-llama, encoder: tiny-clip}}
  data: {{stage1: {{source: synthetic, synthetic: {{num_samples: 64, seed: 0}}}}}}
  stage1: {{epochs: 2}}
  resources: {{num_workers: 2, cpus_per_worker: 0.5, gpus_per_worker: 1}}
grid:
  axes:
    method.name: [llava, sea]
    data.stage1:
      - {{source: synthetic, synthetic: {{num_samples: 64, seed: 0}}}}
output: {{root: {root}, tracking_uri: "sqlite:///{db}"}}
"""


def test_plan_json_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = tmp_path / "planned.yaml"
    spec_path.write_text(textwrap.dedent(SPEC.format(root=tmp_path / "results", db=tmp_path / "mlflow.db")))
    trials = expand(load_spec(spec_path), str(spec_path))

    assert main(["plan", str(spec_path), "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in records] == [t.id for t in trials]
    # Estimates written out: tiny-clip has 8x8 = 64 patches, tiny-llama 316K parameters (the registry's
    # 0.000316 B); stage 1 = 64 samples x 2 epochs x (64 visual + 64 text tokens) x 4 FLOPs per parameter,
    # at 35% of 312 TFLOP/s.
    hours = 4 * 316_000 * (64 * 2 * (64 + 64)) / (312e12 * 0.35) / 3600
    for rec, t in zip(records, trials, strict=True):
        assert rec["axes"] == t.axes and rec["status"] == "new" and rec["run_id"] is None
        assert rec["resources"] == {"num_workers": 2, "cpus_per_worker": 0.5, "gpus_per_worker": 1.0}
        assert rec["estimates"]["visual_tokens"] == 64 and rec["estimates"]["gpus"] == 2
        assert rec["estimates"]["gpu_hours"] == pytest.approx(hours)
        assert (
            set(rec["estimates"]["zero"]) == {"stage1", "stage2"}
            and rec["estimates"]["zero"]["stage2"] == "-"
        )
    assert not (tmp_path / "mlflow.db").exists()  # a plan writes nothing

    assert main(["plan", str(spec_path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["id"] for r in rows] == [t.id for t in trials]
    assert rows[1]["axes.method.name"] == "sea" and rows[1]["resources.num_workers"] == "2"
    assert json.loads(rows[0]["axes.data.stage1"]) == trials[0].axes["data.stage1"]
    assert {"estimates.gpu_hours", "estimates.zero.stage1", "status"} <= set(rows[0])

    assert main(["plan", str(spec_path)]) == 0
    table = capsys.readouterr().out
    assert all(t.id in table for t in trials)  # ids on one line each, even in a 220-column pipe
    with pytest.raises(SystemExit):
        main(["plan", str(spec_path), "--format", "yaml"])
    assert "invalid choice: 'yaml'" in capsys.readouterr().err

"""`seagrid export` on a grid whose trials finished: local exports, a refused encoder, --push without a network."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import export_fixtures as fx
import pytest
import yaml

from core.pipeline import trial_steps
from core.steps.status import write_success
from grid.cli import main
from grid.expand import expand
from grid.spec import load_spec, steps_root

REPO = Path(__file__).resolve().parents[2]


def _spec(tmp: Path, encoder: str, seeds: list[int]) -> Path:
    data = {
        "name": f"export-{encoder}",
        "base": {"model": {"llm": fx.LLM, "encoder": encoder}},
        "grid": {"axes": {"seed": seeds}},
        "output": {"root": str(tmp / "results")},
    }
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _finish(spec_path: Path, trial_index: int, outputs: dict[str, Path]) -> str:
    """Make trial `trial_index`'s stage-1 step a finished step directory holding `outputs['stage1']`."""
    spec = load_spec(spec_path)
    trial = expand(spec, str(spec_path))[trial_index]
    step_dir = trial_steps(trial.config).stages["stage1"].path(steps_root(spec.output))
    shutil.copytree(outputs["stage1"], step_dir)
    write_success(step_dir, {"hash": step_dir.name})
    return trial.id


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    return fx.write_stage_outputs(tmp_path_factory.mktemp("stage-outputs"), "tiny-hf-clip")


@pytest.fixture
def grid(tmp_path, outputs) -> tuple[Path, list[str]]:
    """A three-trial grid: trials 0 and 1 finished stage 1, trial 2 did not."""
    spec = _spec(tmp_path, "tiny-hf-clip", [0, 1, 2])
    return spec, [_finish(spec, 0, outputs), _finish(spec, 1, outputs)]


def test_exports_every_finished_trial(grid, capsys):
    from transformers import LlavaForConditionalGeneration

    spec, done = grid
    assert main(["export", str(spec)]) == 0
    exports = spec.parent / "results" / "exports"
    assert sorted(p.name for p in exports.iterdir()) == sorted(done)  # the unfinished trial is skipped
    model = LlavaForConditionalGeneration.from_pretrained(exports / done[0] / "stage1")
    assert model.config.vision_feature_select_strategy == "default"
    assert "exported" in capsys.readouterr().out


def test_one_trial_by_hash_into_out(grid, tmp_path):
    spec, done = grid
    assert (
        main(["export", str(spec), "--trial", done[1].rsplit("-", 1)[-1], "--out", str(tmp_path / "o")]) == 0
    )
    assert [p.name for p in (tmp_path / "o").iterdir()] == [done[1]]
    assert (tmp_path / "o" / done[1] / "stage1" / "README.md").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trial", "nope"], "--trial nope: no trial"),
        (["--stage", "stage2"], "--stage stage2: trial"),
        (["--push", "me/model"], "--push needs a Hub token in $HF_TOKEN"),
    ],
)
def test_user_mistakes_exit_2_and_write_nothing(grid, args, message, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    spec, _ = grid
    assert main(["export", str(spec), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (spec.parent / "results" / "exports").exists()


def test_push_of_several_trials_is_refused(grid, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    spec, _ = grid
    assert main(["export", str(spec), "--push", "me/model"]) == 2
    assert "2 trials would go to one repo" in capsys.readouterr().err


def test_open_clip_trial_is_refused_with_the_reason(tmp_path, capsys):
    spec = _spec(tmp_path, "tiny-clip", [0])
    step_dir = (
        trial_steps(expand(load_spec(spec))[0].config).stages["stage1"].path(tmp_path / "results" / "steps")
    )
    step_dir.mkdir(parents=True)
    write_success(step_dir, {})
    assert main(["export", str(spec)]) == 2
    assert "open_clip towers are not transformers models" in capsys.readouterr().err
    assert not (tmp_path / "results" / "exports").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_push_without_network_fails_at_upload_and_keeps_the_export(grid):
    """A real upload attempt against an endpoint nobody listens on: exit 1, a message naming the intact
    export, the token never printed; the export loads."""
    spec, done = grid
    secret = "hf_SECRETtoken123"
    env = {
        **os.environ,
        "HF_TOKEN": secret,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "grid.cli", "export", str(spec), "--trial", done[0], "--push", "me/model"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    export = spec.parent / "results" / "exports" / done[0] / "stage1"
    assert f"upload of {export} to me/model failed" in proc.stderr
    assert f"the export is complete at {export}" in proc.stderr
    assert secret not in proc.stdout + proc.stderr
    assert json.loads((export / "config.json").read_text())["model_type"] == "llava"
    assert sorted(p.name for p in export.parent.iterdir()) == ["stage1"]  # no partial left beside it


def test_reuses_the_graph_export_step_instead_of_exporting_again(grid, tmp_path, capsys):
    """A trial whose graph ran its export step: `seagrid export` places that output (hard links, the same
    files), it does not rebuild the model."""
    from core.config import TrialConfig
    from core.steps import TrialRuntime
    from core.steps.runner import run_steps

    spec_path, done = grid
    spec = load_spec(spec_path)
    trial = next(t for t in expand(spec, str(spec_path)) if t.id == done[0])
    export = trial_steps(trial.config).exports["stage1"]
    runtime = TrialRuntime(trial=TrialConfig(), cache_dir=str(tmp_path / "cache"))
    list(run_steps([export], steps_root(spec.output), runtime, local=True))
    built = export.path(steps_root(spec.output)) / "hf" / "model.safetensors"
    assert main(["export", str(spec_path), "--trial", done[0], "--out", str(tmp_path / "o")]) == 0
    placed = tmp_path / "o" / done[0] / "stage1" / "model.safetensors"
    assert placed.stat().st_ino == built.stat().st_ino
    assert export.dirname in capsys.readouterr().out

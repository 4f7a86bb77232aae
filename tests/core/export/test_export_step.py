"""The export step of a trial's graph: where it is added, what it leaves the other steps, how it fails, and a
tiny trial run through the real runner whose export transformers loads."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import export_fixtures as fx
import pytest

from core.config import TrialConfig
from core.config.identity import identity_dict
from core.export.step import HF_DIR
from core.pipeline import trial_steps
from core.steps import StepStatus, TrialRuntime, read_failure, step_status
from core.steps.runner import run_steps
from core.steps.status import write_success

PINNED = json.loads((Path(__file__).resolve().parents[2] / "fixtures" / "step_dirs.json").read_text())


def cfg(encoder: str = "tiny-hf-clip", **over: object) -> TrialConfig:
    return TrialConfig.model_validate({"model": {"llm": fx.LLM, "encoder": encoder}, **over})


@pytest.mark.parametrize("name", sorted(PINNED))
def test_other_steps_keep_the_dirs_they_had_before_the_export_step(name):
    """Pinned before the export step existed: adding it renamed no label, training or evaluation step."""
    steps = trial_steps(TrialConfig.model_validate(PINNED[name]["config"]))
    got = [s.dirname for s in steps.all()]
    assert [d for d in got if not d.startswith("export-")] == PINNED[name]["steps"]
    assert list(steps.exports) == list(steps.stages)[-1:]  # every pinned trial's final model exports
    for stage, export in steps.exports.items():
        # After its stage and that stage's evaluation (the card's metrics); nothing depends on it.
        assert got.index(export.dirname) > got.index(steps.stages[stage].dirname)
        wanted = [stage, f"eval-{stage}"] if stage in steps.evals else [stage]
        assert [d.name for d in export.deps] == wanted
        assert not any(export in s.deps for s in steps.all())


def test_export_stages_setting_picks_the_exported_stages():
    """`export.stages`: the final model by default (a 7B export is ~14 GB a stage), every stage, or none;
    never part of the trial's id or of another step's hash."""
    both = {"stage2": {"enabled": True}, "eval": {"enabled": True}}
    names = {
        stages: [s.name for s in trial_steps(cfg(export={"stages": stages}, **both)).all()]
        for stages in ("final", "all", "none")
    }
    assert names["final"] == ["stage1", "eval-stage1", "stage2", "eval-stage2", "export-stage2"]
    assert names["all"] == [
        "stage1",
        "eval-stage1",
        "export-stage1",
        "stage2",
        "eval-stage2",
        "export-stage2",
    ]
    assert names["none"] == ["stage1", "eval-stage1", "stage2", "eval-stage2"]
    assert [s.name for s in trial_steps(cfg(**both)).all()] == names["final"]
    hashes = {
        stages: {s.name: s.hash for s in trial_steps(cfg(export={"stages": stages}, **both)).all()}
        for stages in ("final", "all")
    }
    assert hashes["final"].items() <= hashes["all"].items()
    assert identity_dict(cfg(export={"stages": "none"}, **both)) == identity_dict(cfg(**both))


def test_export_steps_only_for_models_with_a_llava_form():
    both = {"stage2": {"enabled": True}, "eval": {"enabled": True}, "export": {"stages": "all"}}
    names = [s.name for s in trial_steps(cfg(**both)).all()]
    assert names == ["stage1", "eval-stage1", "export-stage1", "stage2", "eval-stage2", "export-stage2"]
    assert trial_steps(cfg("tiny-clip", **both)).exports == {}  # open_clip tower: refused
    assert (
        trial_steps(cfg(model={"llm": fx.LLM, "encoder": "tiny-siglip", "adapter": "linear"})).exports == {}
    )
    # The export's hash follows what the export reproduces (the evaluation's image mode), not the seed.
    a, b = trial_steps(cfg(**both)), trial_steps(cfg(seed=7, **both))
    assert a.exports["stage1"].hash != b.exports["stage1"].hash  # its stage (seeded) differs
    square = trial_steps(cfg(**{**both, "eval": {"enabled": True, "image_mode": "square"}}))
    assert square.exports["stage1"].config.image_mode == "square"
    assert square.exports["stage1"].hash != a.exports["stage1"].hash


def _finished(step_dir: Path, source: Path) -> None:
    shutil.copytree(source, step_dir)
    write_success(step_dir, {"hash": step_dir.name})


def test_a_failed_export_step_leaves_no_directory_that_looks_finished(tmp_path):
    from transformers import LlavaForConditionalGeneration

    outputs = fx.write_stage_outputs(tmp_path / "outputs", "tiny-hf-clip")
    steps = trial_steps(cfg(eval={"enabled": True}))
    root = tmp_path / "steps"
    _finished(steps.stages["stage1"].path(root), outputs["stage1"])
    _finished(steps.evals["stage1"].path(root), tmp_path / "outputs" / "eval-stage1")
    export = steps.exports["stage1"]
    weights = steps.stages["stage1"].path(root) / "adapter" / "adapter.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])  # a truncated adapter: loading it fails
    runtime = TrialRuntime(trial=cfg(), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="truncated"):
        list(run_steps([export], root, runtime, local=True))
    assert step_status(root, export.dirname) is StepStatus.FAILED
    assert not export.path(root).exists() and "truncated" in read_failure(root, export.dirname)["traceback"]
    weights.write_bytes(good)
    done = {s.name: m for s, m in run_steps([export], root, runtime, local=True)}[export.name]
    assert done.path == export.path(root) and not done.reused
    assert step_status(root, export.dirname) is StepStatus.SUCCESS
    assert sorted(p.name for p in done.path.iterdir() if p.name.startswith(".hf")) == []
    LlavaForConditionalGeneration.from_pretrained(done.path / HF_DIR)
    assert "| eval/pope | 0.625 |" in (done.path / HF_DIR / "README.md").read_text()


def tiny_trial() -> TrialConfig:
    """The smoke grid's trial on an HF tower (tiny-hf-clip), smaller: one epoch of 32 samples, POPE only."""
    return cfg(
        data={"stage1": {"source": "synthetic", "synthetic": {"num_samples": 32, "seed": 0}}},
        stage1={"global_batch_size": 16, "micro_batch_size": 16, "epochs": 1, "log_every": 1},
        eval={
            "enabled": True,
            "synthetic": {"num_images": 8, "num_text_questions": 4},
            "benchmarks": [{"name": "pope", "kind": "pope"}],
        },
        resources={"num_workers": 1, "cpus_per_worker": 0.5},
    )


@pytest.mark.trainer
def test_a_tiny_trial_through_the_runner_exports_what_transformers_loads(
    tmp_path, seagrid_cache, ray_session
):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from grid.trial import prepare_models

    trial = tiny_trial()
    prepare_models(trial)
    runtime = TrialRuntime(trial=trial, cache_dir=str(seagrid_cache))
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    done = {}
    for step, made in run_steps(trial_steps(trial).all(), tmp_path, runtime):
        seconds[step.name], start = time.perf_counter() - start, time.perf_counter()
        done[step.name] = made
    assert list(done) == ["stage1", "eval-stage1", "export-stage1"]
    hf = done["export-stage1"].path / HF_DIR
    model = LlavaForConditionalGeneration.from_pretrained(hf)
    processor = AutoProcessor.from_pretrained(hf)
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
    metrics = json.loads((done["eval-stage1"].path / "metrics.json").read_text())["metrics"]
    card = (hf / "README.md").read_text()
    assert all(f"| {k} |" in card for k in metrics if k.startswith("eval/pope"))
    print(f"step seconds: {json.dumps({k: round(v, 2) for k, v in seconds.items()})}")
    # The export of a tiny model is small beside its training (measured under a load of 30 on 2 cores: 21 s,
    # mostly the Ray task starting and importing transformers, beside 60 s of stage 1).
    assert seconds["export-stage1"] < seconds["stage1"]


def test_plan_shows_the_export_steps(tmp_path):
    from grid.expand import Trial
    from grid.plan_steps import steps_of_trials, steps_text

    hf = Trial(id="hf-1", config=cfg(eval={"enabled": True}), axes={})
    smoke = Trial(id="clip-1", config=cfg("tiny-clip", eval={"enabled": True}), axes={})
    got = steps_of_trials([hf, smoke], tmp_path, {})
    assert steps_text(got["hf-1"]) == "stage1:new eval-stage1:new export-stage1:new"
    assert steps_text(got["clip-1"]) == "stage1:new eval-stage1:new"

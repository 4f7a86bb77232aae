"""Stage 2 (instruction tuning) on tiny models: starts from stage 1's adapter, trains adapter + LLM
(and the vision tower at its own learning rate when asked), chat template, loss goes down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from core.models import build_vlm
from core.pipeline import trial_steps
from core.train.checkpoint import LocalCheckpoints
from core.train.job import make_stage_job
from core.train.stage import run_stage
from grid.spec import TrialConfig


def config(train_vision: bool = False) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "data": {
                "stage1": {"source": "synthetic", "synthetic": {"num_samples": 32, "seed": 2}},
                "stage2": {"source": "synthetic", "synthetic": {"num_samples": 64, "seed": 3}},
            },
            "stage1": {"lr": 0.01, "global_batch_size": 8, "micro_batch_size": 8, "epochs": 1},
            "stage2": {
                "enabled": True,
                "lr": 2e-3,
                "global_batch_size": 8,
                "micro_batch_size": 4,
                "epochs": 2,
                "warmup_ratio": 0.0,
                "train_vision": train_vision,
                "vision_lr": 1e-4,
            },
        }
    )


def run(cfg: TrialConfig, stage: str, step_dir: Path, **extra) -> tuple[dict, list[dict]]:
    step_dir.mkdir(parents=True)
    checkpoints = LocalCheckpoints()
    return run_stage(
        make_stage_job(cfg, stage, step_dir, **extra), checkpoints=checkpoints
    ), checkpoints.messages


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
@pytest.mark.parametrize("train_vision", [False, True])
def test_stage2_trains_llm_from_stage1_adapter(tmp_path: Path, train_vision: bool) -> None:
    cfg = config(train_vision)
    run(cfg, "stage1", tmp_path / "s1")
    result, messages = run(cfg, "stage2", tmp_path / "s2", stage1_dir=str(tmp_path / "s1"))
    assert result["steps"] == 16  # 64 samples / 8 per step x 2 epochs
    losses = [m["metrics"]["stage2/loss"] for m in messages]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses

    # The LLM trained (it is saved and differs from the tiny checkpoint it started from) ...
    vlm, _ = build_vlm(cfg.model.llm, cfg.model.encoder)
    tuned = AutoModelForCausalLM.from_pretrained(tmp_path / "s2" / "llm")
    before = dict(vlm.llm.named_parameters())
    changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2
    # ... starting from stage 1's adapter, which stage 2 moved further.
    a1 = load_file(str(tmp_path / "s1" / "adapter" / "adapter.safetensors"))
    a2 = load_file(str(tmp_path / "s2" / "adapter" / "adapter.safetensors"))
    assert any(not torch.equal(a1[k], a2[k]) for k in a1)
    assert (tmp_path / "s2" / "vision_trainable.pt").exists() == train_vision


def test_stage2_identity_includes_stage1() -> None:
    cfg = config()
    other_stage1 = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"lr": 0.02})})
    other_stage2 = cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"lr": 0.02})})

    def dirname(c: TrialConfig, stage: str) -> str:
        return trial_steps(c).stages[stage].dirname

    assert dirname(cfg, "stage1") != dirname(other_stage1, "stage1")
    assert dirname(cfg, "stage2") != dirname(other_stage1, "stage2")
    # Changing stage 2 leaves the shared stage-1 result alone.
    assert dirname(cfg, "stage1") == dirname(other_stage2, "stage1")
    assert dirname(cfg, "stage2") != dirname(other_stage2, "stage2")
    steps = trial_steps(cfg)
    assert steps.stages["stage2"].dep("stage1") == steps.stages["stage1"]


def test_stage2_in_bf16_saves_the_llm_in_bf16_safetensors(tmp_path: Path) -> None:
    """precision bf16 (forced on the CPU, plain path): the LLM's fp32 masters are saved in bf16, as
    safetensors whose config names the dtype; the adapter is saved as it trained (fp32)."""
    base = config()
    cfg = base.model_copy(
        update={"stage2": base.stage2.model_copy(update={"precision": "bf16", "max_steps": 2, "epochs": 1})}
    )
    run(cfg, "stage1", tmp_path / "s1")
    result, _ = run(cfg, "stage2", tmp_path / "s2", stage1_dir=str(tmp_path / "s1"))
    assert result["steps"] == 2
    llm_dir = tmp_path / "s2" / "llm"
    (weights,) = llm_dir.glob("*.safetensors")
    state = load_file(str(weights))
    assert state and {t.dtype for t in state.values() if t.is_floating_point()} == {torch.bfloat16}
    assert json.loads((llm_dir / "config.json").read_text())["dtype"] == "bfloat16"
    adapter = load_file(str(tmp_path / "s2" / "adapter" / "adapter.safetensors"))
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    # It loads back (in bf16) and holds the trained weights, not the tiny checkpoint's.
    tuned = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.bfloat16)
    start, _ = build_vlm(cfg.model.llm, cfg.model.encoder, dtype=torch.bfloat16)
    before = dict(start.llm.named_parameters())
    assert any(not torch.equal(p, before[n]) for n, p in tuned.named_parameters())

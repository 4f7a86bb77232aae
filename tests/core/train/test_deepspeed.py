"""DeepSpeed ZeRO in the training loop on this CPU machine: the generated config, ZeRO-2/3 runs that match
plain PyTorch, saved weights under ZeRO-3, exact resume from DeepSpeed checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from core.pipeline import prepare_labels
from core.train.checkpoint import LocalCheckpoints
from core.train.deepspeed_engine import deepspeed_config, resolve_zero
from core.train.job import StepBudgetReached, make_stage_job
from core.train.stage import run_stage
from grid.spec import SpecError, TrialConfig, parse_spec

# The one-process group's MASTER_*/RANK variables are gone after each test (conftest.own_process_group).
pytestmark = pytest.mark.usefixtures("own_process_group")


def test_config_is_llava_zero3_with_auto_resolved() -> None:
    # LLaVA-1.5's scripts/zero3.json with transformers' resolution of "auto" for hidden size 4096.
    expected_zero = {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "sub_group_size": 1_000_000_000,
        "reduce_bucket_size": 16_777_216,
        "stage3_prefetch_bucket_size": 15_099_494,
        "stage3_param_persistence_threshold": 40_960,
        "stage3_max_live_parameters": 1_000_000_000,
        "stage3_max_reuse_distance": 1_000_000_000,
        "stage3_gather_16bit_weights_on_model_save": True,
        "memory_efficient_linear": False,  # ours: no process-wide patch of F.linear
    }
    cfg = deepspeed_config(zero=3, micro_batch_size=16, accumulation=1, hidden_size=4096)
    assert cfg["zero_optimization"] == expected_zero
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (16, 1)
    assert cfg["gradient_clipping"] == 1.0
    offload = deepspeed_config(
        zero=3, micro_batch_size=4, accumulation=4, hidden_size=4096, offload="optimizer+params"
    )["zero_optimization"]
    assert offload["offload_optimizer"] == offload["offload_param"] == {"device": "cpu", "pin_memory": True}
    zero2 = deepspeed_config(zero=2, micro_batch_size=4, accumulation=4, hidden_size=64, offload="optimizer")
    assert zero2["zero_optimization"] == {
        "stage": 2,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "sub_group_size": 1_000_000_000,
        "reduce_bucket_size": 4096,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
    }
    with pytest.raises(ValueError, match="needs ZeRO-3"):
        deepspeed_config(
            zero=2, micro_batch_size=1, accumulation=1, hidden_size=8, offload="optimizer+params"
        )


def test_zero_stage_resolution() -> None:
    assert resolve_zero("auto", "stage2", "vicuna-7b", use_gpu=False) is None  # laptops: plain PyTorch
    assert resolve_zero("auto", "stage1", "vicuna-7b", use_gpu=True) == 2
    assert resolve_zero("auto", "stage2", "vicuna-7b", use_gpu=True) == 3  # the registry's stage
    assert resolve_zero("auto", "stage2", "gemma-2b", use_gpu=True) == 2
    assert resolve_zero(3, "stage1", "tiny-llama", use_gpu=False) == 3
    assert resolve_zero("off", "stage2", "vicuna-13b", use_gpu=True) is None


def test_spec_rejects_offload_without_zero() -> None:
    with pytest.raises(SpecError, match=r"base\.stage2\.deepspeed: .*needs a ZeRO stage >= 1"):
        parse_spec({"name": "x", "base": {"stage2": {"deepspeed": {"zero": "off", "offload": "optimizer"}}}})
    with pytest.raises(SpecError, match="needs zero 3"):
        parse_spec(
            {"name": "x", "base": {"stage2": {"deepspeed": {"zero": 2, "offload": "optimizer+params"}}}}
        )


def config(zero1: str | int, zero2: str | int, **stage1: object) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "method": {"name": "sea", "sea": {"top_n": 3}},
            "data": {
                "stage1": {"source": "synthetic", "synthetic": {"num_samples": 40, "seed": 21}},
                "stage2": {"source": "synthetic", "synthetic": {"num_samples": 32, "seed": 3}},
            },
            # 40 samples, micro 4, accumulation 2 -> 5 steps per epoch, 2 epochs.
            "stage1": {
                "lr": 0.01,
                "global_batch_size": 8,
                "micro_batch_size": 4,
                "epochs": 2,
                "deepspeed": {"zero": zero1},
                **stage1,
            },
            "stage2": {
                "enabled": True,
                "lr": 2e-3,
                "global_batch_size": 8,
                "micro_batch_size": 4,
                "epochs": 1,
                "warmup_ratio": 0.0,
                "deepspeed": {"zero": zero2},
            },
        }
    )


def run(cfg: TrialConfig, stage: str, step_dir: Path, checkpoints: LocalCheckpoints | None = None, **extra):
    step_dir.mkdir(parents=True, exist_ok=True)
    if stage == "stage1" and cfg.method.name == "sea":
        extra["labels_dir"] = prepare_labels(cfg, step_dir.parent / "steps")
    job = make_stage_job(cfg, stage, step_dir, **extra)
    return run_stage(job, checkpoints=checkpoints or LocalCheckpoints())


def adapter(step_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(step_dir / "adapter" / "adapter.safetensors"))


@pytest.mark.slow
def test_zero2_and_zero3_match_plain_pytorch(tmp_path: Path) -> None:
    """One rank, fp32: ZeRO only changes where state lives, so both stages end where plain PyTorch does
    (accumulation scaling, clipping, the schedule and SEA's log_tau inside the engine included)."""
    plain, zero = config("off", "off"), config(2, 3)
    r_plain = run(plain, "stage1", tmp_path / "p1")
    r_zero = run(zero, "stage1", tmp_path / "z1")
    assert (r_plain["zero"], r_zero["zero"]) == (None, 2)
    assert r_zero["final_loss"] == pytest.approx(r_plain["final_loss"], rel=1e-5)
    a, b = adapter(tmp_path / "p1"), adapter(tmp_path / "z1")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    tau_p = torch.load(tmp_path / "p1" / "objective.pt")["log_tau"]
    tau_z = torch.load(tmp_path / "z1" / "objective.pt")["log_tau"]
    assert tau_p != 0 and torch.allclose(tau_p, tau_z, atol=1e-6)

    # Stage 2 under ZeRO-3: the LLM is partitioned while it trains and gathered to be saved.
    linear = torch.nn.functional.linear
    s2_plain = run(plain, "stage2", tmp_path / "p2", stage1_dir=str(tmp_path / "p1"))
    s2_zero = run(zero, "stage2", tmp_path / "z2", stage1_dir=str(tmp_path / "p1"))
    assert torch.nn.functional.linear is linear  # ZeRO-3 left the process's torch as it found it
    assert s2_zero["zero"] == 3
    assert s2_zero["final_loss"] == pytest.approx(s2_plain["final_loss"], rel=1e-4)
    llm_p = AutoModelForCausalLM.from_pretrained(tmp_path / "p2" / "llm")
    llm_z = AutoModelForCausalLM.from_pretrained(tmp_path / "z2" / "llm")
    zp = dict(llm_z.named_parameters())
    # Adam divides by sqrt(v): a gradient near zero that rounds differently can move a weight by up to one
    # step (lr = 2e-3). Tolerate a quarter of a step anywhere, and require nearly all weights to agree to 1e-5.
    close = total = 0
    for name, p in llm_p.named_parameters():
        assert zp[name].shape == p.shape, name  # whole tensors, not ZeRO-3 partitions
        torch.testing.assert_close(zp[name], p, rtol=0, atol=5e-4)
        close += int(((zp[name] - p).abs() <= 1e-5).sum())
        total += p.numel()
    assert close / total > 0.999
    a, b = adapter(tmp_path / "p2"), adapter(tmp_path / "z2")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=5e-4)


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_zero2_resume_gives_identical_weights(tmp_path: Path) -> None:
    cfg = config(2, "off", checkpoint_every=4)
    straight = run(cfg, "stage1", tmp_path / "straight")
    ckpts = LocalCheckpoints(tmp_path / "ckpt")
    with pytest.raises(StepBudgetReached, match="stopped at step 6"):
        run(cfg, "stage1", tmp_path / "killed", ckpts, step_budget=6)
    written = sorted(p.name for p in (tmp_path / "ckpt" / "checkpoint-00000004").iterdir())
    assert written == ["deepspeed", "position.json", "rng-rank0.pt"]
    resumed = run(cfg, "stage1", tmp_path / "resumed", LocalCheckpoints(tmp_path / "ckpt"))
    assert resumed["resumed_from_step"] == 4
    a, b = adapter(tmp_path / "straight"), adapter(tmp_path / "resumed")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    tau_a = torch.load(tmp_path / "straight" / "objective.pt")["log_tau"]
    tau_b = torch.load(tmp_path / "resumed" / "objective.pt")["log_tau"]
    assert torch.equal(tau_a, tau_b)
    assert resumed["final_loss"] == straight["final_loss"]


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_zero3_stage2_resume_gives_identical_weights(tmp_path: Path) -> None:
    """Stage 2 under ZeRO-3 (LLM and adapter partitioned): killed after its step-2 checkpoint and relaunched,
    it ends with exactly the LLM and adapter of an uninterrupted run."""
    cfg = config("off", 3)
    cfg = cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"checkpoint_every": 2})})
    run(cfg, "stage1", tmp_path / "s1")
    start = {"stage1_dir": str(tmp_path / "s1")}
    straight = run(cfg, "stage2", tmp_path / "straight", **start)
    assert straight["steps"] == 4
    ckpts = LocalCheckpoints(tmp_path / "ckpt")
    with pytest.raises(StepBudgetReached, match="stopped at step 3"):
        run(cfg, "stage2", tmp_path / "killed", ckpts, step_budget=3, **start)
    resumed = run(cfg, "stage2", tmp_path / "resumed", LocalCheckpoints(tmp_path / "ckpt"), **start)
    assert resumed["resumed_from_step"] == 2
    a, b = adapter(tmp_path / "straight"), adapter(tmp_path / "resumed")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    llm_a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight" / "llm")
    llm_b = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "resumed" / "llm").named_parameters())
    for name, p in llm_a.named_parameters():
        assert torch.equal(p, llm_b[name]), name

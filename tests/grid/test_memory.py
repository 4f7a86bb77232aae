"""The plan's memory model against hand-computed figures (LLaVA-1.5 defaults on 8 GPUs of 80 GB)."""

from __future__ import annotations

import pytest

from core.config import TrialConfig
from grid.memory import (
    GIB,
    StageSettings,
    UnfitTrialError,
    fixes,
    memory_columns,
    model_facts,
    refuse_if_unfit,
    stage_memory,
    trial_memory,
)


def trial(llm: str, **stage2: object) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "model": {"llm": llm, "encoder": "clip-l-336"},
            "stage2": {"enabled": True, **stage2},
            "resources": {"num_workers": 8, "gpus_per_worker": 1},
        }
    )


def test_model_facts_by_hand() -> None:
    f = model_facts("vicuna-7b", "clip-l-336", "mlp2x_gelu")
    # CLIP-L/14-336: 24 x (4 x 1024^2 + 2 x 1024 x 4096) + 577 positions x 1024 + 3 x 14^2 x 1024.
    assert f.encoder_params == 24 * (4 * 1024**2 + 2 * 1024 * 4096) + 577 * 1024 + 3 * 14**2 * 1024
    assert f.encoder_params == 303_182_848  # the published 304M
    assert f.adapter_params == 1024 * 4096 + 4096 + 4096 * 4096 + 4096 == 20_979_712
    # A decoder layer: q, k, v, o (4 x 4096^2), the gated MLP (3 x 4096 x 11008), two norms.
    assert f.layer_params == 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096 == 202_383_360


def test_vicuna_7b_stage2_zero3_bf16_checkpointed_by_hand() -> None:
    m = trial_memory(trial("vicuna-7b"))["stage2"]
    trained = 6.74e9 + 20_979_712  # LLM + adapter; the tower (303,182,848) stays frozen
    assert m.weights == pytest.approx(2 * (trained + 303_182_848) / 8)  # bf16, ZeRO-3 over 8
    assert m.gradients == pytest.approx(2 * trained / 8)  # bf16, partitioned
    assert m.optimizer == pytest.approx((8 + 4) * trained / 8)  # Adam moments + fp32 master
    # Two gathered layers (bf16) and the double-buffered reduce bucket of 4096^2 bf16 elements.
    assert m.buffers == 2 * 2 * 202_383_360 + 2 * 4096**2 * 2
    # 16 x 2048 tokens; checkpointed: each of 32 layers keeps its bf16 input (2 x 4096 bytes a token) and
    # one layer is recomputed: 16h + 6q + 4kv + 8f = 26 x 4096 + 8 x 11008 = 194,560 bytes a token.
    assert m.activations == 16 * 2048 * (32 * 2 * 4096 + 194_560)
    # fp32 logits, log-softmax and gradient of one chunk of the supervised positions: 512 MiB of fp32
    # logits is 4194 rows of 32000, fewer than the (2048 - 576) x 16 supervised positions.
    assert m.logits == 3 * 4 * 32000 * 4194
    assert m.total / GIB == pytest.approx(28.92, abs=0.01)


def test_vicuna_7b_stage1_zero2_frozen_llm_by_hand() -> None:
    m = trial_memory(trial("vicuna-7b"))["stage1"]
    assert m.weights == pytest.approx(2 * (6.74e9 + 303_182_848) + 2 * 20_979_712)  # replicated bf16
    assert m.gradients == pytest.approx(2 * 20_979_712 / 8)  # only the adapter trains
    assert m.optimizer == pytest.approx(12 * 20_979_712 / 8)
    assert m.buffers == 2 * 4096**2 * 2
    # 16 x (576 + 128) tokens; the frozen layer keeps 8h + 4q + 4kv + 6f = 16 x 4096 + 6 x 11008 bytes.
    assert m.activations == 16 * 704 * (32 * 2 * 4096 + 16 * 4096 + 6 * 11008)
    assert m.logits == 3 * 4 * 32000 * 128 * 16  # 2048 supervised rows: under one chunk
    assert m.total / GIB == pytest.approx(18.12, abs=0.01)


def test_without_checkpointing_stage2_does_not_fit_and_the_fixes_do() -> None:
    cfg = trial("vicuna-13b", gradient_checkpointing=False)
    m = trial_memory(cfg)["stage2"]
    # 40 layers x 16 x 2048 tokens x (26 x 5120 + 8 x 13824 = 243,712 bytes): 297.5 GiB of activations.
    assert m.activations == 40 * 16 * 2048 * 243_712
    assert m.activations / GIB == pytest.approx(297.5, abs=0.05)
    found = fixes(cfg, "stage2")
    assert [dict(f.settings) for f in found] == [
        {"stage2.gradient_checkpointing": True},
        {"stage2.micro_batch_size": 2},  # the largest that fits: 4 does not
    ]
    facts = model_facts("vicuna-13b", "clip-l-336", "mlp2x_gelu")
    base = StageSettings("stage2", 3, "none", "bf16", False, 16, 8)
    micro4 = stage_memory(facts, StageSettings("stage2", 3, "none", "bf16", False, 4, 8))
    assert micro4.total > 0.9 * 80 * GIB
    micro2 = stage_memory(facts, StageSettings("stage2", 3, "none", "bf16", False, 2, 8))
    assert found[1].total_gib == pytest.approx(micro2.total / GIB)
    # Activations scale with the micro-batch; logits only while the supervised rows are under one chunk.
    assert micro2.activations == m.activations / 8 and micro2.logits == 3 * 4 * 32000 * (2048 - 576) * 2
    assert stage_memory(facts, base).total == pytest.approx(m.total)
    with pytest.raises(UnfitTrialError) as err:
        refuse_if_unfit({"abc123": cfg, "fits": trial("vicuna-13b")})
    text = str(err.value)
    assert "trial abc123 stage2" in text and "stage2.gradient_checkpointing: True" in text
    assert "trial fits" not in text


def test_small_gpus_need_changes_together() -> None:
    cfg = trial("vicuna-13b")
    cfg = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"gpu_memory_gb": 24})})
    # Stage 1 replicates the frozen 13B LLM in bf16 (24.8 GiB): ZeRO-3 partitions it, nothing else fits.
    assert [dict(f.settings) for f in fixes(cfg, "stage1")] == [{"stage1.deepspeed.zero": 3}]
    # Stage 2 (47.1 GiB) fits 0.9 x 24 = 21.6 GiB with no single change; of the pairs, half the micro-batch
    # with the optimizer on the CPU: 47.1 - 3.03 (gradients) - 18.2 (optimizer) - half of the activations
    # (19.9); logits stay one chunk (1.5 GiB) = 15.85 GiB.
    (fix,) = fixes(cfg, "stage2")
    assert dict(fix.settings) == {"stage2.micro_batch_size": 8, "stage2.deepspeed.offload": "optimizer"}
    facts = model_facts("vicuna-13b", "clip-l-336", "mlp2x_gelu")
    again = stage_memory(facts, StageSettings("stage2", 3, "optimizer", "bf16", True, 8, 8))
    assert fix.total_gib == pytest.approx(again.total / GIB) == pytest.approx(15.85, abs=0.05)
    assert (again.gradients, again.optimizer) == (0, 0)  # they live on the CPU with the optimizer


def test_plan_columns() -> None:
    assert memory_columns(trial("vicuna-7b")) == {"peak GiB": "18.1/28.9", "fits": "yes"}
    assert memory_columns(trial("vicuna-13b", gradient_checkpointing=False))["fits"] == "no: stage2"
    assert memory_columns(TrialConfig()) == {"peak GiB": "-", "fits": "-"}  # a CPU trial
    refuse_if_unfit({"cpu": TrialConfig()})  # CPU trials are not checked


def test_the_readme_memory_table_is_the_plan_of_scaling_yaml() -> None:
    """README's per-GPU figures are `just plan experiments/scaling.yaml`'s, at the spec's own batch sizes."""
    import re
    from pathlib import Path

    from grid.expand import expand
    from grid.memory import GIB, trial_memory
    from grid.spec import load_spec

    repo = Path(__file__).resolve().parents[2]
    spec_path = repo / "experiments" / "scaling.yaml"
    plan = {}
    for t in expand(load_spec(spec_path), str(spec_path)):
        memory = trial_memory(t.config)
        plan[t.config.model.llm] = [f"{memory[s].total / GIB:.1f}" for s in ("stage1", "stage2")]
    readme = (repo / "README.md").read_text()
    rows = dict(
        (m.group(1), [m.group(2), m.group(3)])
        for m in re.finditer(r"^  \| ([a-z0-9-]+) \| ([\d.]+) \| ([\d.]+) \|$", readme, re.MULTILINE)
    )
    assert rows == plan

"""Loading an LLM at scale: straight into its compute dtype, and partitioned as it is built under ZeRO-3."""

from __future__ import annotations

import pytest
import torch

from core.models.llm import load_llm, resolve_gradient_checkpointing
from core.train.deepspeed_engine import deepspeed_config, init_distributed

# The one-process group's MASTER_*/RANK variables are gone after each test (conftest.own_process_group).
pytestmark = pytest.mark.usefixtures("own_process_group")


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    model, _ = load_llm("tiny-llama")
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_loads_straight_into_bf16(reference: dict[str, torch.Tensor]) -> None:
    model, _ = load_llm("tiny-llama", dtype=torch.bfloat16)
    params = dict(model.named_parameters())
    assert params.keys() == reference.keys()
    for name, p in params.items():
        assert p.dtype == torch.bfloat16, name
        assert torch.equal(p, reference[name].to(torch.bfloat16)), name


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_zero3_builds_partitioned_parameters(reference: dict[str, torch.Tensor]) -> None:
    import deepspeed
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    init_distributed(torch.device("cpu"))
    config = deepspeed_config(zero=3, micro_batch_size=1, accumulation=1, hidden_size=64, precision="bf16")
    model, tokenizer = load_llm("tiny-llama", dtype=torch.bfloat16, zero3_config=config)
    assert not is_deepspeed_zero3_enabled()  # scoped to the LLM's construction
    params = dict(model.named_parameters())
    assert params.keys() == reference.keys()
    for name, p in params.items():
        # A placeholder on this rank; the partition (the whole tensor on one rank) lives in ds_tensor.
        assert (p.numel(), p.ds_numel, p.dtype) == (0, reference[name].numel(), torch.bfloat16), name
    with deepspeed.zero.GatheredParameters(list(params.values())):
        for name, p in params.items():
            assert torch.equal(p, reference[name].to(torch.bfloat16)), name
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)

    with pytest.raises(ValueError, match="disagrees with the DeepSpeed config"):
        load_llm("tiny-llama", dtype=torch.float32, zero3_config=config)
    zero2 = deepspeed_config(zero=2, micro_batch_size=1, accumulation=1, hidden_size=64)
    with pytest.raises(ValueError, match="ZeRO stage 3"):
        load_llm("tiny-llama", zero3_config=zero2)


def test_gradient_checkpointing_auto_from_the_registry_size() -> None:
    assert resolve_gradient_checkpointing("auto", "vicuna-7b") is True
    assert resolve_gradient_checkpointing("auto", "gemma-2b") is True  # 2.51B
    assert resolve_gradient_checkpointing("auto", "tiny-llama") is False  # 0.0003B
    assert resolve_gradient_checkpointing(False, "vicuna-13b") is False
    assert resolve_gradient_checkpointing(True, "tiny-llama") is True
    with pytest.raises(ValueError, match="true, false or auto"):
        resolve_gradient_checkpointing("on", "tiny-llama")

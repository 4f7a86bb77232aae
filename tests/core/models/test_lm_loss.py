"""The supervised-positions LM loss equals HF's causal-LM loss (value and gradient), chunked or not."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

from core.models.constants import IGNORE_INDEX
from core.models.lm_loss import default_chunk, supervised_lm_loss

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}


def llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, num_hidden_layers=2, **SMALL))


def gemma2() -> Gemma2ForCausalLM:
    cfg = Gemma2Config(vocab_size=97, num_hidden_layers=2, head_dim=8, final_logit_softcapping=3.0, **SMALL)
    return Gemma2ForCausalLM(cfg)


@pytest.mark.parametrize("build", [llama, gemma2])
@pytest.mark.parametrize("chunk", [3, None])
def test_equals_hf_loss_and_gradient(build, chunk) -> None:
    torch.manual_seed(0)
    model = build().eval()
    embeds = torch.randn(3, 11, 32, requires_grad=True)
    labels = torch.randint(0, 97, (3, 11))
    labels[:, :4] = IGNORE_INDEX  # a prompt
    labels[2, 8:] = IGNORE_INDEX  # padding
    ref = model(inputs_embeds=embeds, labels=labels, use_cache=False).loss
    (ref_grad,) = torch.autograd.grad(ref, embeds)

    hidden = model.get_decoder()(inputs_embeds=embeds, use_cache=False).last_hidden_state
    softcap = getattr(model.config, "final_logit_softcapping", None)
    got = supervised_lm_loss(model.get_output_embeddings(), hidden, labels, softcap=softcap, chunk=chunk)
    (grad,) = torch.autograd.grad(got, embeds)
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_nothing_supervised_gives_a_zero_that_keeps_the_graph() -> None:
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    loss = supervised_lm_loss(torch.nn.Linear(8, 13), hidden, torch.full((2, 5), IGNORE_INDEX))
    assert loss.item() == 0.0 and loss.requires_grad


def test_chunk_size_follows_the_vocabulary() -> None:
    assert default_chunk(32000) == 4194  # 512 MiB of fp32 logits
    assert default_chunk(256000) == 524
    assert default_chunk(10**9) == 128

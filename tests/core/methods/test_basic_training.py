"""BASIC as a training objective: the capture during the forward against an eager full-attention reference, gradients."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import core.methods.basic_objective as basic_objective_module
from core.basic import (
    das_loss,
    equal_degree,
    layer_weights,
    sds_loss,
    supervision_degree,
    supervisory_embedding,
)
from core.methods.attention_capture import CAPTURE_ATTR, CAPTURE_PREFIX, ShallowLayerCapture, _Step
from core.methods.basic_objective import BasicObjective
from core.methods.objective import CombinedObjective, Objective
from core.methods.sea_objective import SeaObjective
from core.models import VLM, build_adapter, build_vlm
from core.models.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from core.models.encoder_loading import load_encoder

VOCAB = 1024


@dataclass
class Cfg:
    """Stands in for grid.spec.BasicConfig (same attribute names)."""

    layers: int | None = None
    weighting: str = "inc"
    degree: str = "auto"
    das_weight: float = 1.0
    sds_weight: float = 0.01


def sharpen(llm: nn.Module, factor: float = 8.0) -> nn.Module:
    """Scale the query/key and output projections: at random init attention is almost uniform and each layer
    barely changes the residual stream (V_hat ~ V), which would hide errors."""
    with torch.no_grad():
        for name, p in llm.named_parameters():
            if any(part in name for part in ("q_proj", "k_proj", "qkv_proj", "o_proj", "down_proj")):
                p.mul_(factor)
    return llm


@pytest.fixture(scope="module")
def tiny() -> VLM:
    """tiny-llama (4 layers, 4 query heads over 2 kv heads: GQA) + tiny-clip (m = 64); sdpa attention."""
    vlm, _ = build_vlm("tiny-llama", "tiny-clip")
    assert vlm.llm.config._attn_implementation == "sdpa"
    assert vlm.llm.config.num_key_value_heads < vlm.llm.config.num_attention_heads
    sharpen(vlm.llm)
    return vlm.eval()


def fresh(vlm: VLM) -> VLM:
    return copy.deepcopy(vlm)


def make_batch(
    lengths: list[int], image_at: list[int | None], *, seed: int = 0, pixels: bool = True
) -> dict[str, Tensor]:
    """Right-padded random token batch; sample i has `<image>` at `image_at[i]` (None = text only)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(5, VOCAB, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, (n, p) in enumerate(zip(lengths, image_at, strict=True)):
        mask[i, :n] = 1
        ids[i, n:] = 0
        if p is not None:
            assert p < n
            ids[i, p] = IMAGE_TOKEN_INDEX
    labels = ids.masked_fill((ids == IMAGE_TOKEN_INDEX) | (mask == 0), IGNORE_INDEX)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if pixels:
        batch["pixel_values"] = torch.randn(len(lengths), 3, 64, 64, generator=g)
    return batch


# Different lengths, images at different offsets (one with text before it), right padding.
PADDED = {"lengths": [14, 9, 20], "image_at": [1, 4, 0]}


def reference(vlm: VLM, batch: dict[str, Tensor], k: int, scheme: str) -> tuple[Tensor, Tensor, Tensor]:
    """(V_hat, a, valid samples) from eager full attention maps and all hidden states, via core.basic."""
    spliced = vlm.splice(batch)
    original = vlm.llm.config._attn_implementation
    vlm.llm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = vlm.llm(
                inputs_embeds=spliced.inputs_embeds,
                attention_mask=spliced.attention_mask,
                output_attentions=True,
                output_hidden_states=True,
                use_cache=False,
            )
    finally:
        vlm.llm.set_attn_implementation(original)
    pos = spliced.visual_positions
    assert bool((pos >= 0).all(dim=1).eq((pos >= 0).any(dim=1)).all()), "reference assumes whole images"
    has = (pos >= 0).all(dim=1)
    pos, mask = pos[has], spliced.attention_mask[has].bool()
    b, m = pos.shape
    rows = torch.arange(b).unsqueeze(1)
    hidden = [h[has][rows, pos] for h in out.hidden_states[1 : k + 1]]
    v_hat = supervisory_embedding(hidden, layer_weights(k, scheme))
    attn = [a[has] for a in out.attentions[:k]]  # [b, H, L, L]: every query, every key
    heads, length = attn[0].shape[1], attn[0].shape[2]
    on_image = [a.gather(-1, pos[:, None, None, :].expand(b, heads, length, m)) for a in attn]
    is_visual = torch.zeros_like(mask).scatter_(1, pos, True)
    degree = supervision_degree(on_image, mask & ~is_visual)
    return v_hat, degree, has


def capture(vlm: VLM, batch: dict[str, Tensor], cfg: Cfg) -> tuple[BasicObjective, Any, Any]:
    objective = BasicObjective(cfg, vlm)
    with objective.forward_context(vlm):
        out = vlm(batch)
    return objective, objective._capture, out


# --- the capture against the eager reference ---


@pytest.mark.parametrize(("k", "scheme"), [(1, "inc"), (2, "dec"), (3, "const")])
def test_capture_matches_eager_reference(tiny: VLM, k: int, scheme: str) -> None:
    batch = make_batch(**PADDED)
    _, cap, _ = capture(tiny, batch, Cfg(layers=k, weighting=scheme))
    v_hat, degree, has = reference(tiny, batch, k, scheme)
    assert has.all()
    assert cap.v_hat.shape == v_hat.shape == (3, 64, 64)
    torch.testing.assert_close(cap.v_hat, v_hat, rtol=0, atol=1e-5)
    torch.testing.assert_close(cap.degree("auto"), degree, rtol=0, atol=1e-6)
    # Not trivially equal: the degree is far from uniform and differs between samples.
    assert float((degree - 1 / 64).abs().max()) > 1e-3


def test_capture_under_bf16_autocast(tiny: VLM) -> None:
    """As the training loop runs on GPUs: q/k and hidden states in bf16, the capture close to the fp32 reference."""
    batch = make_batch(**PADDED)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        objective, cap, out = capture(tiny, batch, Cfg(layers=2))
        extra, _ = objective.extra_loss(batch, out)
    v_hat, degree, _ = reference(tiny, batch, 2, "inc")
    assert cap.v_hat.dtype == torch.float32 and extra.dtype == torch.float32
    torch.testing.assert_close(cap.v_hat, v_hat, rtol=0, atol=0.02 * float(v_hat.abs().max()))
    torch.testing.assert_close(cap.degree(), degree, rtol=0, atol=2e-3)
    assert math.isfinite(float(extra))


def test_query_chunks_do_not_change_the_degree(tiny: VLM) -> None:
    batch = make_batch(**PADDED)
    _, whole, _ = capture(tiny, batch, Cfg(layers=2))
    objective = BasicObjective(Cfg(layers=2), tiny, attention_chunk_elements=1)  # one query row per chunk
    with torch.no_grad(), objective.forward_context(tiny):
        tiny(batch)
    torch.testing.assert_close(objective._capture.mass, whole.mass, rtol=1e-6, atol=1e-7)


def test_default_layers_is_half(tiny: VLM) -> None:
    assert BasicObjective(Cfg(), tiny).layers == 2
    with pytest.raises(ValueError, match=r"basic.layers"):
        BasicObjective(Cfg(layers=5), tiny)


def _random_llm(kind: str) -> nn.Module:
    """A random tiny causal LM of another registry family, with the features that change attention."""
    import transformers

    common = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "pad_token_id": 0,
    }
    configs = {
        # A window shorter than the sequences, so the sliding mask matters.
        "mistral": transformers.MistralConfig(**common, sliding_window=24),
        "phi3": transformers.Phi3Config(**common, sliding_window=24, original_max_position_embeddings=256),
        "gemma": transformers.GemmaConfig(**{**common, "num_key_value_heads": 1}, head_dim=32),
        # Soft-capped logits, alternating sliding layers, eager as the original implementation.
        "gemma2": transformers.Gemma2Config(
            **common, head_dim=16, sliding_window=16, attn_logit_softcapping=5.0, query_pre_attn_scalar=20
        ),
    }
    torch.manual_seed(1)
    return sharpen(transformers.AutoModelForCausalLM.from_config(configs[kind]))


@pytest.fixture(scope="module")
def tower() -> nn.Module:
    return load_encoder("tiny-clip", text_tower=False)


@pytest.mark.parametrize("kind", ["mistral", "phi3", "gemma", "gemma2"])
def test_capture_matches_eager_reference_other_architectures(tower: nn.Module, kind: str) -> None:
    llm = _random_llm(kind)
    expected = "eager" if kind == "gemma2" else "sdpa"
    assert llm.config._attn_implementation == expected
    torch.manual_seed(2)
    vlm = VLM(
        tower, build_adapter("mlp2x_gelu", 64, 64), llm, max_length=512, adapter_name="mlp2x_gelu"
    ).eval()
    batch = make_batch(**PADDED)
    _, cap, _ = capture(vlm, batch, Cfg(layers=3))
    v_hat, degree, _ = reference(vlm, batch, 3, "inc")
    torch.testing.assert_close(cap.v_hat, v_hat, rtol=0, atol=1e-5)
    torch.testing.assert_close(cap.degree("auto"), degree, rtol=0, atol=1e-6)
    assert llm.config._attn_implementation == expected


def test_rebuilt_masks_match_transformers_masks() -> None:
    """The mask rebuilt when the original got none (sdpa causal skip) or a 2D one (flash) equals transformers' 4D one."""
    from transformers import MistralConfig
    from transformers.masking_utils import create_sliding_window_causal_mask

    config = MistralConfig(hidden_size=8, num_attention_heads=2, sliding_window=5)
    config._attn_implementation = "sdpa"
    batch, heads, length = 2, 3, 11
    mask2d = torch.ones(batch, length, dtype=torch.long)
    mask2d[1, 7:] = 0
    mask4d = create_sliding_window_causal_mask(
        config=config,
        inputs_embeds=torch.zeros(batch, length, 8),
        attention_mask=mask2d,
        past_key_values=None,
    )
    assert mask4d is not None and mask4d.ndim == 4
    step = _Step(*(None,) * 3, mask2d.bool(), None, 0, None, None, empty=False)  # type: ignore[arg-type]
    scores = torch.randn(batch, heads, 6, length)
    want = ShallowLayerCapture._mask_(scores.clone(), mask4d, 3, 9, step, 5)
    assert bool(torch.isinf(want).any())
    for mask in (mask2d, None):
        got = ShallowLayerCapture._mask_(scores.clone(), mask, 3, 9, step, 5)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# --- the model itself is untouched ---


def test_outputs_unchanged_and_fast_path_kept(tiny: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.models.llama.modeling_llama as modeling_llama
    from transformers.modeling_utils import AttentionInterface

    vlm = fresh(tiny)
    sdpa = AttentionInterface._global_mapping["sdpa"]
    sdpa_layers: list[int] = []

    def counting_sdpa(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        sdpa_layers.append(module.layer_idx)
        return sdpa(module, *args, **kwargs)

    def no_eager(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the eager attention path ran")

    captured_layers: list[int] = []
    on_attention = ShallowLayerCapture._on_attention

    def counting_capture(self: ShallowLayerCapture, layer: int, *args: Any) -> None:
        captured_layers.append(layer)
        on_attention(self, layer, *args)

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", counting_sdpa)
    monkeypatch.setattr(modeling_llama, "eager_attention_forward", no_eager)
    monkeypatch.setattr(ShallowLayerCapture, "_on_attention", counting_capture)

    batch = make_batch(**PADDED)
    hooks_before = [dict(layer._forward_hooks) for layer in vlm.llm.model.layers]
    with torch.no_grad():
        plain = vlm(batch)
    assert sdpa_layers == [0, 1, 2, 3]
    sdpa_layers.clear()
    objective = BasicObjective(Cfg(layers=2), vlm)
    with torch.no_grad(), objective.forward_context(vlm):
        assert vlm.llm.config._attn_implementation == CAPTURE_PREFIX + "sdpa"
        watched = vlm(batch)
    assert sdpa_layers == [0, 1, 2, 3]  # every layer's output still comes from sdpa
    assert captured_layers == [0, 1]  # only layers 1..k do the side computation
    assert torch.equal(plain.logits, watched.logits)
    assert torch.equal(plain.loss, watched.loss)
    # Everything is restored: implementation, hooks, markers.
    assert vlm.llm.config._attn_implementation == "sdpa"
    assert vlm.splice_hooks == []
    for layer, before in zip(vlm.llm.model.layers, hooks_before, strict=True):
        assert dict(layer._forward_hooks) == before
        assert not hasattr(layer.self_attn, CAPTURE_ATTR)
    sdpa_layers.clear()
    with torch.no_grad():
        vlm(batch)
    assert sdpa_layers == [0, 1, 2, 3] and captured_layers == [0, 1]


def test_restored_after_an_error(tiny: VLM) -> None:
    vlm = fresh(tiny)
    objective = BasicObjective(Cfg(), vlm)
    with pytest.raises(RuntimeError, match="boom"), objective.forward_context(vlm):
        raise RuntimeError("boom")
    assert vlm.llm.config._attn_implementation == "sdpa"
    assert vlm.splice_hooks == [] and objective._capture is None


def test_two_forwards_in_one_context_fail(tiny: VLM) -> None:
    vlm = fresh(tiny)
    batch = make_batch(**PADDED)
    objective = BasicObjective(Cfg(), vlm)
    with (
        pytest.raises(RuntimeError, match="second VLM forward"),
        torch.no_grad(),
        objective.forward_context(vlm),
    ):
        vlm(batch)
        vlm(batch)
    assert vlm.llm.config._attn_implementation == "sdpa"


def test_extra_loss_needs_the_context(tiny: VLM) -> None:
    objective = BasicObjective(Cfg(), tiny)
    with torch.no_grad():
        out = tiny(make_batch(**PADDED))
    with pytest.raises(RuntimeError, match="forward_context"):
        objective.extra_loss({}, out)


# --- the loss ---


def test_loss_value_matches_core_functions(tiny: VLM) -> None:
    batch = make_batch(**PADDED)
    objective, _, out = capture(tiny, batch, Cfg(layers=2, das_weight=0.7, sds_weight=0.3))
    extra, metrics = objective.extra_loss(batch, out)
    v_hat, a, _ = reference(tiny, batch, 2, "inc")
    table = tiny.llm.get_input_embeddings().weight
    v = out.visual_tokens.detach()
    das, sds = das_loss(v, v_hat, a), sds_loss(v, v_hat, table, a)
    torch.testing.assert_close(extra, 0.7 * das + 0.3 * sds, rtol=1e-5, atol=1e-7)
    assert metrics["loss/das"] == pytest.approx(float(das), rel=1e-5)
    assert metrics["loss/sds"] == pytest.approx(float(sds), rel=1e-4)
    assert float(das) > 0.05 and float(sds) > 1e-4, (float(das), float(sds))
    assert objective._capture is None  # consumed: a stale capture never serves the next step


def test_equal_degree_needs_no_attention(tiny: VLM) -> None:
    vlm = fresh(tiny)
    batch = make_batch(**PADDED)
    objective = BasicObjective(Cfg(layers=2, degree="equal", sds_weight=0.0), vlm)
    with torch.no_grad(), objective.forward_context(vlm):
        assert vlm.llm.config._attn_implementation == "sdpa"  # nothing swapped
        out = vlm(batch)
    assert objective._capture.mass is None
    extra, metrics = objective.extra_loss(batch, out)
    v_hat, _, _ = reference(vlm, batch, 2, "inc")
    want = das_loss(out.visual_tokens, v_hat, equal_degree(3, 64))
    torch.testing.assert_close(extra, want, rtol=1e-6, atol=1e-7)
    assert set(metrics) == {"loss/das"}


def test_zero_weight_skips_its_term(tiny: VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = make_batch(**PADDED)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a term with weight 0 was computed")

    monkeypatch.setattr(basic_objective_module, "sds_loss", forbidden)
    objective, _, out = capture(tiny, batch, Cfg(sds_weight=0.0))
    extra, metrics = objective.extra_loss(batch, out)
    assert extra is not None and set(metrics) == {"loss/das"}

    monkeypatch.undo()
    monkeypatch.setattr(basic_objective_module, "das_loss", forbidden)
    objective, _, out = capture(tiny, batch, Cfg(das_weight=0.0))
    extra, metrics = objective.extra_loss(batch, out)
    assert extra is not None and set(metrics) == {"loss/sds"}

    vlm = fresh(tiny)
    objective = BasicObjective(Cfg(das_weight=0.0, sds_weight=0.0), vlm)
    with torch.no_grad(), objective.forward_context(vlm):
        assert vlm.splice_hooks == [] and vlm.llm.config._attn_implementation == "sdpa"
        out = vlm(batch)
    assert objective.extra_loss(batch, out) == (None, {})


def test_samples_without_image_contribute_nothing(tiny: VLM) -> None:
    mixed = make_batch([14, 11, 20], [1, None, 0], seed=3)
    objective, cap, out = capture(tiny, mixed, Cfg(layers=2))
    extra, _ = objective.extra_loss(mixed, out)
    assert cap.samples.tolist() == [True, False, True]
    assert not cap.valid[1].any() and float(cap.degree()[1].abs().sum()) == 0.0
    # The image samples alone, by the reference: the per-sample mean runs over those two, not three.
    v_hat, a, has = reference(tiny, mixed, 2, "inc")
    v = out.visual_tokens[has]
    table = tiny.llm.get_input_embeddings().weight
    want = das_loss(v, v_hat, a) + 0.01 * sds_loss(v, v_hat, table, a)
    torch.testing.assert_close(extra, want, rtol=1e-5, atol=1e-7)

    text_only = make_batch([9, 12], [None, None], pixels=False)
    objective, cap, out = capture(tiny, text_only, Cfg())
    assert out.visual_tokens is None
    extra, metrics = objective.extra_loss(text_only, out)
    assert extra is None and metrics == {"loss/das": 0.0, "loss/sds": 0.0}


def test_no_text_after_image_falls_back_to_equal(tiny: VLM) -> None:
    batch = make_batch([10, 6], [2, 5], seed=4)  # sample 1 ends with its image
    _, cap, _ = capture(tiny, batch, Cfg(layers=2))
    a = cap.degree()
    torch.testing.assert_close(a[1], torch.full((64,), 1 / 64))
    assert float((a[0] - 1 / 64).abs().max()) > 1e-3
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2))


def test_truncated_image_keeps_its_visible_part(tiny: VLM) -> None:
    """An image cut by max_length: the positions beyond it get degree 0; the visible ones are supervised."""
    vlm = fresh(tiny)
    vlm.max_length = 72
    batch = make_batch([52, 8], [50, 2], seed=6)  # sample 0: image at 50, only 22 of its 64 tokens fit
    objective, cap, out = capture(vlm, batch, Cfg(layers=2))
    assert cap.valid.sum(dim=1).tolist() == [22, 64]
    a = cap.degree()
    torch.testing.assert_close(a[0, :22], torch.full((22,), 1 / 22))  # no text after the visible part
    assert float(a[0, 22:].abs().sum()) == 0.0 and float(cap.v_hat[0, 22:].abs().sum()) == 0.0
    spliced = vlm.splice(batch)
    with torch.no_grad():
        hidden = vlm.llm(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            output_hidden_states=True,
        ).hidden_states
    w = layer_weights(2, "inc")
    want = w[0] * hidden[1][0, 50:72] + w[1] * hidden[2][0, 50:72]
    torch.testing.assert_close(cap.v_hat[0, :22], want, rtol=0, atol=1e-5)
    extra, _ = objective.extra_loss(batch, out)
    v = out.visual_tokens.detach()
    want_loss = das_loss(v, cap.v_hat, a) + 0.01 * sds_loss(
        v, cap.v_hat, vlm.llm.get_input_embeddings().weight, a
    )
    torch.testing.assert_close(extra, want_loss, rtol=1e-6, atol=1e-8)


def test_truncated_image_at_the_start_marks_no_visual_token_as_text(tiny: VLM) -> None:
    vlm = fresh(tiny)
    vlm.max_length = 40
    batch = make_batch([5, 5], [0, 0], seed=9)  # 40 of 64 visual tokens fit, nothing after them
    _, cap, _ = capture(vlm, batch, Cfg(layers=2))
    assert cap.valid.sum(dim=1).tolist() == [40, 40]
    assert float(cap.mass.abs().sum()) == 0.0  # no text query at all
    torch.testing.assert_close(cap.degree()[:, :40], torch.full((2, 40), 1 / 40))


# --- gradients ---


def _grads(vlm: VLM) -> dict[str, Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in vlm.named_parameters()}


@pytest.mark.parametrize("train_vision", [False, True])
def test_gradients_reach_the_adapter_only(tiny: VLM, train_vision: bool) -> None:
    vlm = fresh(tiny).train().freeze_for_stage2(train_vision=train_vision)
    batch = make_batch(**PADDED)
    objective = BasicObjective(Cfg(layers=2), vlm)

    # BASIC alone: nothing in the LLM or the tower receives a gradient, the adapter does.
    with objective.forward_context(vlm):
        out = vlm(batch)
    extra, _ = objective.extra_loss(batch, out)
    extra.backward()
    for name, grad in _grads(vlm).items():
        if name.startswith("adapter."):
            assert grad is not None and float(grad.abs().sum()) > 0, name
        else:
            assert grad is None, name
    vlm.zero_grad(set_to_none=True)

    # L_lm alone vs L_lm + BASIC: identical LLM gradients, different adapter gradients.
    plain = vlm(batch)
    plain.loss.backward()
    lm_only = _grads(vlm)
    vlm.zero_grad(set_to_none=True)
    with objective.forward_context(vlm):
        out = vlm(batch)
    loss, terms = objective.total(batch, out)
    loss.backward()
    both = _grads(vlm)
    assert terms["loss/lm"] == pytest.approx(float(plain.loss.detach()), abs=0)
    llm_names = [n for n in both if n.startswith("llm.")]
    assert llm_names and all(both[n] is not None for n in llm_names)
    for name in llm_names:
        torch.testing.assert_close(both[name], lm_only[name], rtol=0, atol=1e-7, msg=name)
    adapter_diff = max(float((both[n] - lm_only[n]).abs().max()) for n in both if n.startswith("adapter."))
    assert adapter_diff > 1e-6
    vision = [n for n in both if n.startswith("vision.")]
    if not train_vision:
        assert all(both[n] is None for n in vision)
    else:  # a trained tower gets L_lm's gradient, and nothing from BASIC
        assert vision and any(both[n] is not None for n in vision)
        for name in vision:
            if both[name] is not None:
                torch.testing.assert_close(both[name], lm_only[name], rtol=0, atol=1e-7, msg=name)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing(tiny: VLM, reentrant: bool) -> None:
    batch = make_batch(**PADDED)
    cfg = Cfg(layers=3)

    def run(checkpointing: bool) -> tuple[Any, Tensor, dict[str, Tensor | None]]:
        vlm = fresh(tiny).train().freeze_for_stage2()
        if checkpointing:
            vlm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        objective = BasicObjective(cfg, vlm)
        with objective.forward_context(vlm):
            out = vlm(batch)
        cap = objective._capture
        v_hat, mass = cap.v_hat.clone(), cap.mass.clone()
        loss, _ = objective.total(batch, out)
        loss.backward()  # recomputes layers 1..k: nothing may be added to the capture now
        assert torch.equal(cap.v_hat, v_hat) and torch.equal(cap.mass, mass)
        return cap, loss.detach(), _grads(vlm)

    plain_cap, plain_loss, plain_grads = run(False)
    ckpt_cap, ckpt_loss, ckpt_grads = run(True)
    torch.testing.assert_close(ckpt_cap.v_hat, plain_cap.v_hat, rtol=0, atol=1e-6)
    torch.testing.assert_close(ckpt_cap.mass, plain_cap.mass, rtol=0, atol=1e-6)
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=0, atol=1e-6)
    for name, grad in plain_grads.items():
        if grad is None:
            assert ckpt_grads[name] is None, name
        else:
            torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_training_step_moves_the_adapter_towards_the_target(tiny: VLM) -> None:
    """Stage 1 style (adapter only), BASIC alone as the loss: L_das falls over a few optimizer steps."""
    vlm = fresh(tiny).train().freeze_for_stage1()
    batch = make_batch(**PADDED)
    objective = BasicObjective(Cfg(layers=2, sds_weight=0.0), vlm)
    optimizer = torch.optim.Adam(vlm.trainable_parameters(), lr=3e-3)
    values = []
    for _ in range(5):
        with objective.forward_context(vlm):
            out = vlm(batch)
        extra, metrics = objective.extra_loss(batch, out)
        extra.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        values.append(metrics["loss/das"])
    assert values[-1] < values[0]


# --- combination with SEA ---


def _sea(grid: tuple[int, int], seed: int) -> SeaObjective:
    cfg = SimpleNamespace(tau_init=0.5, learn_tau=True, window=2, align_weight=1.0)
    words = torch.randn(20, 64, generator=torch.Generator().manual_seed(7))
    return SeaObjective(cfg, word_embeddings=words, grid=grid, seed=seed)


def _sea_labels(batch: dict[str, Tensor], m: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(8)
    b = batch["input_ids"].shape[0]
    return {
        **batch,
        "label_index": torch.randint(0, 20, (b, m, 3), generator=g),
        "label_score": torch.rand(b, m, 3, generator=g),
    }


def test_combined_objective_sums_parts(tiny: VLM) -> None:
    vlm = fresh(tiny)
    batch = _sea_labels(make_batch(**PADDED), 64)
    grid = vlm.vision.spec.grid
    combined = CombinedObjective([_sea(grid, seed=5), BasicObjective(Cfg(layers=2), vlm)])
    assert combined.needs_labels
    assert combined.generator is combined.parts[0].generator
    assert [p for p in combined.parameters()] == [combined.parts[0].log_tau]
    with combined.forward_context(vlm):
        assert vlm.llm.config._attn_implementation == CAPTURE_PREFIX + "sdpa"
        out = vlm(batch)
    assert vlm.llm.config._attn_implementation == "sdpa"
    loss, metrics = combined.total(batch, out)
    assert {"loss/lm", "loss/align", "tau", "pairs", "loss/das", "loss/sds"} <= set(metrics)

    sea_alone = _sea(grid, seed=5)
    sea_extra, _ = sea_alone.extra_loss(batch, out)
    basic_alone = BasicObjective(Cfg(layers=2), vlm)
    with basic_alone.forward_context(vlm):
        out2 = vlm(batch)
    basic_extra, _ = basic_alone.extra_loss(batch, out2)
    torch.testing.assert_close(loss, out.loss + sea_extra + basic_extra, rtol=1e-6, atol=1e-6)
    assert math.isfinite(float(loss))


def test_base_objective_context_is_a_no_op(tiny: VLM) -> None:
    with Objective().forward_context(tiny) as entered:
        assert entered is None
        assert tiny.splice_hooks == [] and tiny.llm.config._attn_implementation == "sdpa"
    plain = CombinedObjective([Objective()])
    assert not hasattr(plain, "generator") and list(plain.parameters()) == []
    with torch.no_grad(), plain.forward_context(tiny):
        out = tiny(make_batch(**PADDED))
    assert plain.extra_loss({}, out) == (None, {})


# --- L_sds under ZeRO-3: the table gathered for the call only ---


@pytest.mark.slow  # the first DeepSpeed process group of a process builds DeepSpeed's CPU comm op
def test_sds_under_zero3_equals_the_unsharded_loss_and_keeps_no_table(
    tiny: VLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1-rank ZeRO-3: the embedding table is a partitioned parameter, gathered by the objective's block
    (core/train/setup.py) and released before backward; the loss and the adapter's gradient equal the
    implementation that keeps E for a recomputing backward (core.basic.sds_loss's default)."""
    import deepspeed

    from core.rendezvous import RENDEZVOUS
    from core.train.deepspeed_engine import init_distributed
    from core.train.setup import gather_embedding_table

    for key in RENDEZVOUS:
        monkeypatch.delenv(key, raising=False)  # restored afterwards: later Ray workers must not inherit them
    init_distributed(torch.device("cpu"))
    vlm = fresh(tiny)
    vlm.adapter.requires_grad_(True)
    table = vlm.llm.get_input_embeddings().weight.detach().clone()
    cfg = Cfg(layers=2, das_weight=0.7, sds_weight=0.3)
    # 7 rows a chunk: several chunks, the last one short.
    objective = BasicObjective(cfg, vlm, sds_chunk_elements=7 * table.shape[0])
    batch = make_batch(**PADDED)
    with objective.forward_context(vlm):
        out = vlm(batch)
    cap = objective._capture
    rows = cap.samples.nonzero().flatten()
    v, v_hat, a = out.visual_tokens[rows], cap.v_hat[rows], cap.degree("auto")[rows]
    want = 0.7 * das_loss(v, v_hat, a) + 0.3 * sds_loss(v, v_hat, table, a, chunk_size=7)
    params = list(vlm.adapter.parameters())
    want_grads = torch.autograd.grad(want, params, retain_graph=True)

    linear = torch.nn.functional.linear
    with deepspeed.zero.Init(
        # memory_efficient_linear off: DeepSpeed would replace F.linear for the rest of the test process.
        config_dict_or_path={
            "train_micro_batch_size_per_gpu": 1,
            "zero_optimization": {"stage": 3, "memory_efficient_linear": False},
        },
        dtype=torch.float32,
    ):
        sharded = nn.Embedding(*table.shape)
    assert torch.nn.functional.linear is linear  # the rest of the test process computes as before
    with deepspeed.zero.GatheredParameters([sharded.weight], modifier_rank=0):
        sharded.weight.data.copy_(table)
    assert sharded.weight.data.numel() == 0  # partitioned outside a gather
    gather_embedding_table(
        objective, SimpleNamespace(llm=SimpleNamespace(get_input_embeddings=lambda: sharded))
    )
    got, _ = objective.extra_loss(batch, out)
    assert sharded.weight.data.numel() == 0  # released again: L_sds kept no (gathered) copy for backward
    got_grads = torch.autograd.grad(got, params)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    assert all(float(g.abs().sum()) > 0 for g in got_grads)

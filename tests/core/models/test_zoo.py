"""Tests for the real model zoo: registry facts checked against meta-device builds, real loading on tiny ids."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.models import (  # noqa: E402
    ENCODERS,
    LLMS,
    build_meta_encoder,
    build_meta_llm,
    encoder_config,
    llm_config,
    load_encoder,
)

REPO = Path(__file__).resolve().parents[3]

# Exact parameter counts of the hub checkpoints (their safetensors totals / model cards).
LLM_PARAMS = {
    "vicuna-7b": 6_738_415_616,
    "vicuna-13b": 13_015_864_320,
    "llama3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "phi3-mini": 3_821_079_552,
    "gemma-2b": 2_506_172_416,
}
LLM_FACTS = {  # id: (hub id, chat template, ZeRO stage for stage 2)
    "vicuna-7b": ("lmsys/vicuna-7b-v1.5", "vicuna_v1", 3),
    "vicuna-13b": ("lmsys/vicuna-13b-v1.5", "vicuna_v1", 3),
    "llama3-8b": ("meta-llama/Meta-Llama-3-8B-Instruct", "llama3", 3),
    "mistral-7b": ("mistralai/Mistral-7B-Instruct-v0.2", "mistral", 3),
    "phi3-mini": ("microsoft/Phi-3-mini-4k-instruct", "phi3", 2),
    "gemma-2b": ("google/gemma-2b-it", "gemma", 2),
}
# id: (visual tokens, feature width, prefix tokens, joint width, published vision size in millions)
ENCODER_FACTS = {
    "clip-l-336": (576, 1024, 1, 768, 303),
    "clip-l-224": (256, 1024, 1, 768, 303),
    "siglip-so400m-384": (729, 1152, 0, 1152, 428),
    "dinov2-l-224": (256, 1024, 1, None, 304),
}
REAL_LLMS = sorted(LLM_FACTS)
REAL_ENCODERS = sorted(ENCODER_FACTS)


pytestmark = pytest.mark.usefixtures("seagrid_cache")  # a fresh cache: builds run for real here


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors counted once


# ---------------------------------------------------------------- closed-form parameter counts


def _decoder_params(a: dict[str, Any]) -> int:
    """Llama-family decoder without biases: embeddings, L x (attention + gated MLP + 2 norms), norm, head."""
    d, f, layers, vocab = a["hidden_size"], a["intermediate_size"], a["num_hidden_layers"], a["vocab_size"]
    heads, kv = a["num_attention_heads"], a["num_key_value_heads"]
    head_dim = a.get("head_dim", d // heads)
    attention = d * heads * head_dim + 2 * d * kv * head_dim + heads * head_dim * d
    layer = attention + 3 * d * f + 2 * d
    head = 0 if a["tie_word_embeddings"] else vocab * d
    return vocab * d + layers * layer + d + head


def _block(d: int, f: int) -> int:
    """Pre-norm transformer block with biases: 2 LayerNorms, q/k/v/o, 2-layer MLP."""
    return 2 * 2 * d + 4 * (d * d + d) + (d * f + f) + (f * d + d)


def _vision_params(kind: str, v: dict[str, Any], image_size: int) -> int:
    d, p, layers = v["hidden_size"], v["patch_size"], v["num_hidden_layers"]
    n = (image_size // p) ** 2
    if kind == "hf_clip":  # class token, bias-free patch conv, n + 1 positions, pre- and post-LN
        return d + 3 * p * p * d + (n + 1) * d + 2 * d + layers * _block(d, v["intermediate_size"]) + 2 * d
    if kind == "hf_siglip":  # patch conv with bias, n positions, post-LN, attention-pooling head
        f = v["intermediate_size"]
        head = d + 4 * (d * d + d) + 2 * d + (d * f + f) + (f * d + d)
        return 3 * p * p * d + d + n * d + layers * _block(d, f) + 2 * d + head
    if kind == "hf_dinov2":  # class + mask token, n + 1 positions, 2 layer scales per block, final LN
        f = v["mlp_ratio"] * d
        return 2 * d + (n + 1) * d + 3 * p * p * d + d + layers * (_block(d, f) + 2 * d) + 2 * d
    raise AssertionError(kind)


def test_closed_forms_reproduce_hand_worked_counts() -> None:
    # vicuna-7b by hand: 32000*4096 twice, 32 layers of 4*4096^2 + 3*4096*11008 + 2*4096, final norm.
    by_hand = 2 * 32000 * 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 4096
    assert _decoder_params(dict(LLMS["vicuna-7b"].arch)) == by_hand == 6_738_415_616
    # CLIP ViT-L/14 vision tower, the well-known 303.18M at 224 px.
    assert _vision_params("hf_clip", encoder_config("clip-l-224").vision_config.to_dict(), 224) == 303_179_776


# ---------------------------------------------------------------- LLMs


@pytest.mark.parametrize("llm_id", REAL_LLMS)
def test_real_llm_meta_build_matches_registry(llm_id: str) -> None:
    spec = LLMS[llm_id]
    model = build_meta_llm(llm_id)
    assert all(p.device.type == "meta" for p in model.parameters())
    count = _count(model)
    assert count == _decoder_params(dict(spec.arch)) == LLM_PARAMS[llm_id]
    assert count / 1e9 == pytest.approx(spec.params_b, rel=0.01)

    cfg = model.config
    assert type(cfg).model_type == spec.arch["model_type"]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (
        spec.hidden_size,
        spec.num_layers,
        spec.vocab_size,
    )
    assert len(model.model.layers) == spec.num_layers
    assert model.get_input_embeddings().weight.shape == (spec.vocab_size, spec.hidden_size)
    assert model.get_output_embeddings().weight.shape == (spec.vocab_size, spec.hidden_size)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == spec.arch["tie_word_embeddings"] == (llm_id == "gemma-2b")

    hub_id, template, stage = LLM_FACTS[llm_id]
    assert (spec.hub_id, spec.chat_template, spec.deepspeed_stage) == (hub_id, template, stage)
    assert spec.builder is None and spec.max_length == 2048


def test_llm_architecture_details() -> None:
    llama3, mistral, phi3, gemma = (
        llm_config(k) for k in ("llama3-8b", "mistral-7b", "phi3-mini", "gemma-2b")
    )
    assert llama3.rope_parameters["rope_theta"] == 500000.0 and llama3.num_key_value_heads == 8
    assert mistral.rope_parameters["rope_theta"] == 1e6 and mistral.sliding_window is None
    assert phi3.sliding_window == 2047 and phi3.max_position_embeddings == 4096
    assert (gemma.head_dim, gemma.num_key_value_heads, gemma.hidden_act) == (256, 1, "gelu_pytorch_tanh")
    assert llm_config("vicuna-7b").rope_parameters["rope_theta"] == 10000.0


def test_tiny_llm_meta_build_matches_the_real_tiny_build() -> None:
    from core.models import load_llm

    meta = build_meta_llm("tiny-llama")
    real, _ = load_llm("tiny-llama")
    assert {k: v.shape for k, v in meta.state_dict().items()} == {
        k: v.shape for k, v in real.state_dict().items()
    }
    assert _count(meta) == _count(real) == _decoder_params(dict(LLMS["tiny-llama"].arch))
    assert LLMS["tiny-llama"].deepspeed_stage == 2


def test_llm_registry_rejects_inconsistent_entries() -> None:
    spec = LLMS["vicuna-7b"]
    with pytest.raises(ValueError, match="arch has hidden_size=4096, spec says 4000"):
        dataclasses.replace(spec, hidden_size=4000)
    with pytest.raises(ValueError, match="chat_template='chatml'"):
        dataclasses.replace(spec, chat_template="chatml")
    with pytest.raises(ValueError, match="deepspeed_stage=4"):
        dataclasses.replace(spec, deepspeed_stage=4)
    with pytest.raises(ValueError, match="unknown llm_id 'vicuna-70b'"):
        build_meta_llm("vicuna-70b")


# ---------------------------------------------------------------- vision encoders


@pytest.mark.parametrize("encoder_id", REAL_ENCODERS)
def test_real_encoder_meta_build_matches_registry(encoder_id: str) -> None:
    spec = ENCODERS[encoder_id]
    m, width, prefix, joint, size_m = ENCODER_FACTS[encoder_id]
    assert (spec.num_patches, spec.feature_dim, spec.num_prefix_tokens, spec.joint_dim) == (
        m,
        width,
        prefix,
        joint,
    )
    assert spec.feature_layer == -2 and spec.has_text_tower == (joint is not None)

    tower = build_meta_encoder(encoder_id)
    assert not tower.has_text_tower
    vision = tower.vision_model if hasattr(tower, "vision_model") else tower.model
    cfg = vision.config
    assert (cfg.hidden_size, cfg.patch_size) == (spec.feature_dim, spec.patch_size)
    assert -cfg.num_hidden_layers <= spec.feature_layer < 0

    count = _count(tower)
    assert count == _vision_params(spec.kind, cfg.to_dict(), cfg.image_size)
    assert count / 1e6 == pytest.approx(size_m, rel=0.01)

    # Prefix tokens: the position table holds the checkpoint's own patches plus the prefix.
    trained_patches = (cfg.image_size // cfg.patch_size) ** 2
    if spec.kind == "hf_dinov2":
        positions = vision.embeddings.position_embeddings.shape[1]
    else:
        positions = vision.embeddings.position_embedding.num_embeddings
    assert positions == trained_patches + spec.num_prefix_tokens

    # The real forward code on meta tensors: tokens in, [B, m, d] out, m from the patch grid.
    pixels = torch.empty(2, 3, spec.image_size, spec.image_size, device="meta")
    assert tuple(vision.embeddings(pixels).shape) == (2, m + prefix, width)
    features = tower(pixels)
    assert features.device.type == "meta" and tuple(features.shape) == (2, m, width)


def test_known_token_counts_and_preprocessing() -> None:
    assert {k: ENCODERS[k].num_patches for k in REAL_ENCODERS} == {
        "clip-l-224": 16 * 16,
        "clip-l-336": 24 * 24,
        "dinov2-l-224": 16 * 16,
        "siglip-so400m-384": 27 * 27,
    }
    clip, siglip, dino = ENCODERS["clip-l-336"], ENCODERS["siglip-so400m-384"], ENCODERS["dinov2-l-224"]
    assert clip.mean == (0.48145466, 0.4578275, 0.40821073) and clip.std == (
        0.26862954,
        0.26130258,
        0.27577711,
    )
    assert (clip.resize, clip.crop_pct) == ("shortest_edge", 1.0)
    assert (siglip.mean, siglip.std, siglip.resize) == ((0.5,) * 3, (0.5,) * 3, "squash")
    assert (dino.mean, dino.std, dino.crop_pct) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224 / 256)
    assert {k: ENCODERS[k].hub_id for k in REAL_ENCODERS} == {
        "clip-l-336": "openai/clip-vit-large-patch14-336",
        "clip-l-224": "openai/clip-vit-large-patch14",
        "siglip-so400m-384": "google/siglip-so400m-patch14-384",
        "dinov2-l-224": "facebook/dinov2-large",
    }


@pytest.mark.parametrize(
    ("encoder_id", "total"), [("clip-l-336", 427_944_193), ("siglip-so400m-384", 877_960_498)]
)
def test_real_dual_encoder_meta_build_with_text_tower(encoder_id: str, total: int) -> None:
    spec = ENCODERS[encoder_id]
    tower = build_meta_encoder(encoder_id, text_tower=True)
    assert tower.has_text_tower and _count(tower) == total
    pixels = torch.empty(2, 3, spec.image_size, spec.image_size, device="meta")
    assert tuple(tower.joint_patch_features(pixels).shape) == (2, spec.num_patches, spec.joint_dim)
    context = tower.model.text_model.config.max_position_embeddings
    tokens = torch.zeros(3, context, dtype=torch.long, device="meta")
    assert tuple(tower.encode_text(tokens).shape) == (3, spec.joint_dim)
    with pytest.raises(ValueError, match="meta device"):
        tower.text_features(["red"])


def test_encoder_registry_rejects_inconsistent_entries() -> None:
    spec = ENCODERS["clip-l-336"]
    with pytest.raises(ValueError, match=r"grid=\(24, 24\) but image_size 224"):
        dataclasses.replace(spec, image_size=224)
    with pytest.raises(ValueError, match="arch has hidden_size=1024, spec says 768"):
        dataclasses.replace(spec, feature_dim=768)
    with pytest.raises(ValueError, match="kind='timm'"):
        dataclasses.replace(spec, kind="timm")
    with pytest.raises(ValueError, match="no arch facts"):
        build_meta_encoder("tiny-clip")


# ---------------------------------------------------------------- real loading code on tiny checkpoints


def _layer_outputs(vision: torch.nn.Module, pixels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every encoder block's output, by forward hooks on a plain forward, and the last hidden state."""
    captured: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
        for layer in vision.encoder.layers
    ]
    try:
        with torch.no_grad():
            last = vision(pixel_values=pixels).last_hidden_state
    finally:
        for h in hooks:
            h.remove()
    return captured, last


def _save_tiny_vision_only(encoder_id: str, out_dir: Path) -> torch.nn.Module:
    from transformers import CLIPVisionModel, SiglipVisionModel

    torch.manual_seed(1)
    cls = CLIPVisionModel if ENCODERS[encoder_id].kind == "hf_clip" else SiglipVisionModel
    model = cls(encoder_config(encoder_id).vision_config).eval()
    model.save_pretrained(out_dir)
    return model


@pytest.mark.parametrize("encoder_id", ["tiny-hf-clip", "tiny-siglip"])
def test_vision_only_checkpoint_round_trips_through_path(encoder_id: str, tmp_path: Path) -> None:
    spec = ENCODERS[encoder_id]
    saved = _save_tiny_vision_only(encoder_id, tmp_path)
    tower = load_encoder(encoder_id, path=tmp_path)
    assert tower.source == str(tmp_path) and not tower.has_text_tower
    assert all(not p.requires_grad for p in tower.parameters())

    pixels = torch.randn(2, 3, spec.image_size, spec.image_size)
    features = tower(pixels)
    assert features.shape == (2, spec.num_patches, spec.feature_dim) == (2, 64, 64)
    blocks, _ = _layer_outputs(saved, pixels)
    expected = blocks[-2][:, spec.num_prefix_tokens :]  # second-to-last block; CLIP drops its CLS
    torch.testing.assert_close(features, expected)
    assert not torch.allclose(features, blocks[-1][:, spec.num_prefix_tokens :])

    with pytest.raises(ValueError, match="vision-only checkpoint"):
        tower.text_features(["red"])
    assert (
        load_encoder(encoder_id, path=tmp_path, dtype=torch.float64)(pixels.double()).dtype == torch.float64
    )


def test_tiny_hf_clip_joint_space_and_text_tower() -> None:
    spec = ENCODERS["tiny-hf-clip"]
    tower = load_encoder("tiny-hf-clip")
    clip = tower.model
    pixels = torch.randn(2, 3, 64, 64)
    _, last = _layer_outputs(clip.vision_model, pixels)
    ln = clip.vision_model.post_layernorm

    # By hand: post-LayerNorm, then the bias-free projection; the CLS row gives CLIP's image embedding.
    normed = F.layer_norm(last, (last.shape[-1],), ln.weight, ln.bias, ln.eps)
    by_hand = normed @ clip.visual_projection.weight.T
    joint = tower.joint_patch_features(pixels)
    assert joint.shape == (2, 64, spec.joint_dim)
    torch.testing.assert_close(joint, by_hand[:, 1:])
    with torch.no_grad():
        torch.testing.assert_close(clip.get_image_features(pixel_values=pixels).pooler_output, by_hand[:, 0])

    words = ["red", "top left"]
    tokens = tower._tokenize(words)
    tok = tower._tokenizer
    assert tokens.shape == (2, 16)
    assert tokens[0, :5].tolist() == [
        tok.bos_token_id,
        *tok.convert_tokens_to_ids(["r", "e", "d</w>"]),
        tok.eos_token_id,
    ]
    features = tower.text_features(words)
    # By hand: the text encoder's (final-LN) state at the first end-of-text token, projected.
    with torch.no_grad():
        states = clip.text_model(input_ids=tokens).last_hidden_state
    eos_at = (tokens == tok.eos_token_id).int().argmax(dim=1)
    torch.testing.assert_close(features, states[torch.arange(2), eos_at] @ clip.text_projection.weight.T)
    # Causal text tower: padding to the full context does not change the embedding.
    short = tok(words, padding=True, return_tensors="pt").input_ids
    assert short.shape[1] < tokens.shape[1]
    torch.testing.assert_close(tower.encode_text(short), features)
    torch.testing.assert_close(tower.text_features(words, normalize=True).norm(dim=-1), torch.ones(2))

    no_text = load_encoder("tiny-hf-clip", text_tower=False)
    assert not no_text.has_text_tower
    assert not any("text" in name or "projection" in name for name, _ in no_text.named_parameters())
    torch.testing.assert_close(no_text(pixels), tower(pixels))
    with pytest.raises(ValueError, match="text_tower=False"):
        no_text.joint_patch_features(pixels)


def test_tiny_siglip_joint_space_and_text_tower() -> None:
    spec = ENCODERS["tiny-siglip"]
    tower = load_encoder("tiny-siglip")
    vision = tower.model.vision_model
    pixels = torch.randn(2, 3, 64, 64)
    blocks, last = _layer_outputs(vision, pixels)
    torch.testing.assert_close(tower(pixels), blocks[-2])  # no CLS: all 64 tokens kept

    # By hand, one patch x at a time: a single key makes the attention weight 1, leaving
    # o = W_o (W_v x + b_v) + b_o, then the head's residual MLP o + mlp(LN(o)).
    head = vision.head
    d = last.shape[-1]
    w_v, b_v = head.attention.in_proj_weight[2 * d :], head.attention.in_proj_bias[2 * d :]
    out = head.attention.out_proj
    o = (last @ w_v.T + b_v) @ out.weight.T + out.bias
    by_hand = o + head.mlp(head.layernorm(o))
    joint = tower.joint_patch_features(pixels)
    assert joint.shape == (2, 64, spec.joint_dim)
    torch.testing.assert_close(joint, by_hand)
    # Limit: an image whose patches are all the same token pools to that token's joint feature.
    same = last[:, :1].expand(-1, 64, -1).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(head(same), by_hand[:, 0])

    words = ["red", "circle"]
    tokens = tower._tokenize(words)
    assert tokens.shape == (2, 16)  # padded to the full context: SigLIP pools the last position
    with torch.no_grad():
        states = tower.model.text_model(input_ids=tokens).last_hidden_state
    head_t = tower.model.text_model.head
    torch.testing.assert_close(tower.text_features(words), states[:, -1] @ head_t.weight.T + head_t.bias)


@pytest.mark.parametrize("encoder_id", ["tiny-hf-clip", "tiny-siglip", "tiny-dinov2"])
def test_tiny_meta_build_matches_the_real_tiny_build(encoder_id: str) -> None:
    real = load_encoder(encoder_id, text_tower=True)
    meta = build_meta_encoder(encoder_id, text_tower=True)
    assert {k: v.shape for k, v in meta.state_dict().items()} == {
        k: v.shape for k, v in real.state_dict().items()
    }


def test_full_checkpoint_through_path_keeps_the_text_tower(tmp_path: Path) -> None:
    from core.models import tiny_checkpoint_dir

    source = tiny_checkpoint_dir("tiny-hf-clip", ENCODERS["tiny-hf-clip"].builder)
    tower = load_encoder("tiny-hf-clip", path=source)
    assert tower.has_text_tower and tower.text_features(["red"]).shape == (1, 32)
    (tmp_path / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(ValueError, match="model_type 'dinov2'; expected 'clip' or 'clip_vision_model'"):
        load_encoder("tiny-hf-clip", path=tmp_path)


@pytest.mark.parametrize("encoder_id", ["tiny-hf-clip", "tiny-siglip"])
def test_vlm_builds_on_the_hf_towers(encoder_id: str) -> None:
    from core.models import build_vlm

    vlm, _ = build_vlm("tiny-llama", encoder_id)
    assert not vlm.vision.has_text_tower and vlm.num_visual_tokens == 64
    tokens = vlm.encode_images(torch.randn(2, 3, 64, 64))
    assert tokens.shape == (2, 64, LLMS["tiny-llama"].hidden_size)


def test_registries_import_without_torch_or_transformers() -> None:
    code = (
        "import sys; import core.models.llm, core.models.vision;"
        "from core.models import LLMS, ENCODERS;"
        "assert len(LLMS) >= 7 and len(ENCODERS) >= 8;"
        "heavy = sorted(m for m in ('torch', 'transformers', 'open_clip') if m in sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)

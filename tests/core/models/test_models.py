"""Tests for core.models: tiny builds and loading, the vision towers, the VLM splice and the adapter I/O."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.cache import is_built  # noqa: E402
from core.models import (  # noqa: E402
    ENCODERS,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    LLMS,
    build_adapter,
    build_vlm,
    load_adapter,
    load_encoder,
    load_llm,
    save_adapter,
    tiny_checkpoint_dir,
)

# The synthetic data generator's caption words, written out here independently of the module.
COLOURS = [
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "cyan",
    "pink",
    "brown",
    "gray",
]
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond", "ring", "bar"]
POSITION_WORDS = ["top", "left", "right", "centre", "bottom"]


pytestmark = pytest.mark.usefixtures("seagrid_cache")  # a fresh cache: builds run for real here


@pytest.fixture(scope="module")
def llm_and_tokenizer():
    return load_llm("tiny-llama")


@pytest.fixture(scope="module")
def clip_tower():
    return load_encoder("tiny-clip")


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- LLM and tokenizer


def test_tiny_llama_is_built_once_and_loaded_from_disk(seagrid_cache: Path) -> None:
    from transformers import LlamaForCausalLM

    spec = LLMS["tiny-llama"]
    directory = tiny_checkpoint_dir("tiny-llama", spec.builder)
    assert directory.parent == seagrid_cache / "models"
    assert directory.name == f"tiny-llama-{spec.builder.fingerprint}"
    assert is_built(directory)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in directory.iterdir()}

    model_a, tok = load_llm("tiny-llama")
    model_b, _ = load_llm("tiny-llama")
    assert isinstance(model_a, LlamaForCausalLM)
    on_disk = load_file(str(directory / "model.safetensors"))
    state_a, state_b = _state(model_a), _state(model_b)
    assert set(on_disk) <= set(state_a)
    for key, tensor in on_disk.items():
        assert torch.equal(state_a[key], tensor), key
        assert torch.equal(state_b[key], tensor), key

    cfg = model_a.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (
        spec.hidden_size,
        spec.num_layers,
        spec.vocab_size,
    )
    assert not cfg.tie_word_embeddings
    n_params = sum(p.numel() for p in model_a.parameters())
    assert n_params < 5_000_000
    assert spec.params_b == pytest.approx(n_params / 1e9, rel=0.01)
    assert len(tok) == spec.vocab_size
    assert tok.model_max_length == spec.max_length == 512


@pytest.mark.parametrize("model_id", ["tiny-llama", "tiny-clip", "tiny-dinov2"])
def test_tiny_builds_are_deterministic(
    model_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = LLMS[model_id] if model_id in LLMS else ENCODERS[model_id]
    # Two builds from different global RNG states, as two machines would start from.
    builds = []
    for seed, sub in ((1, "a"), (2, "b")):
        monkeypatch.setenv("SEAGRID_CACHE", str(tmp_path / sub))
        torch.manual_seed(seed)
        builds.append(tiny_checkpoint_dir(model_id, spec.builder))
    first, second = builds
    assert second != first and second.name == first.name
    weights = sorted(p.name for p in first.glob("*.safetensors"))
    assert weights == sorted(p.name for p in second.glob("*.safetensors")) and weights
    for name in weights:
        a, b = load_file(str(first / name)), load_file(str(second / name))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    if model_id == "tiny-llama":
        assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()


def test_tokenizer_keeps_caption_words_as_single_tokens(llm_and_tokenizer) -> None:
    _, tok = llm_and_tokenizer
    for word in [*COLOURS, *SHAPES, *POSITION_WORDS, "yes", "no"]:
        pieces = tok.tokenize(" " + word)
        assert pieces == ["\u0120" + word], (word, pieces)  # byte-level BPE writes the space as U+0120
        assert len(tok(" " + word, add_special_tokens=False).input_ids) == 1

    caption = "a red circle at the top left and a blue square in the centre."
    enc = tok(caption)
    assert enc.input_ids[0] == tok.bos_token_id
    assert tok.decode(enc.input_ids, skip_special_tokens=True) == caption
    words = tok.convert_ids_to_tokens(enc.input_ids)
    for word in ["red", "circle", "top", "left", "blue", "square", "centre"]:
        assert "\u0120" + word in words


def test_tokenizer_special_tokens_and_padding(llm_and_tokenizer) -> None:
    _, tok = llm_and_tokenizer
    assert (tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token) == ("<unk>", "<s>", "</s>", "<pad>")
    assert len({tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 4
    assert tok.padding_side == "right"
    batch = tok(["yes", "a red circle at the top"], padding=True, return_tensors="pt")
    assert batch.input_ids[0, -1].item() == tok.pad_token_id
    assert batch.attention_mask[0].tolist()[-1] == 0 and batch.attention_mask[1].all()
    # "</s>" written in text (vicuna_v1 separators) is the eos token, not its characters.
    assert tok("yes</s>", add_special_tokens=False).input_ids[-1] == tok.eos_token_id


def test_path_overrides_the_default_source(tmp_path: Path) -> None:
    import shutil

    llm_dir = tiny_checkpoint_dir("tiny-llama", LLMS["tiny-llama"].builder)
    copy = shutil.copytree(llm_dir, tmp_path / "llm")
    with torch.no_grad():
        model, _ = load_llm("tiny-llama")
        model.lm_head.weight.mul_(2.0)
        model.save_pretrained(copy)
    reloaded, _ = load_llm("tiny-llama", path=copy)
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight)
    assert not torch.equal(reloaded.lm_head.weight, load_llm("tiny-llama")[0].lm_head.weight)

    clip_dir = tiny_checkpoint_dir("tiny-clip", ENCODERS["tiny-clip"].builder)
    weights = load_file(str(clip_dir / "open_clip_model.safetensors"))
    weights["visual.proj"] = weights["visual.proj"] * 3.0
    save_file(weights, str(tmp_path / "clip.safetensors"))
    tower = load_encoder("tiny-clip", path=tmp_path / "clip.safetensors")
    torch.testing.assert_close(tower.visual.proj, weights["visual.proj"])


def test_unknown_ids_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="known ids.*tiny-llama"):
        load_llm("no-such-llm")
    with pytest.raises(ValueError, match="known ids.*tiny-clip"):
        load_encoder("no-such-encoder")


# ---------------------------------------------------------------- vision towers


@pytest.mark.parametrize(("encoder_id", "m", "d"), [("tiny-clip", 64, 64), ("tiny-dinov2", 16, 48)])
def test_vision_tower_shapes_and_frozen(encoder_id: str, m: int, d: int) -> None:
    tower = load_encoder(encoder_id)
    assert tower.spec.num_patches == m
    assert all(not p.requires_grad for p in tower.parameters())
    tower.train()  # a frozen tower keeps its modules in eval mode inside a training VLM
    assert all(not mod.training for mod in tower.modules() if mod is not tower)
    pixels = torch.randn(3, 3, tower.spec.image_size, tower.spec.image_size, requires_grad=True)
    feats = tower(pixels)
    assert feats.shape == (3, m, d)
    assert not feats.requires_grad
    with pytest.raises(ValueError, match=r"pixel_values has shape \(3, 3, 32, 32\)"):
        tower(torch.zeros(3, 3, 32, 32))


def test_open_clip_features_are_second_to_last_block(clip_tower) -> None:
    blocks = clip_tower.visual.transformer.resblocks
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        blocks[i].register_forward_hook(lambda _m, _i, out, i=i: captured.__setitem__(i, out))
        for i in range(len(blocks))
    ]
    pixels = torch.randn(2, 3, 64, 64)
    try:
        with torch.no_grad():
            clip_tower.visual(pixels)  # open_clip's own full forward
    finally:
        for h in hooks:
            h.remove()
    expected = captured[len(blocks) - 2][:, 1:]  # drop the class token
    feats = clip_tower(pixels)
    torch.testing.assert_close(feats, expected)
    assert not torch.allclose(feats, captured[len(blocks) - 1][:, 1:])

    # Joint space: final block, ln_post, projection (computed here by hand).
    visual = clip_tower.visual
    joint_expected = visual.ln_post(captured[len(blocks) - 1][:, 1:]) @ visual.proj
    joint = clip_tower.joint_patch_features(pixels)
    assert joint.shape == (2, 64, ENCODERS["tiny-clip"].joint_dim)
    torch.testing.assert_close(joint, joint_expected)
    torch.testing.assert_close(
        clip_tower.joint_patch_features(pixels, normalize=True).norm(dim=-1), torch.ones(2, 64)
    )


def test_dinov2_features_are_second_to_last_layer() -> None:
    tower = load_encoder("tiny-dinov2")
    model = tower.model
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x = model.embeddings(pixels)
        for layer in model.encoder.layer[:-1]:
            x = layer(x)
    torch.testing.assert_close(tower(pixels), x[:, 1:])
    with pytest.raises(ValueError, match="has no text tower"):
        tower.text_features(["red"])
    with pytest.raises(ValueError, match="has no text tower"):
        tower.joint_patch_features(pixels)


def test_clip_text_features(clip_tower) -> None:
    import open_clip

    words = ["red", "circle", "top left"]
    feats = clip_tower.text_features(words)
    assert feats.shape == (3, ENCODERS["tiny-clip"].joint_dim)
    assert not torch.allclose(feats[0], feats[1])
    tokens = open_clip.get_tokenizer(clip_tower.model_name)(words)
    assert tokens.shape == (3, 16)
    torch.testing.assert_close(clip_tower.encode_text(tokens), feats)
    torch.testing.assert_close(clip_tower.text_features(words, normalize=True).norm(dim=-1), torch.ones(3))
    no_text = load_encoder("tiny-clip", text_tower=False)
    assert not any(name.startswith("text_model") for name, _ in no_text.named_parameters())
    with pytest.raises(ValueError, match="text_tower=False"):
        no_text.text_features(["red"])


# ---------------------------------------------------------------- adapter


def test_adapters() -> None:
    torch.manual_seed(0)
    mlp = build_adapter("mlp2x_gelu", 6, 4)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    mlp = mlp.double()
    w1, b1, w2, b2 = mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias
    hidden = x @ w1.T + b1
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / 2**0.5))  # exact GELU
    torch.testing.assert_close(mlp(x), hidden @ w2.T + b2)
    assert sorted(mlp.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]  # LLaVA's keys
    assert build_adapter("linear", 6, 4)(torch.randn(3, 6)).shape == (3, 4)
    with pytest.raises(ValueError, match=r"allowed values: \['linear', 'mlp2x_gelu'\]"):
        build_adapter("mlp3x", 6, 4)
    with pytest.raises(ValueError, match="d_llm"):
        build_adapter("linear", 6, 0)


# ---------------------------------------------------------------- VLM


def _ids(tok, text: str, bos: bool = False) -> list[int]:
    return tok(text, add_special_tokens=bos).input_ids


def _hand_batch(tok, image_size: int = 64) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """Two samples of different lengths: image token mid-prompt, and image token right after bos."""
    a_prompt = _ids(tok, "USER: look at", bos=True)
    a_answer = _ids(tok, " a red circle at the top left.")
    a = a_prompt + [IMAGE_TOKEN_INDEX] + _ids(tok, " what is it? ASSISTANT:") + a_answer
    a_labels = [IGNORE_INDEX] * (len(a) - len(a_answer)) + a_answer
    b_answer = _ids(tok, " a blue star")
    b = [tok.bos_token_id, IMAGE_TOKEN_INDEX] + b_answer
    b_labels = [IGNORE_INDEX, IGNORE_INDEX] + b_answer
    width = max(len(a), len(b))

    def pad(row: list[int], value: int) -> list[int]:
        return row + [value] * (width - len(row))

    batch = {
        "input_ids": torch.tensor([pad(a, tok.pad_token_id), pad(b, tok.pad_token_id)]),
        "labels": torch.tensor([pad(a_labels, IGNORE_INDEX), pad(b_labels, IGNORE_INDEX)]),
        "attention_mask": torch.tensor([pad([1] * len(a), 0), pad([1] * len(b), 0)]),
        "pixel_values": torch.randn(2, 3, image_size, image_size),
        "has_image": torch.tensor([True, True]),
    }
    return batch, [a, b]


def _manual_loss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    total, count = 0.0, 0
    logp = logits.detach().double().log_softmax(-1)
    for i in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[i, t + 1])
            if target != IGNORE_INDEX:
                total -= float(logp[i, t, target])
                count += 1
    return total / count


def test_vlm_forward_splices_visual_tokens() -> None:
    vlm, tok = build_vlm("tiny-llama", "tiny-clip")
    m = ENCODERS["tiny-clip"].num_patches
    batch, rows = _hand_batch(tok)
    vlm.freeze_for_stage1()
    out = vlm(batch, output_hidden_states=True)

    assert out.visual_tokens.shape == (2, m, LLMS["tiny-llama"].hidden_size)
    assert out.visual_positions.shape == (2, m)
    lengths = [len(r) - 1 + m for r in rows]
    assert out.attention_mask.sum(1).tolist() == lengths
    assert out.logits.shape == (2, max(lengths), LLMS["tiny-llama"].vocab_size)
    assert len(out.hidden_states) == LLMS["tiny-llama"].num_layers + 1

    spliced = vlm.splice(batch)
    table = vlm.llm.get_input_embeddings().weight
    for i, row in enumerate(rows):
        p = row.index(IMAGE_TOKEN_INDEX)
        assert out.visual_positions[i].tolist() == list(range(p, p + m))
        assert (out.labels[i, p : p + m] == IGNORE_INDEX).all()
        # Text tokens land, in order, around the visual block; labels follow them.
        text_positions = [j for j in range(lengths[i]) if not p <= j < p + m]
        text_ids = [t for t in row if t != IMAGE_TOKEN_INDEX]
        torch.testing.assert_close(spliced.inputs_embeds[i, text_positions], table[text_ids])
        torch.testing.assert_close(spliced.inputs_embeds[i, p : p + m], out.visual_tokens[i])
        original_labels = batch["labels"][i, : len(row)].tolist()
        del original_labels[p]
        assert out.labels[i, text_positions].tolist() == original_labels
        assert (out.labels[i, lengths[i] :] == IGNORE_INDEX).all()
        assert (spliced.inputs_embeds[i, lengths[i] :] == 0).all()

    assert torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(_manual_loss(out.logits, out.labels), rel=1e-5)

    out.loss.backward()
    adapter_params = {id(p) for p in vlm.adapter.parameters()}
    assert {id(p) for p in vlm.trainable_parameters()} == adapter_params
    for name, p in vlm.named_parameters():
        if id(p) in adapter_params:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_vlm_text_only_rows_and_validation() -> None:
    vlm, tok = build_vlm("tiny-llama", "tiny-dinov2", adapter="linear")
    m = ENCODERS["tiny-dinov2"].num_patches
    batch, rows = _hand_batch(tok)
    text_row = [tok.bos_token_id, *_ids(tok, " yes no")]
    batch["input_ids"][1] = tok.pad_token_id
    batch["input_ids"][1, : len(text_row)] = torch.tensor(text_row)
    batch["labels"][1] = IGNORE_INDEX
    batch["labels"][1, 1 : len(text_row)] = torch.tensor(text_row[1:])
    batch["attention_mask"][1] = 0
    batch["attention_mask"][1, : len(text_row)] = 1
    batch["has_image"] = torch.tensor([True, False])
    out = vlm(batch)
    assert out.visual_positions[1].tolist() == [-1] * m
    assert out.attention_mask.sum(1).tolist() == [len(rows[0]) - 1 + m, len(text_row)]
    assert torch.isfinite(out.loss)

    text_only = {k: v[1:] for k, v in batch.items() if k != "pixel_values"}
    out = vlm(text_only)
    assert out.visual_tokens is None and out.logits.shape[:2] == (1, len(text_row))

    bad = dict(batch, has_image=torch.tensor([True, True]))
    with pytest.raises(ValueError, match=r"image tokens per sample \[1, 0\], has_image \[True, True\]"):
        vlm(bad)
    with pytest.raises(ValueError, match="no pixel_values"):
        vlm({k: v for k, v in batch.items() if k != "pixel_values"})


def test_vlm_truncates_after_splicing() -> None:
    vlm, tok = build_vlm("tiny-llama", "tiny-clip")
    m = ENCODERS["tiny-clip"].num_patches
    vlm.max_length = m + 6
    words = _ids(tok, " red green blue yellow purple orange white black cyan pink")
    assert len(words) == 10
    a = [tok.bos_token_id, IMAGE_TOKEN_INDEX, *words]  # 1 + m + 10 -> cut inside the text
    b = [tok.bos_token_id, *words, IMAGE_TOKEN_INDEX]  # 11 + m -> cut inside the visual block
    batch = {
        "input_ids": torch.tensor([a, b]),
        "labels": torch.tensor([a, b]).clamp(min=IGNORE_INDEX),
        "attention_mask": torch.ones(2, len(a), dtype=torch.long),
        "pixel_values": torch.randn(2, 3, 64, 64),
        "has_image": torch.tensor([True, True]),
    }
    batch["labels"][batch["input_ids"] == IMAGE_TOKEN_INDEX] = IGNORE_INDEX
    out = vlm(batch)
    assert out.logits.shape[1] == m + 6 and out.attention_mask.all()
    assert out.labels[0, 1 + m :].tolist() == words[:5]
    assert out.visual_positions[0].tolist() == list(range(1, 1 + m))
    kept = m + 6 - 11
    assert out.visual_positions[1].tolist() == list(range(11, m + 6)) + [-1] * (m - kept)
    assert (out.labels[1] == IGNORE_INDEX).sum() == kept


def test_vlm_left_padding_and_generate() -> None:
    vlm, tok = build_vlm("tiny-llama", "tiny-clip")
    batch, rows = _hand_batch(tok)
    right, left = vlm.splice(batch), vlm.splice(batch, padding_side="left")
    for i in range(2):
        n = int(right.attention_mask[i].sum())
        torch.testing.assert_close(left.inputs_embeds[i, -n:], right.inputs_embeds[i, :n])
        shift = right.attention_mask.shape[1] - n
        assert (left.visual_positions[i] - right.visual_positions[i] == shift).all()
    new = vlm.generate(batch, max_new_tokens=3, do_sample=False)
    assert new.shape == (2, 3)


def test_freeze_for_stage2() -> None:
    vlm, _ = build_vlm("tiny-llama", "tiny-dinov2")
    vlm.freeze_for_stage2()
    names = {n.split(".")[0] for n, _ in vlm.named_trainable_parameters()}
    assert names == {"adapter", "llm"}
    vlm.freeze_for_stage2(train_vision=True)
    assert {n.split(".")[0] for n, _ in vlm.named_trainable_parameters()} == {"adapter", "llm", "vision"}
    vlm.freeze_for_stage1()
    assert {n.split(".")[0] for n, _ in vlm.named_trainable_parameters()} == {"adapter"}


def test_adapter_save_load_roundtrip_and_mismatch(tmp_path: Path) -> None:
    vlm, _ = build_vlm("tiny-llama", "tiny-clip")
    saved = _state(vlm.adapter)
    save_adapter(vlm, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "adapter.json").read_text())
    assert meta["adapter"] == "mlp2x_gelu" and meta["shapes"]["0.weight"] == [64, 64]

    with torch.no_grad():
        for p in vlm.adapter.parameters():
            p.add_(1.0)
    load_adapter(vlm, tmp_path / "ckpt")
    for key, value in _state(vlm.adapter).items():
        assert torch.equal(value, saved[key]), key

    other, _ = build_vlm("tiny-llama", "tiny-dinov2")
    with pytest.raises(ValueError, match=r"expected shapes .*\[64, 48\].*found .*\[64, 64\]"):
        load_adapter(other, tmp_path / "ckpt")
    linear, _ = build_vlm("tiny-llama", "tiny-clip", adapter="linear")
    with pytest.raises(ValueError, match="'mlp2x_gelu'.*'linear'"):
        load_adapter(linear, tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="adapter.json"):
        load_adapter(vlm, tmp_path / "missing")

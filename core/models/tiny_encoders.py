"""Tiny vision encoders for tests and smoke runs: their configs and the functions that build their checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.models.tiny import config_hash

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def open_clip_name(config: dict[str, Any]) -> str:
    # open_clip keys its config registry by file stem; the hash keeps different configs apart.
    return f"seagrid-{config['name']}-{config_hash(config)}"


def build_tiny_open_clip(out_dir: Path, config: dict[str, Any]) -> None:
    import open_clip
    from safetensors.torch import save_file

    name = open_clip_name(config)
    config_file = out_dir / f"{name}.json"
    config_file.write_text(json.dumps(config["model_cfg"], indent=2))
    open_clip.add_model_config(config_file)
    model = open_clip.create_model(name, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / OPEN_CLIP_WEIGHTS))


def build_tiny_dinov2(out_dir: Path, config: dict[str, Any]) -> None:
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(**config["dinov2"])).save_pretrained(out_dir)


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())  # sorted: the library returns a set's order


def _tiny_clip_tokenizer(model_max_length: int) -> Any:
    """A real `CLIPTokenizer` over a merge-free byte vocabulary (every character is one token)."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def _tiny_siglip_tokenizer(model_max_length: int) -> Any:
    """A byte-level tokenizer that appends `</s>` and pads with it, like SigLIP's (no sentencepiece)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["</s>"] = len(vocab)
    vocab["<unk>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=model_max_length,
    )


def build_tiny_hf_dual(out_dir: Path, config: dict[str, Any]) -> None:
    from transformers import CLIPConfig, CLIPModel, PreTrainedModel, SiglipConfig, SiglipModel

    arch = dict(config["arch"])
    model_type = arch.pop("model_type")
    make_tokenizer = _tiny_clip_tokenizer if model_type == "clip" else _tiny_siglip_tokenizer
    tokenizer = make_tokenizer(arch["text_config"]["max_position_embeddings"])
    if len(tokenizer) != arch["text_config"]["vocab_size"]:
        raise RuntimeError(
            f"tiny {model_type}: tokenizer has {len(tokenizer)} tokens, text_config.vocab_size is "
            f"{arch['text_config']['vocab_size']}; fix the tiny config"
        )
    # The config classes AutoConfig.for_model would pick, named so that each model gets its own config type.
    model: PreTrainedModel = (
        CLIPModel(CLIPConfig(**arch)) if model_type == "clip" else SiglipModel(SiglipConfig(**arch))
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


TINY_CLIP_CONFIG: dict[str, Any] = {
    "version": 1,
    "name": "tiny-clip",
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "head_width": 16, "layers": 3},
        # vocab_size must stay 49408: open_clip's default SimpleTokenizer (shipped in the package).
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
}

TINY_DINOV2_CONFIG: dict[str, Any] = {
    "version": 1,
    "dinov2": {
        "image_size": 64,
        "patch_size": 16,
        "hidden_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "mlp_ratio": 4,
    },
}

_TINY_VISION = {
    "image_size": 64,
    "patch_size": 8,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
}

TINY_HF_CLIP_CONFIG: dict[str, Any] = {
    "version": 1,
    "arch": {
        "model_type": "clip",
        "projection_dim": 32,
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "vocab_size": 514,  # 256 bytes, 256 end-of-word bytes, <|startoftext|>, <|endoftext|>
            "bos_token_id": 512,
            "eos_token_id": 513,
            "pad_token_id": 513,
            "projection_dim": 32,
        },
        "vision_config": {**_TINY_VISION, "projection_dim": 32},
    },
}

TINY_SIGLIP_CONFIG: dict[str, Any] = {
    "version": 1,
    "arch": {
        "model_type": "siglip",
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "vocab_size": 258,  # 256 bytes, </s>, <unk>
            "eos_token_id": 256,
            "pad_token_id": 256,
            "projection_size": 64,  # = the vision width, where the pooled image embedding lives
        },
        "vision_config": dict(_TINY_VISION),
    },
}

"""Vision-encoder registry: facts about each encoder id and how tiny ones are built (no heavy imports)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.models.tiny import TinyBuilder, config_hash

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


@dataclass(frozen=True)
class EncoderSpec:
    """Facts about a vision encoder: its patch grid, which layer feeds the adapter, preprocessing.

    `feature_layer` indexes hidden states the way transformers' `hidden_states` tuple does
    (0 = embeddings, -1 = last block, -2 = second-to-last block). For kind "open_clip",
    `pretrained` is the open_clip pretrained tag that goes with `hub_id` (e.g. "openai").
    """

    id: str
    kind: str
    hub_id: str | None
    image_size: int
    patch_size: int
    grid: tuple[int, int]
    feature_dim: int
    num_prefix_tokens: int
    feature_layer: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    has_text_tower: bool
    builder: TinyBuilder | None = None
    pretrained: str | None = None
    joint_dim: int | None = None

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


def _open_clip_name(config: dict[str, Any]) -> str:
    # open_clip keys its config registry by file stem; the hash keeps different configs apart.
    return f"seagrid-{config['name']}-{config_hash(config)}"


def _build_tiny_open_clip(out_dir: Path, config: dict[str, Any]) -> None:
    import open_clip
    from safetensors.torch import save_file

    name = _open_clip_name(config)
    config_file = out_dir / f"{name}.json"
    config_file.write_text(json.dumps(config["model_cfg"], indent=2))
    open_clip.add_model_config(config_file)
    model = open_clip.create_model(name, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / OPEN_CLIP_WEIGHTS))


def _build_tiny_dinov2(out_dir: Path, config: dict[str, Any]) -> None:
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(**config["dinov2"])).save_pretrained(out_dir)


_TINY_CLIP_CONFIG: dict[str, Any] = {
    "version": 1,
    "name": "tiny-clip",
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "head_width": 16, "layers": 3},
        # vocab_size must stay 49408: open_clip's default SimpleTokenizer (shipped in the package).
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
}

_TINY_DINOV2_CONFIG: dict[str, Any] = {
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

ENCODERS: dict[str, EncoderSpec] = {
    "tiny-clip": EncoderSpec(
        id="tiny-clip",
        kind="open_clip",
        hub_id=None,
        image_size=64,
        patch_size=8,
        grid=(8, 8),
        feature_dim=64,
        num_prefix_tokens=1,
        feature_layer=-2,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        has_text_tower=True,
        builder=TinyBuilder(_build_tiny_open_clip, _TINY_CLIP_CONFIG, seed=0),
        joint_dim=32,
    ),
    "tiny-dinov2": EncoderSpec(
        id="tiny-dinov2",
        kind="hf_dinov2",
        hub_id=None,
        image_size=64,
        patch_size=16,
        grid=(4, 4),
        feature_dim=48,
        num_prefix_tokens=1,
        feature_layer=-2,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        has_text_tower=False,
        builder=TinyBuilder(_build_tiny_dinov2, _TINY_DINOV2_CONFIG, seed=0),
    ),
}


def get_encoder_spec(encoder_id: str) -> EncoderSpec:
    """The registry entry for `encoder_id`, or a ValueError listing the known ids."""
    try:
        return ENCODERS[encoder_id]
    except KeyError:
        raise ValueError(f"unknown encoder_id {encoder_id!r}; known ids: {sorted(ENCODERS)}") from None

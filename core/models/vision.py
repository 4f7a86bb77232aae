"""Vision-encoder registry: facts about each encoder id (no heavy imports; tiny ones are built in tiny_encoders)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.models.tiny import TinyBuilder
from core.models.tiny_encoders import (
    TINY_CLIP_CONFIG,
    TINY_DINOV2_CONFIG,
    TINY_HF_CLIP_CONFIG,
    TINY_SIGLIP_CONFIG,
    build_tiny_dinov2,
    build_tiny_hf_dual,
    build_tiny_open_clip,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

ENCODER_KINDS = ("open_clip", "hf_clip", "hf_siglip", "hf_dinov2")
# transformers model_type of the full dual encoder and of its vision half, per kind.
HF_DUAL_MODEL_TYPES: dict[str, tuple[str, str]] = {
    "hf_clip": ("clip", "clip_vision_model"),
    "hf_siglip": ("siglip", "siglip_vision_model"),
}
RESIZE_MODES = ("shortest_edge", "squash")


@dataclass(frozen=True)
class EncoderSpec:
    """Facts about a vision encoder: its patch grid, which layer feeds the adapter, preprocessing.

    `feature_layer` indexes hidden states the way transformers' `hidden_states` tuple does
    (0 = embeddings, -1 = last block, -2 = second-to-last block). For kind "open_clip",
    `pretrained` is the open_clip pretrained tag that goes with `hub_id` (e.g. "openai").

    Preprocessing, as the checkpoint's own image processor does it: `resize` is "shortest_edge"
    (resize the short side to `image_size / crop_pct`, then centre-crop `image_size`) or "squash"
    (resize both sides to `image_size`, aspect ratio not kept), then scale to [0, 1] and normalise
    with `mean`/`std`.

    `arch` is the checkpoint's `config.json` architecture (with its `model_type`): enough to build
    the model on the meta device without downloading anything. For dual encoders it is the full
    image-text config; the vision half is its `vision_config`.
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
    resize: str = "shortest_edge"
    crop_pct: float = 1.0
    arch: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        where = f"encoder {self.id!r}"
        if self.kind not in ENCODER_KINDS:
            raise ValueError(f"{where}: kind={self.kind!r}; known kinds: {list(ENCODER_KINDS)}")
        side = self.image_size // self.patch_size
        if self.grid != (side, side):
            raise ValueError(
                f"{where}: grid={self.grid} but image_size {self.image_size} // patch_size "
                f"{self.patch_size} gives ({side}, {side})"
            )
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"{where}: resize={self.resize!r}; known modes: {list(RESIZE_MODES)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"{where}: crop_pct={self.crop_pct} must be in (0, 1]")
        if self.has_text_tower and self.joint_dim is None:
            raise ValueError(
                f"{where}: has a text tower, so joint_dim (the image-text space width) is needed"
            )
        if self.arch:
            vision = vision_arch(self)
            for key, value in (("hidden_size", self.feature_dim), ("patch_size", self.patch_size)):
                if vision.get(key) != value:
                    raise ValueError(f"{where}: arch has {key}={vision.get(key)!r}, spec says {value}")

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


def vision_arch(spec: EncoderSpec) -> Mapping[str, Any]:
    """The vision half of `spec.arch` (the whole of it for vision-only models)."""
    if spec.kind in HF_DUAL_MODEL_TYPES:
        return spec.arch.get("vision_config", {})
    return spec.arch


def encoder_config(encoder_id: str) -> PretrainedConfig:
    """The transformers config object built from the registry's `arch` facts (nothing is downloaded)."""
    from transformers import AutoConfig

    spec = get_encoder_spec(encoder_id)
    if not spec.arch:
        raise ValueError(
            f"encoder {encoder_id!r} (kind {spec.kind!r}) has no arch facts in the registry; "
            f"those that do: {sorted(k for k, v in ENCODERS.items() if v.arch)}"
        )
    kwargs = copy.deepcopy(dict(spec.arch))
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


# config.json of the hub checkpoints, architecture keys only.
_CLIP_L_TEXT: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    # OpenAI's config keeps these legacy ids; eos_token_id == 2 makes transformers pool at the
    # highest token id, which is <|endoftext|> (49407).
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
_CLIP_L_VISION: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
}
_SIGLIP_SO400M_TOWER: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}


def _clip_l_arch(image_size: int) -> dict[str, Any]:
    return {
        "model_type": "clip",
        "projection_dim": 768,
        "logit_scale_init_value": 2.6592,
        "text_config": dict(_CLIP_L_TEXT),
        "vision_config": {**_CLIP_L_VISION, "image_size": image_size},
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
        builder=TinyBuilder(build_tiny_open_clip, TINY_CLIP_CONFIG, seed=0),
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
        builder=TinyBuilder(build_tiny_dinov2, TINY_DINOV2_CONFIG, seed=0),
        arch={"model_type": "dinov2", **TINY_DINOV2_CONFIG["dinov2"]},
    ),
    "tiny-hf-clip": EncoderSpec(
        id="tiny-hf-clip",
        kind="hf_clip",
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
        builder=TinyBuilder(build_tiny_hf_dual, TINY_HF_CLIP_CONFIG, seed=0),
        joint_dim=32,
        arch=TINY_HF_CLIP_CONFIG["arch"],
    ),
    "tiny-siglip": EncoderSpec(
        id="tiny-siglip",
        kind="hf_siglip",
        hub_id=None,
        image_size=64,
        patch_size=8,
        grid=(8, 8),
        feature_dim=64,
        num_prefix_tokens=0,
        feature_layer=-2,
        mean=SIGLIP_MEAN,
        std=SIGLIP_STD,
        has_text_tower=True,
        builder=TinyBuilder(build_tiny_hf_dual, TINY_SIGLIP_CONFIG, seed=0),
        joint_dim=64,
        resize="squash",
        arch=TINY_SIGLIP_CONFIG["arch"],
    ),
    "clip-l-336": EncoderSpec(
        id="clip-l-336",
        kind="hf_clip",
        hub_id="openai/clip-vit-large-patch14-336",
        image_size=336,
        patch_size=14,
        grid=(24, 24),
        feature_dim=1024,
        num_prefix_tokens=1,
        feature_layer=-2,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        has_text_tower=True,
        joint_dim=768,
        arch=_clip_l_arch(336),
    ),
    "clip-l-224": EncoderSpec(
        id="clip-l-224",
        kind="hf_clip",
        hub_id="openai/clip-vit-large-patch14",
        image_size=224,
        patch_size=14,
        grid=(16, 16),
        feature_dim=1024,
        num_prefix_tokens=1,
        feature_layer=-2,
        mean=OPENAI_CLIP_MEAN,
        std=OPENAI_CLIP_STD,
        has_text_tower=True,
        joint_dim=768,
        arch=_clip_l_arch(224),
    ),
    "siglip-so400m-384": EncoderSpec(
        id="siglip-so400m-384",
        kind="hf_siglip",
        hub_id="google/siglip-so400m-patch14-384",
        image_size=384,
        patch_size=14,
        grid=(27, 27),  # 384 // 14; the last 6 pixel rows/columns fall outside the stride-14 conv
        feature_dim=1152,
        num_prefix_tokens=0,
        feature_layer=-2,
        mean=SIGLIP_MEAN,
        std=SIGLIP_STD,
        has_text_tower=True,
        joint_dim=1152,
        resize="squash",
        arch={
            "model_type": "siglip",
            "text_config": {**_SIGLIP_SO400M_TOWER, "vocab_size": 32000, "max_position_embeddings": 64},
            "vision_config": {**_SIGLIP_SO400M_TOWER, "image_size": 384, "patch_size": 14},
        },
    ),
    "dinov2-l-224": EncoderSpec(
        id="dinov2-l-224",
        kind="hf_dinov2",
        hub_id="facebook/dinov2-large",
        image_size=224,
        patch_size=14,
        grid=(16, 16),
        feature_dim=1024,
        num_prefix_tokens=1,  # CLS only: facebook/dinov2-large has no register tokens
        feature_layer=-2,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        has_text_tower=False,
        crop_pct=224 / 256,  # resize the short side to 256, centre-crop 224
        arch={
            "model_type": "dinov2",
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "mlp_ratio": 4,
            # Trained at 518 px (37 x 37 positions); transformers interpolates them for 224 px inputs.
            "image_size": 518,
            "patch_size": 14,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-6,
            "layerscale_value": 1.0,
            "qkv_bias": True,
            "use_swiglu_ffn": False,
        },
    ),
}


def get_encoder_spec(encoder_id: str) -> EncoderSpec:
    """The registry entry for `encoder_id`, or a ValueError listing the known ids."""
    try:
        return ENCODERS[encoder_id]
    except KeyError:
        raise ValueError(f"unknown encoder_id {encoder_id!r}; known ids: {sorted(ENCODERS)}") from None

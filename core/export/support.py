"""Which encoders and adapters a LLaVA checkpoint can hold, and how their facts map onto LlavaConfig (no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.models.vision import EncoderSpec

# transformers' LlavaMultiModalProjector is linear -> act -> linear: seagrid's adapters that are exactly that.
PROJECTOR_ACT: dict[str, str] = {"mlp2x_gelu": "gelu"}

# Encoder kinds whose vision tower transformers' `AutoModel` builds as it is (LlavaModel.vision_tower).
HF_VISION_KINDS = ("hf_clip", "hf_siglip", "hf_dinov2")

# vision_feature_select_strategy by the number of prefix tokens the tower puts before its patches.
SelectStrategy = Literal["default", "full"]  # LlavaConfig's vision_feature_select_strategy
SELECT_STRATEGY: dict[int, SelectStrategy] = {1: "default", 0: "full"}

REFUSED_KINDS: dict[str, str] = {
    "open_clip": (
        "open_clip towers are not transformers models: LlavaForConditionalGeneration builds its vision tower "
        "with transformers' AutoModel, which has no open_clip architecture (and converting one needs "
        "open_clip's per-model weight layout); train with an hf_clip encoder (e.g. tiny-hf-clip, clip-l-336) "
        "to export"
    ),
}


class ExportRefused(ValueError):
    """The trial's model has no faithful transformers LLaVA form; the message says why and what would."""


@dataclass(frozen=True)
class VisionFacts:
    """What LlavaConfig and LlavaProcessor need from the encoder registry entry."""

    feature_layer: int
    select_strategy: SelectStrategy
    num_additional_image_tokens: int
    patch_size: int
    num_image_tokens: int


def check_exportable(encoder: EncoderSpec, adapter: str) -> VisionFacts:
    """The LLaVA facts of `encoder`, or ExportRefused saying why this encoder/adapter cannot be exported."""
    if encoder.kind in REFUSED_KINDS:
        raise ExportRefused(f"encoder {encoder.id!r} (kind {encoder.kind}): {REFUSED_KINDS[encoder.kind]}")
    if encoder.kind not in HF_VISION_KINDS:
        raise ExportRefused(f"encoder {encoder.id!r}: kind {encoder.kind!r} has no export rule")
    if adapter not in PROJECTOR_ACT:
        raise ExportRefused(
            f"adapter {adapter!r}: transformers' LLaVA projector is linear-gelu-linear, which only "
            f"{sorted(PROJECTOR_ACT)} is; train with model.adapter: mlp2x_gelu to export"
        )
    if encoder.num_prefix_tokens not in SELECT_STRATEGY:
        raise ExportRefused(
            f"encoder {encoder.id!r} puts {encoder.num_prefix_tokens} tokens before its patches; LLaVA's "
            "vision_feature_select_strategy drops one (default) or none (full), so it cannot drop these"
        )
    return VisionFacts(
        feature_layer=encoder.feature_layer,
        select_strategy=SELECT_STRATEGY[encoder.num_prefix_tokens],
        num_additional_image_tokens=encoder.num_prefix_tokens,
        patch_size=encoder.patch_size,
        num_image_tokens=encoder.num_patches,
    )


def refusal(encoder_id: str, adapter: str) -> str | None:
    """Why a trial with this encoder and adapter has no export (None: it has one). A graph adds an export
    step only where this is None, so trials of open_clip towers (the smoke grid's tiny-clip) keep running."""
    from core.models.vision import get_encoder_spec

    try:
        check_exportable(get_encoder_spec(encoder_id), adapter)
    except ExportRefused as err:
        return str(err)
    return None

"""Loading a vision encoder as a frozen VisionTower: open_clip or transformers checkpoints, tiny builds, meta."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from core.models.tiny import checkpoint_source, tiny_checkpoint_dir
from core.models.tiny_encoders import OPEN_CLIP_WEIGHTS, open_clip_name
from core.models.towers import (
    Dinov2Tower,
    HfClipTower,
    HfDualTower,
    HfSiglipTower,
    OpenClipTower,
    VisionTower,
)
from core.models.vision import HF_DUAL_MODEL_TYPES, EncoderSpec, encoder_config, get_encoder_spec

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def _load_open_clip(spec: EncoderSpec, path: str | Path | None) -> tuple[nn.Module, str]:
    import open_clip

    if spec.builder is not None:
        # The tiny build holds the architecture config; `path` may point at other weights for it.
        directory = tiny_checkpoint_dir(spec.id, spec.builder)
        name = open_clip_name(dict(spec.builder.config))
        if name not in open_clip.list_models():
            open_clip.add_model_config(directory / f"{name}.json")
        weights = Path(path) if path is not None else directory / OPEN_CLIP_WEIGHTS
        return open_clip.create_model(name, pretrained=str(weights), require_pretrained=True), name
    if spec.hub_id is None:
        raise ValueError(
            f"encoder {spec.id!r} has no hub_id: an open_clip model name is needed to load {path}"
        )
    if path is not None and Path(path).is_dir():
        return open_clip.create_model(f"local-dir:{path}"), f"local-dir:{path}"
    pretrained = str(path) if path is not None else spec.pretrained
    return open_clip.create_model(spec.hub_id, pretrained=pretrained, require_pretrained=True), spec.hub_id


_HF_DUAL_CLASSES: dict[str, tuple[str, str, type[HfDualTower]]] = {
    "hf_clip": ("CLIPModel", "CLIPVisionModel", HfClipTower),
    "hf_siglip": ("SiglipModel", "SiglipVisionModel", HfSiglipTower),
}


def _hf_source(spec: EncoderSpec, path: str | Path | None) -> str:
    """A transformers checkpoint to read: `path`, else the hub id, else the tiny build in the cache."""
    return checkpoint_source(spec, path, "encoder")


def _hf_dual_classes(
    spec: EncoderSpec,
) -> tuple[type[PreTrainedModel], type[PreTrainedModel], type[HfDualTower]]:
    import transformers

    full, vision, tower_cls = _HF_DUAL_CLASSES[spec.kind]
    return getattr(transformers, full), getattr(transformers, vision), tower_cls


def _load_hf_dual(spec: EncoderSpec, source: str, text_tower: bool, dtype: torch.dtype) -> HfDualTower:
    """A CLIP/SigLIP checkpoint: the whole dual model when the text tower is wanted, else its vision half.

    Hub checkpoints hold the whole dual model; `from_pretrained` of the vision class reads just
    the vision weights from them (as LLaVA does). A vision-only checkpoint loads without a text tower.
    """
    from transformers import AutoConfig

    full_cls, vision_cls, tower_cls = _hf_dual_classes(spec)
    full_type, vision_type = HF_DUAL_MODEL_TYPES[spec.kind]
    model_type = AutoConfig.from_pretrained(source).model_type
    reason = None
    if model_type == full_type:
        keep_text = text_tower and spec.has_text_tower
        model = (full_cls if keep_text else vision_cls).from_pretrained(source, dtype=dtype)
    elif model_type == vision_type:
        model = vision_cls.from_pretrained(source, dtype=dtype)
        if text_tower:
            reason = f"was loaded from a vision-only checkpoint ({source})"
    else:
        raise ValueError(
            f"encoder {spec.id!r} (kind {spec.kind}): checkpoint {source} has model_type {model_type!r}; "
            f"expected {full_type!r} or {vision_type!r}"
        )
    return tower_cls(spec, model, source=source, no_text_reason=reason)


def load_encoder(
    encoder_id: str,
    *,
    path: str | Path | None = None,
    text_tower: bool = True,
    dtype: torch.dtype = torch.float32,
) -> VisionTower:
    """Load a frozen `VisionTower`; tiny ids are built once into the cache and read back from there.

    `path` overrides the hub source (an open_clip weights file or `local-dir` folder; a
    transformers checkpoint folder). `text_tower=False` drops the text tower (the VLM never uses
    it; SEA label extraction does).
    """
    spec = get_encoder_spec(encoder_id)
    if spec.kind == "open_clip":
        model, name = _load_open_clip(spec, path)
        tower: VisionTower = OpenClipTower(spec, model, name, text_tower)
    elif spec.kind == "hf_dinov2":
        from transformers import Dinov2Model

        tower = Dinov2Tower(spec, Dinov2Model.from_pretrained(_hf_source(spec, path), dtype=dtype))
    elif spec.kind in _HF_DUAL_CLASSES:
        tower = _load_hf_dual(spec, _hf_source(spec, path), text_tower, dtype)
    else:
        raise ValueError(
            f"encoder {encoder_id!r}: unknown kind {spec.kind!r}; supported: open_clip, hf_dinov2, "
            f"{', '.join(_HF_DUAL_CLASSES)}"
        )
    return tower.to(dtype)


def build_meta_encoder(encoder_id: str, *, text_tower: bool = False) -> VisionTower:
    """The encoder's architecture on the meta device as a frozen `VisionTower`, from the registry alone.

    Nothing is downloaded or allocated: for parameter counts and output shapes (the tower's
    forward runs on meta tensors). `text_tower=True` builds the whole dual encoder.
    """
    spec = get_encoder_spec(encoder_id)
    config = encoder_config(encoder_id)  # raises for entries without arch facts
    if spec.kind == "hf_dinov2":
        from transformers import Dinov2Config, Dinov2Model

        with torch.device("meta"):
            return Dinov2Tower(spec, Dinov2Model(cast(Dinov2Config, config)))  # a dinov2 arch gives one
    if spec.kind in _HF_DUAL_CLASSES:
        full_cls, vision_cls, tower_cls = _hf_dual_classes(spec)
        with torch.device("meta"):
            if text_tower and spec.has_text_tower:
                model = full_cls(config)
            else:
                model = vision_cls(config.vision_config)
        return tower_cls(spec, model, source=None)
    raise ValueError(f"encoder {encoder_id!r}: no meta build for kind {spec.kind!r}")

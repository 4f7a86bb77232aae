"""Vision towers: the frozen encoders that turn images into per-patch features, and loading them."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.models.tiny import tiny_checkpoint_dir
from core.models.vision import ENCODERS, OPEN_CLIP_WEIGHTS, EncoderSpec, _open_clip_name, get_encoder_spec


class VisionTower(nn.Module):
    """A vision encoder reduced to what the VLM needs: `[B, 3, S, S]` images -> `[B, m, d]` patch features.

    Frozen by default (no grads, eval mode, forward under no_grad); `unfreeze()` for stage-2 runs
    that train the encoder.
    """

    def __init__(self, spec: EncoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.frozen = True

    def freeze(self) -> VisionTower:
        self.requires_grad_(False)
        self.frozen = True
        return self.train(self.training)

    def unfreeze(self) -> VisionTower:
        self.requires_grad_(True)
        self.frozen = False
        return self.train(self.training)

    def train(self, mode: bool = True) -> VisionTower:
        self.training = mode
        for child in self.children():
            # A frozen encoder keeps eval-mode behaviour (dropout, drop-path off) inside a training VLM.
            child.train(mode and not self.frozen)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        s = self.spec.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, s, s):
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; encoder {self.spec.id!r} expects "
                f"[B, 3, {s}, {s}] (resize/crop images to {s} px)"
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch features from `spec.feature_layer`, prefix tokens dropped: `[B, m, d]`."""
        self._check_pixels(pixel_values)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self._layer_features(pixel_values.to(device=self.device, dtype=self.dtype))
        expected = (pixel_values.shape[0], self.spec.num_patches, self.spec.feature_dim)
        if tuple(features.shape) != expected:
            raise RuntimeError(
                f"encoder {self.spec.id!r} produced features of shape {tuple(features.shape)}, spec says "
                f"{expected}; the registry entry does not match the checkpoint"
            )
        return features

    def joint_patch_features(self, pixel_values: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
        """Final-layer patch tokens in the joint image-text space, `[B, m, e]` (for SEA labels)."""
        self._require_text("joint_patch_features")
        self._check_pixels(pixel_values)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self._joint_features(pixel_values.to(device=self.device, dtype=self.dtype))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, *, normalize: bool = False) -> torch.Tensor:
        """Text-tower embeddings of already tokenised text, `[q, e]`."""
        self._require_text("encode_text")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = self._encode_text(tokens.to(self.device))
        return F.normalize(features, dim=-1) if normalize else features

    def text_features(self, words: list[str], *, normalize: bool = False) -> torch.Tensor:
        """Text-tower embeddings of `words`, `[q, e]`, tokenised with the encoder's own tokenizer."""
        self._require_text("text_features")
        if isinstance(words, str) or not words:
            raise ValueError(f"words must be a non-empty list of strings, got {words!r}")
        return self.encode_text(self._tokenize(words), normalize=normalize)

    def _require_text(self, what: str) -> None:
        if not self.has_text_tower:
            reason = (
                "has no text tower" if not self.spec.has_text_tower else "was loaded with text_tower=False"
            )
            raise ValueError(
                f"{what}: encoder {self.spec.id!r} {reason}; use an encoder with a text tower "
                f"(e.g. {[k for k, v in ENCODERS.items() if v.has_text_tower]}) and transfer its labels"
            )

    @property
    def has_text_tower(self) -> bool:
        return False

    def _layer_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _joint_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _tokenize(self, words: list[str]) -> torch.Tensor:
        raise NotImplementedError


class OpenClipTower(VisionTower):
    """An open_clip ViT; keeps the CLIP text tower (without a second copy of `visual`) when asked."""

    def __init__(self, spec: EncoderSpec, model: nn.Module, model_name: str, text_tower: bool) -> None:
        super().__init__(spec)
        from open_clip.transformer import VisionTransformer

        visual = model.visual
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise ValueError(
                f"encoder {spec.id!r}: only open_clip's plain VisionTransformer (no attentional pooling) "
                f"is supported, got {type(visual).__name__}"
            )
        self.visual = visual
        self.num_blocks = len(visual.transformer.resblocks)
        self.block_index = _block_index(spec, self.num_blocks)
        self.model_name = model_name
        self.text_model: nn.Module | None = None
        if text_tower and spec.has_text_tower:
            model.visual = nn.Identity()  # registered once, under self.visual
            self.text_model = model
        self.freeze()

    @property
    def has_text_tower(self) -> bool:
        return self.text_model is not None

    def _layer_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # open_clip drops the class token from intermediates itself (its ViTs have exactly one).
        out = self.visual.forward_intermediates(
            pixel_values,
            indices=[self.block_index],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
        )
        return out["image_intermediates"][0]

    def _joint_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            pixel_values,
            indices=[self.num_blocks - 1],
            normalize_intermediates=True,  # applies ln_post, as for the pooled token
            intermediates_only=True,
            output_fmt="NLC",
        )
        return out["image_intermediates"][0] @ self.visual.proj

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        assert self.text_model is not None
        return self.text_model.encode_text(tokens)

    def _tokenize(self, words: list[str]) -> torch.Tensor:
        import open_clip

        return open_clip.get_tokenizer(self.model_name)(words)


class Dinov2Tower(VisionTower):
    """A transformers DINOv2 model (no text tower)."""

    def __init__(self, spec: EncoderSpec, model: nn.Module) -> None:
        super().__init__(spec)
        self.model = model
        self.num_blocks = model.config.num_hidden_layers
        _block_index(spec, self.num_blocks)
        self.freeze()

    def _layer_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        if len(hidden) != self.num_blocks + 1:
            raise RuntimeError(
                f"encoder {self.spec.id!r}: expected {self.num_blocks + 1} hidden states "
                f"(embeddings + one per block), got {len(hidden)}"
            )
        return hidden[self.spec.feature_layer][:, self.spec.num_prefix_tokens :]


def _block_index(spec: EncoderSpec, num_blocks: int) -> int:
    """0-based index of the block whose output is hidden state `spec.feature_layer`."""
    hidden = spec.feature_layer + num_blocks + 1 if spec.feature_layer < 0 else spec.feature_layer
    if not 1 <= hidden <= num_blocks:
        raise ValueError(
            f"encoder {spec.id!r}: feature_layer={spec.feature_layer} is outside the {num_blocks} blocks "
            f"(use -1..-{num_blocks} or 1..{num_blocks})"
        )
    return hidden - 1


def _load_open_clip(spec: EncoderSpec, path: str | Path | None) -> tuple[nn.Module, str]:
    import open_clip

    if spec.builder is not None:
        # The tiny build holds the architecture config; `path` may point at other weights for it.
        directory = tiny_checkpoint_dir(spec.id, spec.builder)
        name = _open_clip_name(dict(spec.builder.config))
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


def load_encoder(
    encoder_id: str,
    *,
    path: str | Path | None = None,
    text_tower: bool = True,
    dtype: torch.dtype = torch.float32,
) -> VisionTower:
    """Load a frozen `VisionTower`; tiny ids are built once into the cache and read back from there.

    `path` overrides the hub source (an open_clip weights file or `local-dir` folder; a
    transformers checkpoint folder). `text_tower=False` drops the CLIP text tower (the VLM never
    uses it).
    """
    spec = get_encoder_spec(encoder_id)
    if spec.kind == "open_clip":
        model, name = _load_open_clip(spec, path)
        tower: VisionTower = OpenClipTower(spec, model, name, text_tower)
    elif spec.kind == "hf_dinov2":
        from transformers import Dinov2Model

        if path is not None:
            source = str(path)
        elif spec.hub_id is not None:
            source = spec.hub_id
        elif spec.builder is not None:
            source = str(tiny_checkpoint_dir(spec.id, spec.builder))
        else:
            raise ValueError(f"encoder {encoder_id!r} has neither a hub_id nor a builder; pass path=")
        tower = Dinov2Tower(spec, Dinov2Model.from_pretrained(source))
    else:
        raise ValueError(
            f"encoder {encoder_id!r}: unknown kind {spec.kind!r}; supported: open_clip, hf_dinov2"
        )
    return tower.to(dtype)

"""Vision towers: the frozen encoders that turn images into per-patch features (loaded by encoder_loading)."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from core.models.vision import ENCODERS, EncoderSpec

if TYPE_CHECKING:
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import VisionTransformer
    from transformers import (
        CLIPModel,
        CLIPVisionModel,
        Dinov2Model,
        PreTrainedModel,
        SiglipModel,
        SiglipVisionModel,
    )

    from core.models.tokenizer import Tokenizer


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
        if features.shape[-1] != self.spec.joint_dim:  # labels are scored against words in this space
            raise ValueError(
                f"encoder {self.spec.id!r} produced joint features of width {features.shape[-1]}, spec says "
                f"joint_dim={self.spec.joint_dim}; fix the registry entry"
            )
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
            reason = self._no_text_reason()
            raise ValueError(
                f"{what}: encoder {self.spec.id!r} {reason}; use an encoder with a text tower "
                f"(e.g. {[k for k, v in ENCODERS.items() if v.has_text_tower]}) and transfer its labels"
            )

    @property
    def has_text_tower(self) -> bool:
        return False

    def _no_text_reason(self) -> str:
        return "has no text tower" if not self.spec.has_text_tower else "was loaded with text_tower=False"

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
        self.visual: VisionTransformer = visual
        self.num_blocks = len(visual.transformer.resblocks)
        self.block_index = _block_index(spec, self.num_blocks)
        self.model_name = model_name
        self.text_model: CLIP | CustomTextCLIP | None = None
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
        if self.text_model is None:  # callers check _require_text first
            raise ValueError(f"encode_text: encoder {self.spec.id!r} {self._no_text_reason()}")
        return self.text_model.encode_text(tokens)

    @cached_property
    def _open_clip_tokenizer(self) -> Any:
        # Built once per tower: open_clip's get_tokenizer reads and indexes its BPE vocabulary at every call,
        # which dominated encoding a 4M-word list (4,000 calls).
        import open_clip

        return open_clip.get_tokenizer(self.model_name)

    def _tokenize(self, words: list[str]) -> torch.Tensor:
        return self._open_clip_tokenizer(words)


def _hidden_state_features(
    tower: VisionTower, model: PreTrainedModel, pixel_values: torch.Tensor
) -> torch.Tensor:
    """Hidden state `spec.feature_layer` of a transformers vision model, prefix tokens dropped."""
    spec = tower.spec
    hidden = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    num_blocks = model.config.num_hidden_layers
    if len(hidden) != num_blocks + 1:
        raise RuntimeError(
            f"encoder {spec.id!r}: expected {num_blocks + 1} hidden states "
            f"(embeddings + one per block), got {len(hidden)}"
        )
    return hidden[spec.feature_layer][:, spec.num_prefix_tokens :]


class Dinov2Tower(VisionTower):
    """A transformers DINOv2 model (no text tower)."""

    def __init__(self, spec: EncoderSpec, model: Dinov2Model) -> None:
        super().__init__(spec)
        self.model = model
        self.num_blocks = model.config.num_hidden_layers
        _block_index(spec, self.num_blocks)
        self.freeze()

    def _layer_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _hidden_state_features(self, self.model, pixel_values)


class HfDualTower(VisionTower):
    """A transformers image-text dual encoder (CLIP, SigLIP), held as the vision model alone or whole.

    `model` is the full dual model (`CLIPModel`, `SiglipModel`: text tower kept) or its vision half
    (`CLIPVisionModel`, `SiglipVisionModel`). `source` is the checkpoint its tokenizer is read from
    (None for meta-device builds); `no_text_reason` says why a tower without text has none.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        model: PreTrainedModel,
        *,
        source: str | None,
        no_text_reason: str | None = None,
    ) -> None:
        super().__init__(spec)
        self.model = model
        self.source = source
        self._with_text = hasattr(model, "text_model")
        self._why_no_text = no_text_reason
        self._tokenizer: Tokenizer | None = None
        self.num_blocks = self.vision_model.config.num_hidden_layers
        _block_index(spec, self.num_blocks)
        self.freeze()

    @property
    def vision_model(self) -> PreTrainedModel:
        # A property, not a second attribute: the vision half is registered once, under `model`.
        return self.dual_model.vision_model if self._with_text else self.model

    @property
    def dual_model(self) -> CLIPModel | SiglipModel:
        """`model` as the whole dual encoder; only meaningful while `has_text_tower`."""
        return cast("CLIPModel | SiglipModel", self.model)

    @property
    def has_text_tower(self) -> bool:
        return self._with_text

    def _no_text_reason(self) -> str:
        return self._why_no_text or super()._no_text_reason()

    def _layer_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _hidden_state_features(self, self.vision_model, pixel_values)

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.dual_model.get_text_features(input_ids=tokens).pooler_output

    def _tokenize(self, words: list[str]) -> torch.Tensor:
        if self._tokenizer is None:
            if self.source is None:
                raise ValueError(
                    f"encoder {self.spec.id!r} was built without a checkpoint (meta device), so it has "
                    "no tokenizer; load it with load_encoder"
                )
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.source)
            except (OSError, ValueError, ImportError) as err:
                raise RuntimeError(
                    f"encoder {self.spec.id!r}: cannot load the text tokenizer from {self.source} ({err}); "
                    "SigLIP's tokenizer needs the sentencepiece package"
                ) from err
        # Pad to the full context: SigLIP pools the last position and was trained that way; for
        # CLIP (causal, pooled at end-of-text) the padding does not change the result.
        length = self.dual_model.text_model.config.max_position_embeddings
        return self._tokenizer(
            words, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        ).input_ids


class HfClipTower(HfDualTower):
    """transformers CLIP the LLaVA way: `hidden_states[-2]` of `CLIPVisionModel`, CLS dropped."""

    def _joint_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vision = cast("CLIPVisionModel", self.vision_model)
        last = vision(pixel_values=pixel_values).last_hidden_state[:, self.spec.num_prefix_tokens :]
        # The pooled image embedding is visual_projection(post_layernorm(CLS)); patches go the same way.
        return cast("CLIPModel", self.model).visual_projection(vision.post_layernorm(last))


class HfSiglipTower(HfDualTower):
    """transformers SigLIP: no CLS token, so every token of `hidden_states[-2]` is a patch."""

    def _joint_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vision = cast("SiglipVisionModel", self.vision_model)
        last = vision(pixel_values=pixel_values).last_hidden_state  # post_layernorm already applied
        batch, m, width = last.shape
        # SigLIP pools with an attention head (MAP), not a projection. Each patch goes through that
        # head as a one-token sequence: attention over a single key is the identity weighting, so
        # the patch gets exactly the map that gives the pooled image embedding its place in the
        # joint space (value and output projections, then the head's residual MLP).
        pooled = vision.head(last.reshape(batch * m, 1, width))
        return pooled.reshape(batch, m, -1)


def _block_index(spec: EncoderSpec, num_blocks: int) -> int:
    """0-based index of the block whose output is hidden state `spec.feature_layer`."""
    hidden = spec.feature_layer + num_blocks + 1 if spec.feature_layer < 0 else spec.feature_layer
    if not 1 <= hidden <= num_blocks:
        raise ValueError(
            f"encoder {spec.id!r}: feature_layer={spec.feature_layer} is outside the {num_blocks} blocks "
            f"(use -1..-{num_blocks} or 1..{num_blocks})"
        )
    return hidden - 1

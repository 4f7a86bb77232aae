"""The composed VLM: vision tower -> adapter -> visual tokens spliced into the LLM's input embeddings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import nn
from transformers import PreTrainedModel

from core.models.adapter import build_adapter
from core.models.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from core.models.encoder_loading import load_encoder
from core.models.llm import get_llm_spec, input_embeddings, load_llm
from core.models.towers import VisionTower

if TYPE_CHECKING:
    from transformers import GenerationMixin

    from core.models.tokenizer import Tokenizer
    from core.train.precision import ModuleDtypes


@dataclass
class SplicedInputs:
    """The LLM-side inputs after the visual tokens replaced each sample's image placeholder."""

    inputs_embeds: torch.Tensor  # [B, L', D]
    attention_mask: torch.Tensor  # [B, L'] long, 1 = real token
    labels: torch.Tensor | None  # [B, L'], IGNORE_INDEX on visual tokens and padding
    visual_tokens: torch.Tensor | None  # [B, m, D] adapter output; None when the batch has no pixels
    visual_positions: torch.Tensor  # [B, m] index in the spliced sequence, -1 = no image / truncated


@dataclass
class VLMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor | None  # None when the loss was computed on supervised positions only
    visual_tokens: torch.Tensor | None
    visual_positions: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class VLM(nn.Module):
    """LLaVA-style composition of a frozen-by-default vision tower, an adapter and a causal LM."""

    def __init__(
        self,
        vision: VisionTower,
        adapter: nn.Module,
        llm: PreTrainedModel,
        *,
        max_length: int,
        adapter_name: str,
    ) -> None:
        super().__init__()
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.vision = vision
        self.adapter = adapter
        self.llm = llm
        self.max_length = max_length
        self.adapter_name = adapter_name
        # Called with the spliced inputs before the LLM runs, so a training objective can see where the
        # visual tokens sit while the forward happens (BASIC's shallow-layer capture); empty by default.
        self.splice_hooks: list[Callable[[SplicedInputs], None]] = []

    @property
    def num_visual_tokens(self) -> int:
        return self.vision.spec.num_patches

    def input_embeddings(self) -> nn.Embedding:
        """The LLM's token embedding table (core.models.llm.input_embeddings)."""
        return input_embeddings(self.llm)

    def encode_images(self, pixel_values: torch.Tensor, *, detach_features: bool = False) -> torch.Tensor:
        """Visual tokens `[B, m, D]`: adapter applied to the tower's patch features (computed without
        gradient when `detach_features`, so a loss on the tokens reaches the adapter only)."""
        if detach_features:
            with torch.no_grad():
                features = self.vision(pixel_values)
        else:
            features = self.vision(pixel_values)
        adapter_dtype = next(self.adapter.parameters()).dtype
        tokens = self.adapter(features.to(adapter_dtype))
        return tokens.to(self.input_embeddings().weight.dtype)

    def splice(
        self, batch: Mapping[str, Any], *, padding_side: Literal["right", "left"] = "right"
    ) -> SplicedInputs:
        """Replace each sample's IMAGE_TOKEN_INDEX by its m visual tokens, truncate, re-pad.

        Truncation to `max_length` happens after the splice, as in LLaVA; `padding_side="left"`
        is for batched generation.
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        input_ids, attention_mask, labels, pixel_values, has_image = _check_batch(batch)
        batch_size = input_ids.shape[0]
        m = self.num_visual_tokens
        device = self.input_embeddings().weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        labels = labels.to(device) if labels is not None else None

        visual = self.encode_images(pixel_values) if pixel_values is not None else None
        # The placeholder's own embedding is looked up (as id 0) and then discarded.
        embeds = self.input_embeddings()(input_ids.clamp(min=0))
        is_image = input_ids == IMAGE_TOKEN_INDEX

        seq_embeds: list[torch.Tensor] = []
        seq_labels: list[torch.Tensor | None] = []
        positions = torch.full((batch_size, m), -1, dtype=torch.long, device=device)
        for i in range(batch_size):
            keep = attention_mask[i].bool()
            emb, lab, p = _splice_row(
                i,
                embeds[i][keep],
                labels[i][keep] if labels is not None else None,
                is_image[i][keep],
                visual,
                bool(has_image[i]),
                m,
            )
            if p is not None:
                positions[i] = torch.arange(p, p + m, device=device)
            seq_embeds.append(emb[: self.max_length])
            seq_labels.append(lab[: self.max_length] if lab is not None else None)
        out_embeds, out_mask, out_labels = _pad(embeds, seq_embeds, seq_labels, positions, padding_side)
        return SplicedInputs(out_embeds, out_mask, out_labels, visual, positions)

    def forward(
        self, batch: Mapping[str, Any], *, output_hidden_states: bool = False, logits: bool = True
    ) -> VLMOutput:
        """`logits=False` (training) computes the LM loss on the supervised positions only, in chunks
        (core.models.lm_loss), and returns no logits; True runs the LLM's own head over every position."""
        spliced = self.splice(batch)
        for hook in self.splice_hooks:
            hook(spliced)
        if not logits and spliced.labels is not None:
            return self._supervised_forward(spliced, spliced.labels, output_hidden_states)
        out = self.llm(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            labels=spliced.labels,
            output_hidden_states=output_hidden_states,
            use_cache=False,
        )
        return VLMOutput(
            loss=out.loss,
            logits=out.logits,
            visual_tokens=spliced.visual_tokens,
            visual_positions=spliced.visual_positions,
            attention_mask=spliced.attention_mask,
            labels=spliced.labels,
            hidden_states=tuple(out.hidden_states) if output_hidden_states else None,
        )

    def _supervised_forward(
        self, spliced: SplicedInputs, labels: torch.Tensor, output_hidden_states: bool
    ) -> VLMOutput:
        from core.models.lm_loss import supervised_lm_loss

        out = self.llm.get_decoder()(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            output_hidden_states=output_hidden_states,
            use_cache=False,
        )
        softcap = getattr(self.llm.config, "final_logit_softcapping", None)
        loss = supervised_lm_loss(
            self.llm.get_output_embeddings(), out.last_hidden_state, labels, softcap=softcap
        )
        return VLMOutput(
            loss=loss,
            logits=None,
            visual_tokens=spliced.visual_tokens,
            visual_positions=spliced.visual_positions,
            attention_mask=spliced.attention_mask,
            labels=spliced.labels,
            hidden_states=tuple(out.hidden_states) if output_hidden_states else None,
        )

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], **generate_kwargs: Any) -> torch.Tensor:
        """New token ids `[B, n_new]` for a batch of prompts (spliced and left-padded)."""
        spliced = self.splice({k: v for k, v in batch.items() if k != "labels"}, padding_side="left")
        # Every registry LLM is an `AutoModelForCausalLM`, which generates; `PreTrainedModel` itself does not.
        # transformers' stubs: `generate` is wrapped in torch.no_grad() and annotates `self` with a Protocol,
        # which mypy reads as a second `self` parameter ("Invalid self argument").
        out = cast("GenerationMixin", self.llm).generate(  # type: ignore[misc]
            inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, **generate_kwargs
        )
        if not isinstance(out, torch.Tensor):
            raise ValueError("VLM.generate returns token ids only; do not pass return_dict_in_generate=True")
        return out

    def named_trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]

    def freeze_for_stage1(self) -> VLM:
        """Alignment pretraining: only the adapter trains."""
        self.vision.freeze()
        self.llm.requires_grad_(False)
        self.adapter.requires_grad_(True)
        return self

    def freeze_for_stage2(self, *, train_vision: bool = False) -> VLM:
        """Instruction tuning: adapter and LLM train; the vision tower only when asked."""
        if train_vision:
            self.vision.unfreeze()
        else:
            self.vision.freeze()
        self.llm.requires_grad_(True)
        self.adapter.requires_grad_(True)
        return self


def _splice_row(
    i: int,
    emb: torch.Tensor,
    lab: torch.Tensor | None,
    is_image: torch.Tensor,
    visual: torch.Tensor | None,
    has_image: bool,
    m: int,
) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    """Sample ``i``'s unpadded embeddings and labels with its image token replaced by its ``m`` visual
    tokens, and the position of the first (None without an image)."""
    if emb.shape[0] == 0:
        raise ValueError(f"sample {i} has no tokens (attention_mask is all zero)")
    if has_image:
        if visual is None:  # _check_batch guarantees pixel_values for image rows
            raise ValueError(f"sample {i} has an image token but the batch has no pixel_values")
        where = is_image.nonzero().flatten()
        if where.numel() != 1:
            raise ValueError(
                f"sample {i}: the image token {IMAGE_TOKEN_INDEX} lies under attention_mask == 0; "
                "it must be a real (unpadded) position"
            )
        p = int(where[0])
        emb = torch.cat([emb[:p], visual[i], emb[p + 1 :]])
        if lab is not None:
            ignored = lab.new_full((m,), IGNORE_INDEX)
            lab = torch.cat([lab[:p], ignored, lab[p + 1 :]])
        return emb, lab, p
    if visual is not None:
        # An empty slice keeps the adapter in the graph for image-less rows, so data-parallel
        # ranks see the same parameters used (LLaVA does the same).
        emb = torch.cat([emb, visual[i, :0]])
    return emb, lab, None


def _pad(
    embeds: torch.Tensor,
    seq_embeds: list[torch.Tensor],
    seq_labels: list[torch.Tensor | None],
    positions: torch.Tensor,
    padding_side: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(embeddings, attention mask, labels) padded to the longest row; ``positions`` shifted in place
    to the padded rows (-1 where the visual token was truncated away); ``embeds`` gives dtype and width."""
    batch_size, device = len(seq_embeds), positions.device
    lengths = [e.shape[0] for e in seq_embeds]
    width = max(lengths)
    out_embeds = embeds.new_zeros((batch_size, width, embeds.shape[-1]))
    out_mask = torch.zeros((batch_size, width), dtype=torch.long, device=device)
    has_labels = any(lab is not None for lab in seq_labels)
    out_labels = (
        torch.full((batch_size, width), IGNORE_INDEX, dtype=torch.long, device=device) if has_labels else None
    )
    for i, (emb, lab, n) in enumerate(zip(seq_embeds, seq_labels, lengths, strict=True)):
        start = width - n if padding_side == "left" else 0
        out_embeds[i, start : start + n] = emb
        out_mask[i, start : start + n] = 1
        if out_labels is not None and lab is not None:
            out_labels[i, start : start + n] = lab
        row = positions[i]
        positions[i] = torch.where((row >= 0) & (row < n), row + start, torch.full_like(row, -1))
    return out_embeds, out_mask, out_labels


def _check_batch(
    batch: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Validate the collate output and fill the optional keys (attention_mask, has_image)."""
    input_ids = batch.get("input_ids")
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.dtype != torch.long:
        got = (
            (tuple(input_ids.shape), input_ids.dtype)
            if isinstance(input_ids, torch.Tensor)
            else type(input_ids)
        )
        raise ValueError(f"batch['input_ids'] must be a LongTensor [B, L], got {got}")
    shape = tuple(input_ids.shape)
    attention_mask = batch.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    labels = batch.get("labels")
    for key, value in (("attention_mask", attention_mask), ("labels", labels)):
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(
                f"batch[{key!r}] has shape {tuple(value.shape)}, input_ids has {shape}; they must match"
            )
    n_image_tokens = (input_ids == IMAGE_TOKEN_INDEX).sum(dim=1)
    has_image = batch.get("has_image")
    if has_image is None:
        has_image = n_image_tokens > 0
    has_image = has_image.to(device=input_ids.device, dtype=torch.bool)
    if tuple(has_image.shape) != shape[:1]:
        raise ValueError(f"batch['has_image'] has shape {tuple(has_image.shape)}, expected [{shape[0]}]")
    if not torch.equal(n_image_tokens, has_image.long()):
        raise ValueError(
            f"each sample needs exactly one image token ({IMAGE_TOKEN_INDEX}) if has_image, none otherwise; "
            f"image tokens per sample {n_image_tokens.tolist()}, has_image {has_image.tolist()}"
        )
    pixel_values = batch.get("pixel_values")
    if pixel_values is None and bool(has_image.any()):
        raise ValueError("batch has samples with has_image=True but no pixel_values")
    if pixel_values is not None and pixel_values.shape[0] != shape[0]:
        raise ValueError(
            f"batch['pixel_values'] has {pixel_values.shape[0]} rows, input_ids {shape[0]}: one row per sample "
            "(rows of image-less samples are ignored)"
        )
    return input_ids, attention_mask, labels, pixel_values, has_image


def build_vlm(
    llm_id: str,
    encoder_id: str,
    adapter: str = "mlp2x_gelu",
    *,
    llm_path: str | Path | None = None,
    encoder_path: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    dtypes: ModuleDtypes | None = None,
    zero3_config: Mapping[str, Any] | None = None,
) -> tuple[VLM, Tokenizer]:
    """Load the LLM and the encoder (no text tower), add a fresh adapter.

    Everything in `dtype`, unless `dtypes` (a core.train.precision.ModuleDtypes) gives each part its own;
    each part is loaded straight into its dtype. `zero3_config` partitions the LLM across the ranks as it
    is built (core.models.llm.load_llm).
    """
    llm_dtype, vision_dtype, adapter_dtype = (
        (dtypes.llm, dtypes.vision, dtypes.adapter) if dtypes is not None else (dtype, dtype, dtype)
    )
    llm, tokenizer = load_llm(llm_id, path=llm_path, dtype=llm_dtype, zero3_config=zero3_config)
    vision = load_encoder(encoder_id, path=encoder_path, text_tower=False, dtype=vision_dtype)
    d_llm = input_embeddings(llm).embedding_dim
    module = build_adapter(adapter, vision.spec.feature_dim, d_llm).to(adapter_dtype)
    vlm = VLM(vision, module, llm, max_length=get_llm_spec(llm_id).max_length, adapter_name=adapter)
    return vlm, tokenizer

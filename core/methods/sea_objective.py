"""SEA in a training step: sample (patch, label) pairs, align visual tokens with label embeddings (Eq. 13)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from core.config import SeaConfig
from core.config.methods import SEA
from core.methods.objective import Objective
from core.sea import LabelRows, sample_pairs, sea_alignment_loss

ALIGN, TAU, PAIRS = SEA.metrics


class SeaObjective(Objective):
    """L = L_g + lambda * L_a with tau = exp(log_tau) learnable (REFERENCE.md 2.3-2.8)."""

    needs_labels = True
    # Buffers (register_buffer below), declared so that they read as tensors, not nn.Module attributes.
    label_rows: Tensor
    label_ids: Tensor

    def __init__(
        self, cfg: SeaConfig, *, word_embeddings: Tensor | LabelRows, grid: tuple[int, int], seed: int
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = grid
        # In stage 1 the LLM is frozen, so the label embeddings (Eq. 10) are constants computed once: only
        # the rows of the words the label store uses (a full 4M-word table is 65 GB at 7B in float32).
        rows = (
            word_embeddings
            if isinstance(word_embeddings, LabelRows)
            else LabelRows(torch.arange(len(word_embeddings)), word_embeddings)
        )
        self.register_buffer("label_rows", rows.rows.detach(), persistent=False)
        self.register_buffer("label_ids", rows.word_ids, persistent=False)
        # Shape [1], not a scalar: DeepSpeed cannot broadcast 0-dim parameters.
        self.log_tau = nn.Parameter(torch.tensor([math.log(cfg.tau_init)]), requires_grad=cfg.learn_tau)
        self.generator = torch.Generator().manual_seed(seed)

    def extra_loss(self, batch: dict[str, Any], out: Any) -> tuple[Tensor | None, dict[str, float]]:
        if out.visual_tokens is None:
            return None, {}
        b, p, label = sample_pairs(
            batch["label_index"], batch["label_score"], self.grid, self.cfg.window, self.generator
        )
        visual = out.visual_tokens[b.to(out.visual_tokens.device), p.to(out.visual_tokens.device)]
        # Every id a batch samples came from the store the rows were built for: no per-step check (a sync).
        rows = LabelRows(self.label_ids, self.label_rows)
        text = rows.lookup(label.to(self.label_ids.device), check=False).to(visual.device, visual.dtype)
        tau = self.log_tau.exp().squeeze(0)
        align = sea_alignment_loss(visual, text, tau)
        metrics = {ALIGN: float(align.detach()), TAU: float(tau.detach()), PAIRS: float(b.numel())}
        return self.cfg.align_weight * align, metrics

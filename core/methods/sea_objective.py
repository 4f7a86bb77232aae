"""SEA in a training step: sample (patch, label) pairs, align visual tokens with label embeddings (Eq. 13)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from core.methods.objective import Objective
from core.sea import sample_pairs, sea_alignment_loss


class SeaObjective(Objective):
    """L = L_g + lambda * L_a with tau = exp(log_tau) learnable (REFERENCE.md 2.3-2.8)."""

    needs_labels = True

    def __init__(self, cfg: Any, *, word_embeddings: Tensor, grid: tuple[int, int], seed: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.grid = grid
        # In stage 1 the LLM is frozen, so the label embeddings (Eq. 10) are constants computed once.
        self.register_buffer("word_embeddings", word_embeddings.detach(), persistent=False)
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
        text = self.word_embeddings[label.to(self.word_embeddings.device)].to(visual.device, visual.dtype)
        tau = self.log_tau.exp().squeeze(0)
        align = sea_alignment_loss(visual, text, tau)
        metrics = {"loss/align": float(align.detach()), "tau": float(tau.detach()), "pairs": float(b.numel())}
        return self.cfg.align_weight * align, metrics

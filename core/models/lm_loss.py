"""The language-modelling loss on supervised positions only, in chunks: no [B, L, vocab] logits tensor.

HF's causal-LM forward materialises fp32 logits over every position (gemma's 256K vocabulary: ~13 GB
for a micro-batch of 16 x 800 tokens, about 3x that with log-softmax and its gradient), although only
the answer tokens carry a label. Here the LM head runs on the supervised positions alone, `chunk` rows at
a time, each chunk recomputed in backward (activation checkpointing), so the peak is one chunk's logits:
chunk x vocab x 4 bytes x ~3 (e.g. 4096 x 256K: 12 GB -> pass a smaller chunk for such vocabularies;
the default is sized from the vocabulary, see `default_chunk`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from core.models.constants import IGNORE_INDEX, default_chunk


def _chunk_loss(head: nn.Module, softcap: float | None, hidden: Tensor, targets: Tensor) -> Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


def supervised_lm_loss(
    head: nn.Module,
    hidden: Tensor,
    labels: Tensor,
    *,
    softcap: float | None = None,
    chunk: int | None = None,
) -> Tensor:
    """Mean next-token cross-entropy over the positions whose label is not IGNORE_INDEX, as HF's
    `ForCausalLMLoss` computes it (position t predicts token t + 1; logits in fp32; `softcap` is Gemma-2's
    final logit soft-capping), from the decoder's last hidden states `[B, L, D]` and `labels` `[B, L]`."""
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    rows, ys = hidden[:, :-1][keep], targets[keep]
    count = ys.numel()
    if count == 0:
        # Nothing supervised: a zero that still reaches every trainable weight (ranks stay in step).
        return hidden.sum() * 0.0
    weight = getattr(
        head, "weight", None
    )  # the vocabulary size sizes the chunk; 32000 for a head without one
    size = chunk or default_chunk(weight.shape[0] if isinstance(weight, Tensor) else 32000)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, size):
        part = (rows[start : start + size], ys[start : start + size])
        if torch.is_grad_enabled() and rows.requires_grad:
            total = total + checkpoint(_chunk_loss, head, softcap, *part, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, softcap, *part)
    return total / count

"""Embedding-space diagnostics (REFERENCE.md section 5): nearest word, modality gap, TACS, label recall."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_SIZE = 8192


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # bf16/fp16 cosines are too coarse to rank 32k words; float64 inputs keep float64.
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_visual_vocab(visual: torch.Tensor, vocab: torch.Tensor, chunk_size: int) -> None:
    if visual.dim() < 2:
        raise ValueError(f"visual must have shape [..., m, D]; got shape {tuple(visual.shape)}")
    if vocab.dim() != 2:
        raise ValueError(f"vocab must have shape [q, D]; got shape {tuple(vocab.shape)}")
    if vocab.shape[0] == 0:
        raise ValueError("vocab is empty (q = 0); pass at least one word embedding")
    if visual.shape[-1] != vocab.shape[-1]:
        raise ValueError(
            f"visual last dim {visual.shape[-1]} != vocab dim {vocab.shape[-1]}; "
            "both must live in the LLM input-embedding space"
        )
    if visual.device != vocab.device:
        raise ValueError(f"visual is on {visual.device} but vocab on {vocab.device}; move them together")
    if not visual.is_floating_point() or not vocab.is_floating_point():
        raise ValueError(f"visual and vocab must be floating point; got {visual.dtype} and {vocab.dtype}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")


@torch.no_grad()
def nearest_words(
    visual: torch.Tensor, vocab: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each visual token, the vocab row of highest cosine similarity (SEA Eq. 4) and that similarity.

    visual `[..., m, D]`, vocab `[q, D]` -> (index int64 `[..., m]`, sim `[..., m]`). The vocabulary is
    processed `chunk_size` rows at a time with a running maximum, so memory is `O(tokens * chunk_size)`.
    Ties go to the lowest vocab index (a later chunk must be strictly better to win). A zero vector has
    cosine 0 with everything (`F.normalize` clamps its norm) rather than NaN. The index refers to the
    row order of `vocab`, so label recall needs the same word list in the same order.
    """
    _check_visual_vocab(visual, vocab, chunk_size)
    dtype = _compute_dtype(visual, vocab)
    lead = visual.shape[:-1]
    x = F.normalize(visual.reshape(-1, visual.shape[-1]).to(dtype), dim=-1)
    best_sim = torch.full((x.shape[0],), -math.inf, dtype=dtype, device=x.device)
    best_idx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, vocab.shape[0], chunk_size):
        w = F.normalize(vocab[start : start + chunk_size].to(dtype), dim=-1)
        sim, idx = (x @ w.T).max(dim=-1)
        better = sim > best_sim
        best_sim = torch.where(better, sim, best_sim)
        best_idx = torch.where(better, idx + start, best_idx)
    return best_idx.reshape(lead), best_sim.reshape(lead)


@torch.no_grad()
def nearest_word_distance(
    visual: torch.Tensor, vocab: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Per visual token, `min_w || x_j - Psi(w) ||_2` (the summand of SEA Eq. 5): `[..., m]`.

    The nearest row is found with the matmul expansion `|x|^2 + |w|^2 - 2 x.w` (fast, chunked), then the
    distance to that row is recomputed directly from `x - w`, so the reported value carries no
    cancellation error; only a near-tie between two rows can be resolved either way.
    """
    _check_visual_vocab(visual, vocab, chunk_size)
    dtype = _compute_dtype(visual, vocab)
    lead = visual.shape[:-1]
    x = visual.reshape(-1, visual.shape[-1]).to(dtype)
    x_sq = (x * x).sum(-1)
    best = torch.full((x.shape[0],), math.inf, dtype=dtype, device=x.device)
    best_idx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, vocab.shape[0], chunk_size):
        w = vocab[start : start + chunk_size].to(dtype)
        d2 = x_sq[:, None] + (w * w).sum(-1)[None, :] - 2.0 * (x @ w.T)
        d2_min, idx = d2.min(dim=-1)
        better = d2_min < best
        best = torch.where(better, d2_min, best)
        best_idx = torch.where(better, idx + start, best_idx)
    nearest = vocab.index_select(0, best_idx).to(dtype)
    return torch.linalg.vector_norm(x - nearest, dim=-1).reshape(lead)


def modality_gap(visual: torch.Tensor, vocab: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """SEA Eq. 5: `D = mean_j min_w || x_j - Psi(w) ||_2` over every visual token given (`[..., m, D]`).

    To aggregate over several batches, sum `nearest_word_distance` and count tokens instead of averaging
    per-batch gaps (batches of unequal size would be mis-weighted).
    """
    dist = nearest_word_distance(visual, vocab, chunk_size)
    if dist.numel() == 0:
        raise ValueError(f"visual holds no tokens (shape {tuple(visual.shape)}); the gap is undefined")
    return float(dist.mean())


@torch.no_grad()
def tacs(
    visual: torch.Tensor, text: torch.Tensor, k: int = 10, text_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Token Alignment Consistency Score per image (SEA Eq. 14/17): `[B]`.

    For each visual token, the highest cosine similarity to any (unmasked) text token of the paired
    caption; the score is the mean of the `k` highest of those maxima. With fewer than `k` visual tokens
    (m < k) all m are averaged. `text_mask` `[B, n]` is True for real tokens; padded ones never count.
    The paper's number is the mean of this over the evaluation images (the caller averages).
    """
    if visual.dim() != 3 or text.dim() != 3:
        raise ValueError(
            f"visual must be [B, m, D] and text [B, n, D]; got {tuple(visual.shape)} and {tuple(text.shape)}"
        )
    if visual.shape[0] != text.shape[0] or visual.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"visual {tuple(visual.shape)} and text {tuple(text.shape)} must agree on batch size B and dim D"
        )
    if visual.shape[1] == 0 or text.shape[1] == 0:
        raise ValueError(
            f"need m >= 1 visual and n >= 1 text tokens; got m={visual.shape[1]}, n={text.shape[1]}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    dtype = _compute_dtype(visual, text)
    v = F.normalize(visual.to(dtype), dim=-1)
    t = F.normalize(text.to(dtype), dim=-1)
    sim = v @ t.transpose(1, 2)  # [B, m, n]
    if text_mask is not None:
        if text_mask.shape != text.shape[:2] or text_mask.dtype != torch.bool:
            raise ValueError(
                f"text_mask must be a bool tensor of shape {tuple(text.shape[:2])} (True = real token); "
                f"got {text_mask.dtype} {tuple(text_mask.shape)}"
            )
        empty = ~text_mask.any(dim=1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten().tolist()
            raise ValueError(
                f"text_mask masks every text token of batch rows {rows}; TACS is undefined there"
            )
        sim = sim.masked_fill(~text_mask[:, None, :].to(sim.device), -math.inf)
    best_per_visual = sim.max(dim=-1).values  # [B, m]
    top = best_per_visual.topk(min(k, best_per_visual.shape[1]), dim=-1).values
    return top.mean(dim=-1)


@dataclass(frozen=True)
class LabelRecallCounts:
    """Hits and labelled visual tokens behind label recall@1; add counts across batches, then `.recall`."""

    hits: int
    labelled: int

    def __add__(self, other: LabelRecallCounts) -> LabelRecallCounts:
        return LabelRecallCounts(self.hits + other.hits, self.labelled + other.labelled)

    @property
    def recall(self) -> float:
        if self.labelled == 0:
            raise ValueError("no visual token has a semantic label; label recall@1 is undefined")
        return self.hits / self.labelled


@torch.no_grad()
def label_recall_counts(nearest: torch.Tensor, label_index: torch.Tensor) -> LabelRecallCounts:
    """Count visual tokens whose nearest word is among their labels, and tokens with at least one label.

    nearest `[B, m]` word ids (from `nearest_words` over the label word list), label_index `[B, m, n]`
    (-1 = empty slot). Tokens without any label are left out of both counts.
    """
    if label_index.dim() != 3 or nearest.shape != label_index.shape[:2]:
        raise ValueError(
            f"nearest must be [B, m] and label_index [B, m, n] with matching B, m; "
            f"got {tuple(nearest.shape)} and {tuple(label_index.shape)}"
        )
    if nearest.is_floating_point() or label_index.is_floating_point():
        raise ValueError(
            f"nearest and label_index must be integer ids; got {nearest.dtype}, {label_index.dtype}"
        )
    if nearest.numel() and int(nearest.min()) < 0:
        raise ValueError("nearest holds negative word ids; -1 is reserved for empty label slots")
    valid = label_index >= 0
    labelled = valid.any(dim=-1)
    hit = ((label_index == nearest.to(label_index.device)[..., None]) & valid).any(dim=-1)
    return LabelRecallCounts(hits=int((hit & labelled).sum()), labelled=int(labelled.sum()))


def label_recall_at1(nearest: torch.Tensor, label_index: torch.Tensor) -> float:
    """Fraction of labelled visual tokens whose nearest word is one of the patch's semantic labels.

    Only tokens with at least one label are in the denominator; raises ValueError when there are none.
    """
    return label_recall_counts(nearest, label_index).recall


# ---------------------------------------------------------------------------------------------------------
# POPE (REFERENCE.md section 6; LLaVA's llava/eval/eval_pope.py)

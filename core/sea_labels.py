"""SEA's patch labels as pure tensor functions: top-n extraction (Eqs. 6-8) and grid transfer (REFERENCE 2.1-2.2).

The label-array convention of core/sea.py holds: ``index`` int64 ``[..., m, n]``, ``score`` float32
``[..., m, n]``, slots sorted by score descending (ties: lower word index first), only scores > 0 kept,
empty slots ``index = -1, score = 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["extract_labels", "transfer_labels"]

_LOW32 = 0xFFFFFFFF
_TWO32 = 1 << 32
_MAX_WORDS = 1 << 32  # the word index lives in the low 32 bits of a ranking key


def acc_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everywhere else accumulate in float64 so sums and CDFs are not the weak link.
    return torch.float32 if device.type == "mps" else torch.float64


def check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_grid(name: str, grid: Sequence[int], m: int | None = None) -> tuple[int, int]:
    if len(grid) != 2:
        raise ValueError(f"{name} must be (h, w), got {grid!r}")
    h, w = (check_int(f"{name}[{i}]", int(v) if isinstance(v, Tensor) else v, 1) for i, v in enumerate(grid))
    if m is not None and h * w != m:
        raise ValueError(
            f"{name}={tuple(grid)} has {h * w} patches but the labels have m={m} patches per image; "
            "pass the grid the labels were computed on (row-major, m = h * w)"
        )
    return h, w


def check_labels(index: Tensor, score: Tensor, dims: tuple[int, ...]) -> None:
    if index.dim() not in dims:
        raise ValueError(
            f"index must have {' or '.join(map(str, dims))} dims, got shape {tuple(index.shape)}"
        )
    if index.shape != score.shape:
        raise ValueError(
            f"index and score must have the same shape, got {tuple(index.shape)} and {tuple(score.shape)}"
        )
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise ValueError(f"index must be an integer tensor (word ids, -1 = empty), got dtype {index.dtype}")
    if not score.dtype.is_floating_point:
        raise ValueError(f"score must be a floating-point tensor, got dtype {score.dtype}")


# --- ranking keys: (score desc, word index asc) as one int64, so top-k is exact and tie-deterministic ---


def ranking_keys(scores: Tensor, words: Tensor) -> Tensor:
    """int64 keys ordering float32 ``scores`` by score, then by lower word index (``words``, < 2**32)."""
    bits = scores.contiguous().view(torch.int32).to(torch.int64)
    # IEEE-754 bit patterns sort like sign-magnitude integers; flipping the magnitude of negatives makes
    # them sort like the floats they encode.
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits * _TWO32 + (_LOW32 - words)


def decode_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    words = _LOW32 - (keys & _LOW32)
    bits = keys >> 32  # arithmetic shift: exact floor division by 2**32
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return words, bits.to(torch.int32).view(torch.float32)


def extract_labels(
    patch_features: Tensor,
    word_features: Tensor,
    top_n: int = 10,
    negate: bool = True,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-n semantic labels per patch (REFERENCE.md 2.1; SEA Eqs. 6-8).

    Args:
        patch_features: ``[B, m, d]`` patch features in the joint image-text space (L2-normalised here).
        word_features: ``[q, d]`` word features from the paired text tower (L2-normalised here). May live
            on another device than ``patch_features`` (e.g. a 4M-word list kept on CPU): each chunk is
            moved to the patches' device.
        top_n: labels kept per patch.
        negate: score ``-cos`` (the paper's sign, the ``negated`` setting) when True, ``+cos`` when False.
        chunk_size: words scored at a time; the top-n is merged across chunks so peak memory is about
            ``32-40 * B * m * chunk_size`` bytes instead of ``B x m x q`` scores. None = one chunk.

    Returns:
        ``(index, score)``, each ``[B, m, top_n]`` (int64, float32), score descending, only score > 0
        kept, empty slots ``-1`` / ``0``.

    Selection ranks the float32 matmul scores of each chunk (float64 when either input is float64) with
    equal scores ordered by lower word index, through exact int64 keys and a running top-n merge. The
    winners are then re-scored by a fixed-shape float64 dot product and re-ranked by that score (same
    tie rule), so the returned scores and order do not depend on ``chunk_size``. Only the membership of
    a word whose matmul score is within BLAS rounding (~1e-7) of the n-th best could in principle differ,
    because BLAS may round one matmul entry differently for different chunk shapes.
    """
    b, m, d, q = _check_features(patch_features, word_features)
    check_int("top_n", top_n, 1)
    step = q if chunk_size is None else check_int("chunk_size", chunk_size, 1)

    device = patch_features.device
    wide = torch.float64 in (patch_features.dtype, word_features.dtype)
    compute = torch.float64 if wide and device.type != "mps" else torch.float32
    patches = F.normalize(patch_features.reshape(b * m, d).to(compute), dim=-1)
    if negate:
        patches = -patches  # (-v) . t == -cos(v, t) exactly
    if not torch.isfinite(patches).all():
        raise ValueError("patch_features contains NaN or inf")

    best = _chunked_top_keys(patches, word_features, top_n, step)
    index, score = _rescore_winners(best, patches, word_features, top_n)
    return index.view(b, m, top_n), score.view(b, m, top_n)


def _check_features(patch_features: Tensor, word_features: Tensor) -> tuple[int, int, int, int]:
    """``(B, m, d, q)`` of :func:`extract_labels`' inputs, after checking their shapes and dtypes."""
    if patch_features.dim() != 3:
        raise ValueError(f"patch_features must be [B, m, d], got shape {tuple(patch_features.shape)}")
    if word_features.dim() != 2:
        raise ValueError(f"word_features must be [q, d], got shape {tuple(word_features.shape)}")
    if not (patch_features.dtype.is_floating_point and word_features.dtype.is_floating_point):
        raise ValueError(
            f"patch_features and word_features must be floating point, got {patch_features.dtype} and "
            f"{word_features.dtype}"
        )
    b, m, d = patch_features.shape
    q = word_features.shape[0]
    if word_features.shape[1] != d:
        raise ValueError(
            f"word_features has dim {word_features.shape[1]} but patch_features has dim {d}; both must be in "
            "the same joint image-text space"
        )
    if q >= _MAX_WORDS:
        raise ValueError(f"word_features has q={q} words; at most {_MAX_WORDS - 1} are supported")
    return b, m, d, q


def _chunked_top_keys(patches: Tensor, word_features: Tensor, top_n: int, step: int) -> Tensor:
    """``[P, <= top_n]`` ranking keys of each patch row's best words, merged chunk by chunk of ``step`` words."""
    device, compute, q = patches.device, patches.dtype, word_features.shape[0]
    best = torch.empty((patches.shape[0], 0), dtype=torch.int64, device=device)
    for start in range(0, q, max(step, 1)):
        words = F.normalize(word_features[start : start + step].to(device=device, dtype=compute), dim=-1)
        scores = (patches @ words.T).to(torch.float32)
        if not torch.isfinite(scores).all():
            raise ValueError(f"word_features[{start}:{start + step}] contains NaN or inf")
        words_idx = torch.arange(start, start + scores.shape[1], device=device, dtype=torch.int64)
        keys = ranking_keys(scores, words_idx)
        chunk_best = keys.topk(min(top_n, keys.shape[1]), dim=1).values
        merged = torch.cat([best, chunk_best], dim=1)
        best = merged.topk(min(top_n, merged.shape[1]), dim=1).values
    return best


def _rescore_winners(
    best: Tensor, patches: Tensor, word_features: Tensor, top_n: int
) -> tuple[Tensor, Tensor]:
    """``(index, score)`` ``[P, top_n]`` of the winners ``best``, re-scored in float64 and re-ranked."""
    device, compute, rows = patches.device, patches.dtype, patches.shape[0]
    # Re-score the winners with one fixed-shape float64 reduction (BLAS may round a matmul entry
    # differently for different chunk shapes) and re-rank them by that score.
    words, _ = decode_keys(best)
    acc = acc_dtype(device)
    chosen = F.normalize(
        word_features[words.to(word_features.device)].to(device=device, dtype=compute), dim=-1
    )
    values = (patches.to(acc)[:, None, :] * chosen.to(acc)).sum(dim=-1).to(torch.float32)
    best = ranking_keys(values, words).sort(dim=1, descending=True).values
    words, values = decode_keys(best)
    keep = values > 0
    index = torch.full((rows, top_n), -1, dtype=torch.int64, device=device)
    score = torch.zeros((rows, top_n), dtype=torch.float32, device=device)
    index[:, : best.shape[1]] = torch.where(keep, words, -1)
    score[:, : best.shape[1]] = torch.where(keep, values, 0.0)
    return index, score


def _overlap_1d(n_src: int, n_dst: int) -> Tensor:
    """``[n_dst, n_src]``: share of each target interval covered by each source interval on [0, 1]."""
    # Integer coordinates in units of 1 / (n_src * n_dst) keep the identity case exactly 1.0.
    src_lo = torch.arange(n_src, dtype=torch.int64) * n_dst
    dst_lo = torch.arange(n_dst, dtype=torch.int64) * n_src
    hi = torch.minimum(dst_lo[:, None] + n_src, src_lo[None, :] + n_dst)
    lo = torch.maximum(dst_lo[:, None], src_lo[None, :])
    return (hi - lo).clamp(min=0).to(torch.float64) / n_src


def transfer_labels(
    index: Tensor,
    score: Tensor,
    src_grid: Sequence[int],
    dst_grid: Sequence[int],
    top_n: int,
) -> tuple[Tensor, Tensor]:
    """Move labels from one patch grid to another over the same field of view (REFERENCE.md 2.2).

    Args:
        index, score: ``[m_src, n]`` labels of one image on ``src_grid`` (row-major); a leading batch
            dim ``[B, m_src, n]`` is also accepted and handled per image.
        src_grid: ``(h, w)`` with ``h * w == m_src``.
        dst_grid: ``(h2, w2)`` of the target encoder.
        top_n: labels kept per target patch.

    Returns:
        ``(index, score)`` ``[m_dst, top_n]`` (or ``[B, m_dst, top_n]``), same conventions as
        :func:`extract_labels`.

    Target patch ``P`` gets, per word, ``sum_src weight(P, src) * score(src, word)`` with
    ``weight = area(P & src) / area(P)`` (the weights over the sources of one target sum to 1, so a
    target inside one source inherits its scores unchanged). Empty slots (index -1) are ignored; summed
    scores <= 0 are dropped; ties go to the lower word index. Sums run in float64 (float32 on MPS).
    """
    check_labels(index, score, (2, 3))
    batched = index.dim() == 3
    idx = index if batched else index.unsqueeze(0)
    val = score if batched else score.unsqueeze(0)
    g_count, m_src, _ = idx.shape
    h, w = check_grid("src_grid", src_grid, m_src)
    h2, w2 = check_grid("dst_grid", dst_grid)
    check_int("top_n", top_n, 1)
    m_dst = h2 * w2
    device = idx.device
    acc = acc_dtype(device)

    weights = torch.kron(_overlap_1d(h, h2), _overlap_1d(w, w2)).to(device=device, dtype=acc)
    dst, src = weights.nonzero(as_tuple=True)  # the few overlapping (target, source) pairs
    pair_weight = weights[dst, src]

    words = idx[:, src, :].to(torch.int64)  # [G, P, n]
    contrib = val[:, src, :].to(acc) * pair_weight[None, :, None]
    group = torch.arange(g_count, device=device)[:, None, None] * m_dst + dst[None, :, None]
    valid = words >= 0
    words, contrib, group = words[valid], contrib[valid], group.expand_as(valid)[valid]

    out_index = torch.full((g_count * m_dst, top_n), -1, dtype=torch.int64, device=device)
    out_score = torch.zeros((g_count * m_dst, top_n), dtype=torch.float32, device=device)
    if words.numel():
        _rank_sums(group, words, contrib, out_index, out_score)

    out_index = out_index.view(g_count, m_dst, top_n)
    out_score = out_score.view(g_count, m_dst, top_n)
    return (out_index, out_score) if batched else (out_index[0], out_score[0])


def _rank_sums(group: Tensor, words: Tensor, contrib: Tensor, out_index: Tensor, out_score: Tensor) -> None:
    """Sum ``contrib`` per (target ``group``, word) and write each group's top positive sums into the outputs."""
    device, acc, top_n = contrib.device, contrib.dtype, out_index.shape[1]
    vocab = int(words.max()) + 1
    keys, inverse = torch.unique(group * vocab + words, return_inverse=True)  # sorted (group, word)
    sums = torch.zeros(keys.shape[0], dtype=acc, device=device).index_add_(0, inverse, contrib)
    sums32 = sums.to(torch.float32)
    positive = sums32 > 0
    keys, sums32 = keys[positive], sums32[positive]
    key_group, key_word = keys // vocab, keys % vocab
    # Stable sorts compose to (group asc, score desc, word asc); keys already run in word order.
    order = torch.argsort(sums32, descending=True, stable=True)
    order = order[torch.argsort(key_group[order], stable=True)]
    key_group, key_word, sums32 = key_group[order], key_word[order], sums32[order]
    rank = torch.arange(key_group.shape[0], device=device) - torch.searchsorted(key_group, key_group)
    top = rank < top_n
    out_index[key_group[top], rank[top]] = key_word[top]
    out_score[key_group[top], rank[top]] = sums32[top]

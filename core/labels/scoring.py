"""Scoring patches against the word list: exact float64 top-n, or a fast matmul with an exact rescoring."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from core.sea_labels import acc_dtype, decode_keys, extract_labels, ranking_keys

FAST_UNIT_ROUNDOFF: dict[str, float] = {
    "bfloat16": 2.0**-8,
    "float16": 2.0**-11,
    "tf32": 2.0**-11,
    "float32": 2.0**-24,
}
# Candidates per label kept by each fast matmul: enough that almost every patch is certified (bfloat16's
# error bound is ~0.02 at d=768, wider than the gap between the 10th and 40th best of 50K random words).
FAST_CANDIDATES_PER_LABEL: dict[str, int] = {"bfloat16": 16, "float16": 4, "tf32": 4, "float32": 4}
FAST_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "tf32": torch.float32,
    "float32": torch.float32,
}


def fast_score_error(fast: str, dim: int) -> float:
    """A bound on |fast score - exact score| for unit vectors of `dim` elements.

    Rounding both inputs to the fast dtype changes each product by at most (2u + u^2)|p_i w_i|, which
    sums to at most 2u + u^2 for unit vectors (Cauchy-Schwarz); rounding the output to that dtype adds
    u, and float32 accumulation at most dim * 2^-24. Doubled for safety.
    """
    u = FAST_UNIT_ROUNDOFF[fast]
    return 2 * (3 * u + u * u + dim * 2.0**-24)


# What one (patch, word) entry of an exact chunk holds at once: its float32 score, its int64 ranking key
# and the key arithmetic's temporaries (about 32 bytes: `_chunk_words` doubles this; a 1 GiB budget peaked
# at 1.2 GB in `bench/label_words_bench.py`).
EXACT_BYTES_PER_SCORE = 16


def exact_chunk(rows: int, chunk_size: int | None, budget_bytes: int) -> int:
    """Words per exact-scoring chunk for `rows` patches: `chunk_size` (None: all) cut to the memory budget."""
    bound = _chunk_words(rows, budget_bytes, EXACT_BYTES_PER_SCORE)
    return bound if chunk_size is None else min(chunk_size, bound)


def _chunk_words(rows: int, budget_bytes: int, bytes_per_score: int) -> int:
    # The chunk's score matrix plus topk's working copy of it.
    return max(1, budget_bytes // (2 * rows * bytes_per_score))


def _fast_candidates(
    patches: torch.Tensor, words: torch.Tensor, k: int, fast: str, budget_bytes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fast scores float32 [R, k], word ids int64 [R, k]) of the k best words per row by the fast matmul."""
    dtype = FAST_DTYPES[fast]
    rows, q = patches.shape[0], words.shape[0]
    step = _chunk_words(rows, budget_bytes, torch.finfo(dtype).bits // 8)
    device = patches.device
    low = patches.to(dtype)
    best_val = torch.empty((rows, 0), dtype=torch.float32, device=device)
    best_idx = torch.empty((rows, 0), dtype=torch.int64, device=device)
    for start in range(0, q, step):
        chunk = words[start : start + step].to(device=device, dtype=dtype)
        values, index = (low @ chunk.T).topk(min(k, chunk.shape[0]), dim=1)
        merged_val = torch.cat([best_val, values.float()], dim=1)
        merged_idx = torch.cat([best_idx, index + start], dim=1)
        best_val, keep = merged_val.topk(min(k, merged_val.shape[1]), dim=1)
        best_idx = merged_idx.gather(1, keep)
    return best_val, best_idx


def _rescore(
    patches: torch.Tensor, words: torch.Tensor, ids: torch.Tensor, budget_bytes: int
) -> torch.Tensor:
    """Exact scores float32 [R, k] of words `ids` [R, k]: one float64 dot per pair, in row blocks."""
    acc = acc_dtype(patches.device)
    rows, k = ids.shape
    block = max(1, budget_bytes // (k * words.shape[1] * 8))
    out = torch.empty((rows, k), dtype=torch.float32, device=patches.device)
    for start in range(0, rows, block):
        chosen = words[ids[start : start + block].to(words.device)].to(device=patches.device, dtype=acc)
        out[start : start + block] = (
            (patches[start : start + block].to(acc)[:, None, :] * chosen).sum(-1).float()
        )
    return out


def select_labels(
    patch_features: torch.Tensor,
    word_features: torch.Tensor,
    top_n: int,
    *,
    negate: bool = True,
    fast: str = "bfloat16",
    candidates: int | None = None,
    budget_bytes: int = 1 << 30,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`extract_labels` with a fast matmul picking candidates and an exact rescoring of them.

    The `fast` matmul ("bfloat16", "float16", "tf32", "float32") picks `candidates` words per patch
    (default `FAST_CANDIDATES_PER_LABEL[fast] * top_n`), each word chunk's scores bounded by
    `budget_bytes`; the candidates are scored exactly (the float64 dot `extract_labels` re-scores
    with) and ranked by that (ties: lower word index). A patch's result is certified exact when no
    other word can reach its n-th exact score: the candidates' lowest fast score plus
    `fast_score_error` stays below it (or below 0, where nothing is kept). The patches that fail the
    certificate go through `extract_labels` over all words, so the result always equals
    `extract_labels`'s. Same arguments and `(index, score)` as `extract_labels`.
    """
    b, m, d = patch_features.shape
    if fast not in FAST_DTYPES:
        raise ValueError(f"fast={fast!r}: unknown; allowed: {', '.join(FAST_DTYPES)}")
    k = min(candidates or FAST_CANDIDATES_PER_LABEL[fast] * top_n, word_features.shape[0])
    if k < top_n and k < word_features.shape[0]:
        raise ValueError(f"candidates={candidates} must be >= top_n={top_n}")
    patches = torch.nn.functional.normalize(patch_features.reshape(b * m, d).float(), dim=-1)
    if negate:
        patches = -patches
    words = torch.nn.functional.normalize(word_features.float(), dim=-1)
    fast_val, ids = _fast_candidates(patches, words, k, fast, budget_bytes)
    exact = _rescore(patches, words, ids, budget_bytes)
    ranked = ranking_keys(exact, ids).sort(dim=1, descending=True).values[:, :top_n]
    ids, values = decode_keys(ranked)
    n = ids.shape[1]
    index = torch.full((b * m, top_n), -1, dtype=torch.int64, device=patches.device)
    score = torch.zeros((b * m, top_n), dtype=torch.float32, device=patches.device)
    keep = values > 0
    index[:, :n] = torch.where(keep, ids, -1)
    score[:, :n] = torch.where(keep, values, 0.0)
    if k < words.shape[0]:
        reach = fast_val[:, -1] + fast_score_error(fast, d)  # the most a non-candidate word can score
        doubtful = ~((reach < values[:, -1]) | (reach <= 0))
        if doubtful.any():
            rows = doubtful.nonzero().flatten()
            again = patch_features.reshape(b * m, 1, d)[rows].transpose(0, 1)
            redo_index, redo_score = extract_labels(
                again,
                word_features,
                top_n=top_n,
                negate=negate,
                chunk_size=_chunk_words(len(rows), budget_bytes, 8),
            )
            index[rows], score[rows] = redo_index[0], redo_score[0]
    return index.view(b, m, top_n), score.view(b, m, top_n)


def to_rows(index: torch.Tensor, score: torch.Tensor, score_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    idx = index.cpu().numpy().astype(np.int32)
    val = score.cpu().numpy().astype(score_dtype)
    # float16 can round a tiny positive score to 0; keep the convention "a label has score > 0".
    empty = val <= 0
    idx[empty] = -1
    val[empty] = 0
    return idx, val


Scorer = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def make_scorer(
    scoring: str, device: torch.device, *, top_n: int, negate: bool, chunk_size: int | None, budget_bytes: int
) -> Scorer:
    """The function scoring a batch of patch features against the word features on `device`
    (`scoring` "auto": bfloat16 candidates on CUDA, else exact)."""
    fast = scoring
    if fast == "auto":
        fast = "bfloat16" if device.type == "cuda" else "exact"
    if fast == "exact":
        return lambda feats, words: extract_labels(
            feats,
            words,
            top_n=top_n,
            negate=negate,
            chunk_size=exact_chunk(feats.shape[0] * feats.shape[1], chunk_size, budget_bytes),
        )
    return lambda feats, words: select_labels(feats, words, top_n, negate=negate, fast=fast)

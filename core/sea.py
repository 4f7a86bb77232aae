"""SEA (Supervised Embedding Alignment) as pure tensor functions: labels, transfer, sampling, loss.

Everything here follows REFERENCE.md section 2 (papers/SEA-emnlp-2025.md, section 3). The functions are
stateless and device-agnostic: tensors in, tensors out, no Python loop over patches or pairs.

Label arrays (the offline product of item 2.1, consumed by items 2.2-2.5) share one convention:
``index`` int64 ``[..., m, n]`` and ``score`` float32 ``[..., m, n]``, each patch's slots sorted by score
descending (ties: lower word index first), only scores > 0 kept, empty slots ``index = -1, score = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer

__all__ = [
    "LabelRows",
    "extract_labels",
    "label_embedding_rows",
    "label_embeddings",
    "sample_pairs",
    "sea_alignment_loss",
    "transfer_labels",
    "used_word_ids",
]

_LOW32 = 0xFFFFFFFF
_TWO32 = 1 << 32
_MAX_WORDS = 1 << 32  # the word index lives in the low 32 bits of a ranking key
_WHITESPACE_TOKENS = ("▁", "Ġ", " ")  # SentencePiece, byte-level BPE, plain
_CONTEXT_WORD = "a"  # what a label word follows when it is tokenised "mid-sentence"


def _acc_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everywhere else accumulate in float64 so sums and CDFs are not the weak link.
    return torch.float32 if device.type == "mps" else torch.float64


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_grid(name: str, grid: Sequence[int], m: int | None = None) -> tuple[int, int]:
    if len(grid) != 2:
        raise ValueError(f"{name} must be (h, w), got {grid!r}")
    h, w = (_check_int(f"{name}[{i}]", int(v) if isinstance(v, Tensor) else v, 1) for i, v in enumerate(grid))
    if m is not None and h * w != m:
        raise ValueError(
            f"{name}={tuple(grid)} has {h * w} patches but the labels have m={m} patches per image; "
            "pass the grid the labels were computed on (row-major, m = h * w)"
        )
    return h, w


def _check_labels(index: Tensor, score: Tensor, dims: tuple[int, ...]) -> None:
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


def _ranking_keys(scores: Tensor, words: Tensor) -> Tensor:
    """int64 keys ordering float32 ``scores`` by score, then by lower word index (``words``, < 2**32)."""
    bits = scores.contiguous().view(torch.int32).to(torch.int64)
    # IEEE-754 bit patterns sort like sign-magnitude integers; flipping the magnitude of negatives makes
    # them sort like the floats they encode.
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits * _TWO32 + (_LOW32 - words)


def _decode_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
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
    _check_int("top_n", top_n, 1)
    step = q if chunk_size is None else _check_int("chunk_size", chunk_size, 1)

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
        keys = _ranking_keys(scores, words_idx)
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
    words, _ = _decode_keys(best)
    acc = _acc_dtype(device)
    chosen = F.normalize(
        word_features[words.to(word_features.device)].to(device=device, dtype=compute), dim=-1
    )
    values = (patches.to(acc)[:, None, :] * chosen.to(acc)).sum(dim=-1).to(torch.float32)
    best = _ranking_keys(values, words).sort(dim=1, descending=True).values
    words, values = _decode_keys(best)
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
    _check_labels(index, score, (2, 3))
    batched = index.dim() == 3
    idx = index if batched else index.unsqueeze(0)
    val = score if batched else score.unsqueeze(0)
    g_count, m_src, _ = idx.shape
    h, w = _check_grid("src_grid", src_grid, m_src)
    h2, w2 = _check_grid("dst_grid", dst_grid)
    _check_int("top_n", top_n, 1)
    m_dst = h2 * w2
    device = idx.device
    acc = _acc_dtype(device)

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


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    # Draw on the generator's device so a CPU generator still drives CUDA inputs deterministically.
    where = generator.device if generator is not None else device
    dtype = torch.float32 if "mps" in (where.type, device.type) else torch.float64
    return torch.rand(shape, generator=generator, device=where, dtype=dtype).to(device)


def sample_pairs(
    index: Tensor,
    score: Tensor,
    grid: Sequence[int],
    window: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample (patch, label) pairs for the alignment loss (REFERENCE.md 2.3-2.5; SEA Eq. 9).

    Args:
        index, score: ``[B, m, n]`` labels on ``grid`` (row-major ``(h, w)``, ``m = h * w``). A slot
            counts as a label when ``index >= 0`` and ``score > 0``.
        grid: ``(h, w)``.
        window: ``k``; the grid is cut into non-overlapping ``k x k`` windows from the top-left corner.
            When ``h`` or ``w`` is not divisible by ``k`` the last window row/column is partial (it holds
            the leftover patches), so an image has ``ceil(h/k) * ceil(w/k)`` windows.
        generator: a ``torch.Generator`` (any device) making the draw reproducible.

    Returns:
        ``(batch_idx, patch_idx, label_id)`` int64 1-D tensors, one entry per kept pair, ordered by image
        then window (row-major).

    Per window: one patch uniformly among those with a label (windows without are skipped); then one of
    its labels with probability ``s / sum(s)`` (Eq. 9); then, over the whole batch (the micro-batch on
    one device, **[decision]** 2.5), one uniformly random pair per label id. Fully vectorised, no loop
    over images.
    """
    _check_labels(index, score, (3,))
    b, m, n = index.shape
    h, w = _check_grid("grid", grid, m)
    k = _check_int("window", window, 1)
    device = index.device
    empty = torch.empty(0, dtype=torch.int64, device=device)
    if b == 0 or n == 0:
        return empty, empty, empty

    has_label = (index >= 0) & (score > 0)
    batch_idx, patch_idx = _pick_patches(has_label.any(dim=-1), (h, w), k, generator)
    label_id = _pick_labels(index, score, has_label, batch_idx, patch_idx, generator)
    keep = _one_pair_per_label(label_id, generator)
    return batch_idx[keep], patch_idx[keep], label_id[keep]


def _pick_patches(
    labelled: Tensor, grid: tuple[int, int], k: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """``(batch_idx, patch_idx)``: one labelled patch per ``k x k`` window, uniformly (windows without: none)."""
    (b, m), (h, w), device = labelled.shape, grid, labelled.device
    # 1) Patch per window: the labelled patch with the largest uniform key is a uniform pick among them.
    rows, cols = math.ceil(h / k), math.ceil(w / k)
    patch_key = torch.where(labelled, _uniform((b, m), generator, device), -1.0)
    padded = torch.full((b, rows * k, cols * k), -1.0, dtype=patch_key.dtype, device=device)
    padded[:, :h, :w] = patch_key.view(b, h, w)
    windows = padded.view(b, rows, k, cols, k).permute(0, 1, 3, 2, 4).reshape(b, rows * cols, k * k)
    best_key, best_pos = windows.max(dim=-1)
    win = torch.arange(rows * cols, device=device)
    r = (win // cols) * k + best_pos // k
    c = (win % cols) * k + best_pos % k
    chosen = best_key >= 0  # [B, windows]; False where the window has no labelled patch
    batch_idx = torch.arange(b, device=device)[:, None].expand_as(chosen)[chosen]
    patch_idx = (r * w + c)[chosen]
    return batch_idx, patch_idx


def _pick_labels(
    index: Tensor,
    score: Tensor,
    has_label: Tensor,
    batch_idx: Tensor,
    patch_idx: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """One label id per chosen patch, drawn with probability ``s / sum(s)`` (Eq. 9)."""
    n, device = index.shape[-1], index.device
    # 2) Label per chosen patch by inverse CDF of s / sum(s) (Eq. 9).
    weights = torch.where(has_label, score, 0.0)[batch_idx, patch_idx].to(_acc_dtype(device))  # [P, n]
    cdf = weights.cumsum(dim=-1)
    target = _uniform((patch_idx.shape[0],), generator, device).to(cdf.dtype) * cdf[:, -1]
    slot = (cdf <= target[:, None]).sum(dim=-1)
    # Rounding can push target onto the total; fall back to the last slot that holds a label.
    last = n - 1 - has_label[batch_idx, patch_idx].flip(-1).to(torch.int8).argmax(dim=-1)
    slot = torch.minimum(slot, last)
    return index[batch_idx, patch_idx, slot].to(torch.int64)


def _one_pair_per_label(label_id: Tensor, generator: torch.Generator | None) -> Tensor:
    """Positions of the pairs kept, in order: one uniformly random pair per label id."""
    device = label_id.device
    # 3) De-duplicate: shuffle, stable-sort by label, keep each label's first (a uniform pick).
    pairs = label_id.shape[0]
    where = generator.device if generator is not None else device
    shuffle = torch.randperm(pairs, generator=generator, device=where).to(device)
    by_label = shuffle[torch.argsort(label_id[shuffle], stable=True)]
    sorted_labels = label_id[by_label]
    first = torch.ones(pairs, dtype=torch.bool, device=device)
    first[1:] = sorted_labels[1:] != sorted_labels[:-1]
    return by_label[first].sort().values


def _word_token_ids(words: Sequence[str], tokenizer: Tokenizer) -> list[list[int]]:
    """Token ids of each word as it appears mid-sentence, without special tokens (REFERENCE.md 2.6)."""
    for word in words:
        if not isinstance(word, str) or not word.strip() or word != word.strip():
            raise ValueError(
                f"words must be non-empty strings without surrounding whitespace, got {word!r}; strip the "
                "word list first"
            )

    def encode(texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    # Mid-sentence = after another word: tokenise "a <word>" and drop the tokens of "a". This gives the
    # leading-space form for byte-level BPE ("Ġword") and SentencePiece ("▁word") alike, without the
    # lone "▁" that a SentencePiece dummy prefix produces on " word" alone.
    context = encode([_CONTEXT_WORD])[0]
    in_context = encode([f"{_CONTEXT_WORD} {word}" for word in words])
    result: list[list[int]] = []
    fallback: list[int] = []
    for i, ids in enumerate(in_context):
        if ids[: len(context)] == context and len(ids) > len(context):
            result.append(ids[len(context) :])
        else:  # a token straddles the boundary: tokenise " word" alone instead
            result.append([])
            fallback.append(i)
    if fallback:
        bare = encode([words[i] for i in fallback])
        spaced = encode([f" {words[i]}" for i in fallback])
        for i, bare_ids, spaced_ids in zip(fallback, bare, spaced, strict=True):
            # A tokenizer that already marks a bare word's start (SentencePiece dummy prefix: "▁word")
            # gives the mid-sentence form for "word"; " word" would add a second, lone "▁".
            tokens = tokenizer.convert_ids_to_tokens(bare_ids[:1])  # a list in, a list out
            first = tokens[0] if tokens else ""
            result[i] = bare_ids if first.startswith(_WHITESPACE_TOKENS) else spaced_ids
    for word, ids in zip(words, result, strict=True):
        if not ids:
            raise ValueError(f"word {word!r} tokenises to no tokens with {type(tokenizer).__name__}")
    return result


def label_embeddings(words: Sequence[str], tokenizer: Tokenizer, embedding: nn.Module | Tensor) -> Tensor:
    """Mean LLM input embedding of each word's tokens (REFERENCE.md 2.6; SEA Eq. 10).

    Args:
        words: ``q`` label words (no surrounding whitespace).
        tokenizer: a Hugging Face tokenizer (fast or slow).
        embedding: the LLM input embedding module (``nn.Embedding`` or any module mapping ids to
            ``[..., D]``, e.g. ``model.get_input_embeddings()``; it is called, so ZeRO-3 gather hooks
            apply) or its weight tensor ``[V, D]``.

    Returns:
        ``[q, D]`` in the embedding's dtype (averaged in float32 or wider). Differentiable with respect to
        the embedding weights.

    Tokenisation: each word is tokenised as it follows another word, ``"a " + word`` with
    ``add_special_tokens=False``, minus the tokens of ``"a"``; so the word carries its leading-space
    marker (``Ġ``/``▁``) and no BOS/EOS; a lone ``"▁"`` is kept only where the tokenizer itself splits
    it off mid-sentence. If the tokens of ``"a"`` are not a prefix (a tokenizer that merges across words),
    the word is tokenised alone: as ``word`` when the tokenizer marks a bare word's start itself
    (SentencePiece dummy prefix, ``"▁word"``; ``" word"`` would give a lone ``"▁"`` plus ``"▁word"``),
    else as ``" " + word``.
    All token rows sit in memory at once: for a very long word list, call in chunks.
    """
    if isinstance(words, str):
        raise ValueError(f"words must be a list of strings, got the single string {words!r}")
    words = list(words)
    dim: int | None
    if isinstance(embedding, Tensor):
        if embedding.dim() != 2:
            raise ValueError(f"embedding weight must be [V, D], got shape {tuple(embedding.shape)}")
        device, dim = embedding.device, embedding.shape[1]
    elif isinstance(embedding, nn.Module):
        param = next(embedding.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dim = getattr(embedding, "embedding_dim", None)
    else:
        raise ValueError(f"embedding must be an nn.Module or a [V, D] tensor, got {type(embedding).__name__}")

    if not words:
        dtype = (
            embedding.dtype if isinstance(embedding, Tensor) else (param.dtype if param is not None else None)
        )
        if dim is None:
            raise ValueError(
                "words is empty and the embedding module has no embedding_dim to size the result"
            )
        return torch.zeros((0, dim), dtype=dtype or torch.float32, device=device)

    token_ids = _word_token_ids(words, tokenizer)
    counts = torch.tensor([len(ids) for ids in token_ids], device=device)
    flat = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.int64, device=device)
    owner = torch.repeat_interleave(torch.arange(len(words), device=device), counts)

    rows = F.embedding(flat, embedding) if isinstance(embedding, Tensor) else embedding(flat)
    acc = rows.dtype if rows.dtype in (torch.float32, torch.float64) else torch.float32
    sums = torch.zeros((len(words), rows.shape[-1]), dtype=acc, device=device).index_add(
        0, owner, rows.to(acc)
    )
    return (sums / counts[:, None].to(acc)).to(rows.dtype)


def used_word_ids(index: np.ndarray, num_words: int, *, chunk_rows: int = 1024) -> np.ndarray:
    """Sorted word ids that occur in a label index array ``[N, ...]`` (``-1`` = empty slot).

    Reads ``chunk_rows`` rows at a time, so a memory-mapped 558K-image store is scanned without being
    loaded; the working memory is a ``num_words`` flag array plus one chunk.
    """
    seen = np.zeros(num_words, dtype=bool)
    for start in range(0, len(index), chunk_rows):
        ids = np.asarray(index[start : start + chunk_rows]).ravel()
        ids = ids[ids >= 0]
        if ids.size and int(ids.max()) >= num_words:
            raise ValueError(
                f"label index rows {start}..{start + chunk_rows - 1} hold word id {int(ids.max())}, "
                f"outside the word list of {num_words}; the store and the word list do not match"
            )
        seen[ids] = True
    return np.flatnonzero(seen)


@dataclass(frozen=True)
class LabelRows:
    """Label embeddings of a subset of the word list: ``rows[k]`` belongs to word ``word_ids[k]``.

    ``word_ids`` is int64, sorted and unique; ``rows`` is ``[k, D]`` in the LLM embedding's dtype.
    """

    word_ids: Tensor
    rows: Tensor

    def to(self, device: torch.device | str) -> LabelRows:
        return LabelRows(self.word_ids.to(device), self.rows.to(device))

    def positions(self, label: Tensor, *, check: bool = True) -> Tensor:
        """Row positions of word ids ``label`` (any shape); ``check`` (a device sync) rejects unknown ids."""
        ids = label.to(self.word_ids.device, torch.int64)
        pos = torch.searchsorted(self.word_ids, ids).clamp_(max=max(len(self.word_ids) - 1, 0))
        if check and not bool((self.word_ids[pos] == ids).all()):
            missing = ids[self.word_ids[pos] != ids].unique()[:5].tolist()
            raise ValueError(f"word ids {missing} have no label embedding row; build the rows for them")
        return pos

    def lookup(self, label: Tensor, *, check: bool = True) -> Tensor:
        """The label embeddings of word ids ``label``: ``[*label.shape, D]``."""
        return self.rows[self.positions(label, check=check)]


def label_embedding_rows(
    words: Sequence[str],
    word_ids: Sequence[int] | np.ndarray | Tensor,
    tokenizer: Tokenizer,
    embedding: nn.Module | Tensor,
    *,
    chunk: int = 65536,
) -> LabelRows:
    """``label_embeddings`` of only the words ``word_ids`` (e.g. ``used_word_ids`` of a label store).

    The whole ``[q, D]`` table is never built: at 7B a 4M-word list would be 65 GB in float32 on every
    rank. Rows are made ``chunk`` words at a time in the embedding's dtype and equal the full table's
    rows exactly (the same per-word tokens and sums).
    """
    ids = torch.as_tensor(np.asarray(word_ids, dtype=np.int64)).unique(sorted=True)
    if len(ids) and (int(ids[0]) < 0 or int(ids[-1]) >= len(words)):
        raise ValueError(f"word_ids must lie in 0..{len(words) - 1}, got {int(ids[0])}..{int(ids[-1])}")
    parts = [
        label_embeddings([words[i] for i in ids[start : start + chunk].tolist()], tokenizer, embedding)
        for start in range(0, len(ids), chunk)
    ]
    rows = torch.cat(parts) if parts else label_embeddings([], tokenizer, embedding)
    return LabelRows(ids.to(rows.device), rows)


def sea_alignment_loss(visual: Tensor, text: Tensor, tau: float | Tensor) -> Tensor:
    """Symmetric InfoNCE between visual tokens and their label embeddings (REFERENCE.md 2.7; SEA Eq. 11).

    ``L = -1/(2N) sum_i [log softmax_j(cos(x_i, t_j)/tau)[i] + log softmax_j(cos(t_i, x_j)/tau)[i]]``.

    Args:
        visual: ``[N, D]`` adapter outputs of the sampled patches.
        text: ``[N, D]`` label embeddings of the same pairs (row i goes with row i).
        tau: temperature > 0; a float or a one-element tensor (e.g. ``log_tau.exp()``, **[decision]**
            2.7), which then receives a gradient. A tensor's sign is not checked (that would sync).

    Returns:
        A scalar in float32 (float64 when an input is float64). For ``N = 0`` an exact zero still
        connected to ``visual``, ``text`` and ``tau``, so backward runs and yields zero gradients.
    """
    if visual.dim() != 2 or text.dim() != 2 or visual.shape != text.shape:
        raise ValueError(
            f"visual and text must both be [N, D] with the same shape, got {tuple(visual.shape)} and "
            f"{tuple(text.shape)}"
        )
    if isinstance(tau, Tensor):
        if tau.numel() != 1:
            raise ValueError(f"tau must be a scalar, got a tensor of shape {tuple(tau.shape)}")
        tau = tau.reshape(())
    elif isinstance(tau, bool) or not isinstance(tau, int | float) or not tau > 0 or not math.isfinite(tau):
        raise ValueError(f"tau must be a finite float > 0 (or a tensor such as log_tau.exp()), got {tau!r}")

    wide = torch.float64 in (visual.dtype, text.dtype)
    dtype = torch.float64 if wide else torch.float32
    n = visual.shape[0]
    if n == 0:
        zero = visual.sum().to(dtype) * 0 + text.sum().to(dtype) * 0
        return zero + tau * 0 if isinstance(tau, Tensor) else zero

    x = F.normalize(visual.to(dtype), dim=-1)
    t = F.normalize(text.to(dtype), dim=-1)
    logits = (x @ t.T) / (tau.to(dtype) if isinstance(tau, Tensor) else tau)
    target = torch.arange(n, device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

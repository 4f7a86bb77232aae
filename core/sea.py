"""SEA (Supervised Embedding Alignment) as pure tensor functions: pair sampling, label embeddings, loss.

Everything here follows REFERENCE.md section 2 (papers/SEA-emnlp-2025.md, section 3). The functions are
stateless and device-agnostic: tensors in, tensors out, no Python loop over patches or pairs. The labels
themselves (extraction, transfer between grids: items 2.1-2.2) are core/sea_labels.py.

Label arrays (the offline product of item 2.1, consumed by items 2.2-2.5) share one convention:
``index`` int64 ``[..., m, n]`` and ``score`` float32 ``[..., m, n]``, each patch's slots sorted by score
descending (ties: lower word index first), only scores > 0 kept, empty slots ``index = -1, score = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.sea_labels import acc_dtype, check_grid, check_int, check_labels

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer

__all__ = [
    "LabelRows",
    "label_embedding_rows",
    "label_embeddings",
    "sample_pairs",
    "sea_alignment_loss",
    "used_word_ids",
]

_WHITESPACE_TOKENS = ("▁", "Ġ", " ")  # SentencePiece, byte-level BPE, plain
_CONTEXT_WORD = "a"  # what a label word follows when it is tokenised "mid-sentence"


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
    check_labels(index, score, (3,))
    b, m, n = index.shape
    h, w = check_grid("grid", grid, m)
    k = check_int("window", window, 1)
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
    weights = torch.where(has_label, score, 0.0)[batch_idx, patch_idx].to(acc_dtype(device))  # [P, n]
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

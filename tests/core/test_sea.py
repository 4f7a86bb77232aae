"""Tests for core.sea against naive float64 loops, hand-worked cases and known limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from core.sea import (
    label_embedding_rows,
    label_embeddings,
    sample_pairs,
    sea_alignment_loss,
    used_word_ids,
)
from core.sea_labels import extract_labels, transfer_labels

# Chi-square critical values at p = 0.001 (fixed seeds make every draw below reproducible).
CHI2_CRIT_001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47}


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.double() * counts.sum()
    return float(((counts.double() - expected) ** 2 / expected).sum())


# --------------------------------------------------------------------------------------------------
# extract_labels (REFERENCE.md 2.1)
# --------------------------------------------------------------------------------------------------


def naive_labels(patches: torch.Tensor, words: torch.Tensor, top_n: int, negate: bool):
    """Per-patch float64 loop: cosine, sign, stable sort (lower index first on ties), keep > 0."""
    b, m, _ = patches.shape
    index = torch.full((b, m, top_n), -1, dtype=torch.int64)
    score = torch.zeros((b, m, top_n), dtype=torch.float64)
    w = words.double()
    w_norm = w.norm(dim=1)
    for bi in range(b):
        for pi in range(m):
            p = patches[bi, pi].double()
            cos = (w @ p) / (w_norm * p.norm())
            s = -cos if negate else cos
            order = torch.argsort(-s, stable=True)[:top_n]
            kept = [j for j in order.tolist() if s[j] > 0]
            index[bi, pi, : len(kept)] = torch.tensor(kept, dtype=torch.int64)
            score[bi, pi, : len(kept)] = s[kept]
    return index, score


@pytest.mark.parametrize("negate", [True, False])
def test_extract_labels_matches_naive_loop(negate: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    patches = torch.randn(2, 5, 8, generator=gen) * 3.0  # unnormalised on purpose
    words = torch.randn(40, 8, generator=gen) * torch.rand(40, 1, generator=gen).add(0.1)
    index, score = extract_labels(patches, words, top_n=6, negate=negate)
    want_index, want_score = naive_labels(patches, words, 6, negate)
    assert index.dtype == torch.int64 and score.dtype == torch.float32
    assert index.shape == score.shape == (2, 5, 6)
    assert torch.equal(index, want_index)
    torch.testing.assert_close(score.double(), want_score, atol=1e-6, rtol=0)


def test_extract_labels_sign_flips_the_ranking() -> None:
    patches = torch.tensor([[[1.0, 0.0]]])
    words = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    index, score = extract_labels(patches, words, top_n=3, negate=True)
    assert index.tolist() == [[[1, -1, -1]]]  # only -cos = 1 is > 0; cos 0 (word 3) is not kept
    assert score.tolist() == [[[1.0, 0.0, 0.0]]]
    index, score = extract_labels(patches, words, top_n=3, negate=False)
    assert index.tolist() == [[[0, 2, -1]]]
    torch.testing.assert_close(score, torch.tensor([[[1.0, 0.6, 0.0]]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extract_labels_does_not_depend_on_chunk_size(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    patches = torch.randn(3, 7, 16, generator=gen, dtype=dtype)
    words = torch.randn(101, 16, generator=gen, dtype=dtype)
    ref_index, ref_score = extract_labels(patches, words, top_n=10)
    assert (ref_index >= 0).sum() > 0
    for chunk in (1, 2, 3, 10, 17, 100, 101, 1000):
        index, score = extract_labels(patches, words, top_n=10, chunk_size=chunk)
        assert torch.equal(index, ref_index), chunk
        assert torch.equal(score, ref_score), chunk


def test_extract_labels_ties_prefer_lower_word_index_for_every_chunk_size() -> None:
    # One-hot patches make every score exactly one word component, so duplicates tie exactly.
    patches = torch.eye(3).unsqueeze(0)  # [1, 3, 3]
    base = torch.tensor([[-1.0, 0.0, 0.0], [-2.0, -2.0, 0.0], [0.0, 0.0, 5.0]])
    words = torch.cat([base, base, base[:1], base[1:2]])  # word j and j + 3 (and 6, 7) are copies
    # patch 0: -cos = 1 for words 0, 3, 6; 0.7071 for 1, 4, 7 -> lower index first within each score.
    want0 = [0, 3, 6, 1, 4]
    for chunk in (None, 1, 2, 3, 4, 5, 8):
        index, score = extract_labels(patches, words, top_n=5, chunk_size=chunk)
        assert index[0, 0].tolist() == want0, chunk
        assert index[0, 1].tolist() == [1, 4, 7, -1, -1], chunk
        assert index[0, 2].tolist() == [-1] * 5, chunk  # -cos <= 0 everywhere
        torch.testing.assert_close(score[0, 0], torch.tensor([1.0, 1.0, 1.0, 0.5**0.5, 0.5**0.5]))
        assert score[0, 2].tolist() == [0.0] * 5


def test_extract_labels_pads_when_fewer_words_than_top_n() -> None:
    patches = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    words = torch.tensor([[-1.0, 0.0], [-1.0, -1.0]])
    index, score = extract_labels(patches, words, top_n=4, chunk_size=1)
    assert index.tolist() == [[[0, 1, -1, -1], [1, -1, -1, -1]]]
    torch.testing.assert_close(score[0, 0], torch.tensor([1.0, 0.5**0.5, 0.0, 0.0]))
    empty_words = torch.zeros((0, 2))
    index, score = extract_labels(patches, empty_words, top_n=2)
    assert index.tolist() == [[[-1, -1], [-1, -1]]] and score.abs().sum() == 0


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_extract_labels_four_million_words_in_chunks() -> None:
    q, d = 4_000_000, 6
    gen = torch.Generator().manual_seed(2)
    words = torch.randn(q, d, generator=gen)
    patches = torch.randn(1, 4, d, generator=gen)
    index, score = extract_labels(patches, words, top_n=10, chunk_size=500_000)
    w64 = words.double()
    w_norm = w64.norm(dim=1)
    for pi in range(4):
        p = patches[0, pi].double()
        s = -(w64 @ p) / (w_norm * p.norm())
        top = torch.argsort(-s, stable=True)[:10]
        assert torch.equal(index[0, pi], top), pi
        torch.testing.assert_close(score[0, pi].double(), s[top], atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("patches", "words", "kwargs", "match"),
    [
        (torch.zeros(2, 3), torch.zeros(4, 3), {}, "patch_features"),
        (torch.zeros(1, 2, 3), torch.zeros(4, 5), {}, "dim 5"),
        (torch.zeros(1, 2, 3), torch.zeros(4, 3), {"top_n": 0}, "top_n"),
        (torch.zeros(1, 2, 3), torch.zeros(4, 3), {"chunk_size": 0}, "chunk_size"),
        (torch.full((1, 2, 3), float("nan")), torch.ones(4, 3), {}, "NaN"),
        (torch.ones(1, 2, 3), torch.full((4, 3), float("inf")), {}, "word_features"),
    ],
)
def test_extract_labels_rejects_bad_input(patches, words, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        extract_labels(patches, words, **kwargs)


# --------------------------------------------------------------------------------------------------
# transfer_labels (REFERENCE.md 2.2)
# --------------------------------------------------------------------------------------------------


def random_labels(m: int, n: int, vocab: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels in the extract_labels convention: unique words per patch, sorted scores, -1 tails."""
    index = torch.full((m, n), -1, dtype=torch.int64)
    score = torch.zeros((m, n))
    for p in range(m):
        count = int(torch.randint(0, n + 1, (1,), generator=gen))
        index[p, :count] = torch.randperm(vocab, generator=gen)[:count]
        score[p, :count] = torch.rand(count, generator=gen).add(0.01).sort(descending=True).values
    return index, score


def naive_transfer(index, score, src_grid, dst_grid, top_n):
    """Loop over target patches: float64 rectangle overlaps, per-word sums, stable top-n."""
    h, w = src_grid
    h2, w2 = dst_grid
    out_index = torch.full((h2 * w2, top_n), -1, dtype=torch.int64)
    out_score = torch.zeros((h2 * w2, top_n), dtype=torch.float64)
    for r2 in range(h2):
        for c2 in range(w2):
            y0, y1, x0, x1 = r2 / h2, (r2 + 1) / h2, c2 / w2, (c2 + 1) / w2
            sums: dict[int, float] = {}
            for r in range(h):
                for c in range(w):
                    oy = max(0.0, min(y1, (r + 1) / h) - max(y0, r / h))
                    ox = max(0.0, min(x1, (c + 1) / w) - max(x0, c / w))
                    weight = oy * ox / ((y1 - y0) * (x1 - x0))
                    if weight <= 0:
                        continue
                    for word, s in zip(
                        index[r * w + c].tolist(), score[r * w + c].double().tolist(), strict=True
                    ):
                        if word >= 0:
                            sums[word] = sums.get(word, 0.0) + weight * s
            ranked = sorted(((s, word) for word, s in sums.items() if s > 0), key=lambda t: (-t[0], t[1]))
            for slot, (s, word) in enumerate(ranked[:top_n]):
                out_index[r2 * w2 + c2, slot] = word
                out_score[r2 * w2 + c2, slot] = s
    return out_index, out_score


def test_transfer_labels_identity_grid_returns_input() -> None:
    gen = torch.Generator().manual_seed(3)
    patches = torch.randn(1, 12, 8, generator=gen)
    words = torch.randn(30, 8, generator=gen)
    index, score = extract_labels(patches, words, top_n=5)
    got_index, got_score = transfer_labels(index[0], score[0], (3, 4), (3, 4), top_n=5)
    assert torch.equal(got_index, index[0]) and torch.equal(got_score, score[0])
    got_index, got_score = transfer_labels(index[0], score[0], (3, 4), (3, 4), top_n=7)
    assert torch.equal(got_index[:, :5], index[0]) and (got_index[:, 5:] == -1).all()
    assert torch.equal(got_score[:, :5], score[0]) and (got_score[:, 5:] == 0).all()


def test_transfer_labels_2x2_to_1x1_by_hand() -> None:
    # Words: 0 = a, 1 = b, 2 = c. Each source patch covers a quarter of the single target patch.
    index = torch.tensor([[0, 1], [0, -1], [2, -1], [-1, -1]])
    score = torch.tensor([[0.4, 0.2], [0.2, 0.0], [0.8, 0.0], [0.0, 0.0]])
    got_index, got_score = transfer_labels(index, score, (2, 2), (1, 1), top_n=3)
    # c: 0.25 * 0.8 = 0.2; a: 0.25 * (0.4 + 0.2) = 0.15; b: 0.25 * 0.2 = 0.05
    assert got_index.tolist() == [[2, 0, 1]]
    torch.testing.assert_close(got_score, torch.tensor([[0.2, 0.15, 0.05]]))
    got_index, got_score = transfer_labels(index, score, (2, 2), (1, 1), top_n=2)
    assert got_index.tolist() == [[2, 0]]


def test_transfer_labels_2x2_to_3x3_by_hand() -> None:
    # One label per source patch: word 10 + p with score 1. Target rows/cols of 1/3 split the 1/2 rows/cols
    # as [1, 0], [1/2, 1/2], [0, 1], so corners copy one source, edges mix two, the centre mixes all four.
    index = torch.tensor([[10], [11], [12], [13]])
    score = torch.tensor([[1.0], [0.8], [0.6], [0.4]])
    got_index, got_score = transfer_labels(index, score, (2, 2), (3, 3), top_n=4)
    assert got_index[0].tolist() == [10, -1, -1, -1] and got_score[0, 0] == 1.0
    assert got_index[8].tolist() == [13, -1, -1, -1] and got_score[8, 0] == pytest.approx(0.4)
    assert got_index[1].tolist() == [10, 11, -1, -1]  # top edge: half of patch 0, half of patch 1
    torch.testing.assert_close(got_score[1, :2], torch.tensor([0.5, 0.4]))
    assert got_index[3].tolist() == [10, 12, -1, -1]  # left edge: patches 0 and 2
    torch.testing.assert_close(got_score[3, :2], torch.tensor([0.5, 0.3]))
    assert got_index[4].tolist() == [10, 11, 12, 13]  # centre: a quarter of each
    torch.testing.assert_close(got_score[4], torch.tensor([0.25, 0.2, 0.15, 0.1]))


@pytest.mark.parametrize(
    ("src_grid", "dst_grid"), [((24, 24), (16, 16)), ((3, 5), (4, 2)), ((4, 4), (8, 8)), ((2, 3), (5, 7))]
)
def test_transfer_labels_matches_naive_loop(src_grid, dst_grid) -> None:
    gen = torch.Generator().manual_seed(4)
    index, score = random_labels(src_grid[0] * src_grid[1], 6, vocab=25, gen=gen)
    got_index, got_score = transfer_labels(index, score, src_grid, dst_grid, top_n=5)
    want_index, want_score = naive_transfer(index, score, src_grid, dst_grid, 5)
    assert got_score.dtype == torch.float32
    assert torch.equal(got_index, want_index)
    torch.testing.assert_close(got_score.double(), want_score, atol=1e-6, rtol=0)


def test_transfer_labels_batch_matches_per_image() -> None:
    gen = torch.Generator().manual_seed(5)
    pairs = [random_labels(6, 4, vocab=9, gen=gen) for _ in range(3)]
    index = torch.stack([p[0] for p in pairs])
    score = torch.stack([p[1] for p in pairs])
    got_index, got_score = transfer_labels(index, score, (2, 3), (3, 2), top_n=4)
    for b in range(3):
        one_index, one_score = transfer_labels(index[b], score[b], (2, 3), (3, 2), top_n=4)
        assert torch.equal(got_index[b], one_index) and torch.equal(got_score[b], one_score)


def test_transfer_labels_all_empty() -> None:
    index = torch.full((4, 3), -1)
    got_index, got_score = transfer_labels(index, torch.zeros(4, 3), (2, 2), (3, 3), top_n=2)
    assert got_index.shape == (9, 2) and (got_index == -1).all() and (got_score == 0).all()


def test_transfer_labels_rejects_bad_input() -> None:
    index, score = torch.zeros(6, 2, dtype=torch.int64), torch.zeros(6, 2)
    with pytest.raises(ValueError, match="src_grid"):
        transfer_labels(index, score, (2, 2), (1, 1), top_n=2)
    with pytest.raises(ValueError, match="same shape"):
        transfer_labels(index, score[:, :1], (2, 3), (1, 1), top_n=2)
    with pytest.raises(ValueError, match="integer"):
        transfer_labels(score, score, (2, 3), (1, 1), top_n=2)
    with pytest.raises(ValueError, match="top_n"):
        transfer_labels(index, score, (2, 3), (1, 1), top_n=0)


# --------------------------------------------------------------------------------------------------
# sample_pairs (REFERENCE.md 2.3-2.5)
# --------------------------------------------------------------------------------------------------


def test_sample_pairs_label_draw_follows_scores() -> None:
    # Slots deliberately unsorted, with a zero-score slot (index valid) and an empty slot; labels are
    # unique per image (image b uses ids b * 6 + slot) so de-duplication keeps every draw.
    b = 20_000
    slot_scores = torch.tensor([0.15, 0.5, 0.0, 0.05, 0.0, 0.3])
    slot_index = torch.tensor([0, 1, 2, 3, -1, 5])
    index = torch.where(slot_index >= 0, slot_index + 6 * torch.arange(b)[:, None], -1).view(b, 1, 6)
    score = slot_scores.expand(b, 1, 6).clone()
    gen = torch.Generator().manual_seed(6)
    batch_idx, patch_idx, label_id = sample_pairs(index, score, (1, 1), window=1, generator=gen)
    assert batch_idx.tolist() == list(range(b)) and (patch_idx == 0).all()
    slot = label_id - 6 * batch_idx
    counts = torch.bincount(slot, minlength=6)
    assert counts[2] == 0 and counts[4] == 0  # zero score and empty slot never drawn
    live = torch.tensor([0, 1, 3, 5])
    probs = slot_scores[live] / slot_scores[live].sum()
    assert chi_square(counts[live], probs) < CHI2_CRIT_001[3]
    assert chi_square(counts[live], torch.full((4,), 0.25)) > 100  # the test can tell non-Eq. 9 draws


def test_sample_pairs_patch_is_uniform_among_labelled_patches_of_a_window() -> None:
    # 2x2 grid, one 2x2 window; patch 2 has no label; patch scores differ to show they do not bias the pick.
    b = 20_000
    offsets = 4 * torch.arange(b)[:, None, None]
    index = (torch.tensor([[0], [1], [-1], [3]]) + offsets).masked_fill(
        torch.tensor([[0], [0], [1], [0]]).bool(), -1
    )
    score = torch.tensor([[0.9], [0.1], [0.7], [0.5]]).expand(b, 4, 1).clone()
    gen = torch.Generator().manual_seed(7)
    batch_idx, patch_idx, label_id = sample_pairs(index, score, (2, 2), window=2, generator=gen)
    assert batch_idx.tolist() == list(range(b))
    assert torch.equal(label_id - 4 * batch_idx, patch_idx)
    counts = torch.bincount(patch_idx, minlength=4)
    assert counts[2] == 0
    assert chi_square(counts[[0, 1, 3]], torch.full((3,), 1 / 3)) < CHI2_CRIT_001[2]


def test_sample_pairs_partial_edge_windows() -> None:
    # 3x5 grid, k = 2: windows are 2 rows x 3 cols; the last row and column of windows are partial.
    h, w, b = 3, 5, 50
    index = (torch.arange(h * w)[None, :, None] + 100 * torch.arange(b)[:, None, None]).clone()
    score = torch.ones(b, h * w, 1)
    gen = torch.Generator().manual_seed(8)
    batch_idx, patch_idx, _ = sample_pairs(index, score, (h, w), window=2, generator=gen)
    assert torch.equal(torch.bincount(batch_idx, minlength=b), torch.full((b,), 6))
    window_of = (patch_idx // w // 2) * 3 + (patch_idx % w) // 2
    for bi in range(b):
        assert sorted(window_of[batch_idx == bi].tolist()) == list(range(6))
    assert (patch_idx[window_of == 5] == 14).all()  # the 1x1 corner window has only patch (2, 4)
    assert set(patch_idx[window_of == 4].tolist()) == {12, 13}  # a 1x2 bottom window


def test_sample_pairs_at_most_one_pair_per_window() -> None:
    b, h, w = 3, 24, 24
    unique = (torch.arange(h * w)[None, :, None] + 1000 * torch.arange(b)[:, None, None]).clone()
    score = torch.rand(b, h * w, 1, generator=torch.Generator().manual_seed(9)) + 0.01
    gen = torch.Generator().manual_seed(10)
    batch_idx, _, _ = sample_pairs(unique, score, (h, w), window=2, generator=gen)
    assert torch.bincount(batch_idx).tolist() == [144] * b  # 576 patches, k = 2
    shared = torch.randint(0, 200, (b, h * w, 3), generator=gen)
    batch_idx, _, label_id = sample_pairs(shared, torch.rand(b, h * w, 3, generator=gen), (h, w), 2, gen)
    assert (torch.bincount(batch_idx, minlength=b) <= 144).all()
    assert label_id.unique().numel() == label_id.numel()


def test_sample_pairs_deduplicates_labels_over_the_batch() -> None:
    gen = torch.Generator().manual_seed(11)
    index = torch.randint(0, 40, (4, 16, 1), generator=gen)
    score = torch.rand(4, 16, 1, generator=gen) + 0.01
    batch_idx, patch_idx, label_id = sample_pairs(index, score, (4, 4), window=1, generator=gen)
    # window 1 samples every patch, so every label present survives exactly once
    assert sorted(label_id.tolist()) == index.unique().tolist()
    assert torch.equal(index[batch_idx, patch_idx, 0], label_id)


def test_sample_pairs_keeps_a_uniformly_random_duplicate() -> None:
    # Three images each with one patch labelled 7: the survivor must be each image a third of the time.
    index = torch.full((3, 1, 1), 7)
    score = torch.tensor([[[0.9]], [[0.2]], [[0.5]]])
    gen = torch.Generator().manual_seed(12)
    counts = torch.zeros(3, dtype=torch.int64)
    for _ in range(1500):
        batch_idx, _, label_id = sample_pairs(index, score, (1, 1), window=1, generator=gen)
        assert label_id.tolist() == [7]
        counts[batch_idx] += 1
    assert chi_square(counts, torch.full((3,), 1 / 3)) < CHI2_CRIT_001[2]


def test_sample_pairs_is_deterministic_given_a_generator() -> None:
    gen = torch.Generator().manual_seed(13)
    index = torch.randint(-1, 300, (4, 36, 5), generator=gen)
    score = torch.rand(4, 36, 5, generator=gen)
    first = sample_pairs(index, score, (6, 6), 2, torch.Generator().manual_seed(99))
    again = sample_pairs(index, score, (6, 6), 2, torch.Generator().manual_seed(99))
    other = sample_pairs(index, score, (6, 6), 2, torch.Generator().manual_seed(100))
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, other, strict=True))
    for batch_idx, patch_idx, label_id in [first]:
        rows = index[batch_idx, patch_idx]
        hit = (rows == label_id[:, None]) & (score[batch_idx, patch_idx] > 0)
        assert hit.any(dim=1).all()  # every drawn label is a scored label of its patch
        assert batch_idx.dtype == patch_idx.dtype == label_id.dtype == torch.int64


def test_sample_pairs_skips_windows_without_labels() -> None:
    index = torch.full((2, 16, 2), -1)
    score = torch.zeros(2, 16, 2)
    out = sample_pairs(index, score, (4, 4), 2)
    assert all(t.numel() == 0 and t.dtype == torch.int64 for t in out)
    index[1, 5, 1], score[1, 5, 1] = 42, 0.3  # only window (0, 0) of image 1 has a label
    index[0, 15, 0], score[0, 15, 0] = 43, 0.0  # a valid id with score 0 is not a label
    batch_idx, patch_idx, label_id = sample_pairs(index, score, (4, 4), 2)
    assert batch_idx.tolist() == [1] and patch_idx.tolist() == [5] and label_id.tolist() == [42]


def test_sample_pairs_rejects_bad_input() -> None:
    index, score = torch.zeros(1, 6, 2, dtype=torch.int64), torch.ones(1, 6, 2)
    with pytest.raises(ValueError, match="grid"):
        sample_pairs(index, score, (2, 2), 2)
    with pytest.raises(ValueError, match="window"):
        sample_pairs(index, score, (2, 3), 0)
    with pytest.raises(ValueError, match="dims"):
        sample_pairs(index[0], score[0], (2, 3), 2)


# --------------------------------------------------------------------------------------------------
# label_embeddings (REFERENCE.md 2.6)
# --------------------------------------------------------------------------------------------------

CORPUS = [
    "the cat sat on the mat",
    "a dog and a cat ran to the red car",
    "blueberries and jeans on a table",
    "hello world the sky is blue",
] * 10
WORDS = [
    "cat",
    "dog",
    "blueberries",
    "sky",
    "table",
    "jeans",
    "mat",
    "red",
    "redcat",
    "skytable",
]  # last two unseen
SPECIALS = ["<unk>", "<s>", "</s>"]


def train_tokenizer(kind: str) -> tuple[PreTrainedTokenizerFast, str]:
    """A tiny tokenizer of one family plus the marker its model expects before a mid-sentence word."""
    if kind == "wordlevel":
        vocab = {
            tok: i for i, tok in enumerate(SPECIALS + sorted({w for line in CORPUS for w in line.split()}))
        }
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        marker = ""
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        if kind == "bytelevel":
            tok.pre_tokenizer, tok.decoder, marker = (
                pre_tokenizers.ByteLevel(add_prefix_space=False),
                decoders.ByteLevel(),
                "Ġ",
            )
            alphabet = pre_tokenizers.ByteLevel.alphabet()
        else:
            scheme, split = {
                "sp_always": ("always", True),
                "sp_never": ("never", True),
                "sp_first": ("first", False),
            }[kind]
            tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=scheme, split=split)
            tok.decoder, marker, alphabet = decoders.Metaspace(), "▁", []
        trainer = trainers.BpeTrainer(
            vocab_size=90, special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False
        )
        tok.train_from_iterator(CORPUS, trainer)
    # A BOS post-processor: label_embeddings must not pick it up.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    return wrapped, marker


def naive_label_embeddings(words, tokenizer, marker, weight):
    rows = []
    for word in words:
        ids = [t.id for t in tokenizer.backend_tokenizer.model.tokenize(marker + word)]
        rows.append(torch.stack([weight[i].double() for i in ids]).mean(dim=0))
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["wordlevel", "bytelevel", "sp_always", "sp_never", "sp_first"])
def test_label_embeddings_matches_per_word_loop(kind: str) -> None:
    tokenizer, marker = train_tokenizer(kind)
    assert tokenizer("cat")["input_ids"][0] == tokenizer.convert_tokens_to_ids("<s>")  # BOS is on by default
    torch.manual_seed(14)
    embedding = torch.nn.Embedding(len(tokenizer), 5)
    want = naive_label_embeddings(WORDS, tokenizer, marker, embedding.weight.detach())
    got = label_embeddings(WORDS, tokenizer, embedding)
    assert got.shape == (len(WORDS), 5) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=0)
    got_tensor = label_embeddings(WORDS, tokenizer, embedding.weight.detach())
    torch.testing.assert_close(got_tensor, got.detach(), atol=0, rtol=0)
    # multi-token words exist, so the mean is exercised
    lengths = [len(tokenizer.backend_tokenizer.model.tokenize(marker + w)) for w in WORDS]
    assert kind == "wordlevel" or max(lengths) > 1


def test_label_embeddings_cross_word_tokenizer_takes_the_fallback() -> None:
    # split=False SentencePiece training learns pieces spanning words ("▁a▁cat"), so "a cat" does not
    # start with the tokens of "a"; the word must still come out as "▁cat", not "▁a▁cat" or a lone "▁".
    tokenizer, _ = train_tokenizer("sp_first")
    context = tokenizer("a", add_special_tokens=False)["input_ids"]
    joined = [tokenizer(f"a {w}", add_special_tokens=False)["input_ids"] for w in WORDS]
    assert any(ids[: len(context)] != context for ids in joined)
    weight = torch.eye(len(tokenizer))  # one-hot rows: the embedding reveals the token set
    got = label_embeddings(["cat"], tokenizer, weight)
    want_ids = [t.id for t in tokenizer.backend_tokenizer.model.tokenize("▁cat")]
    assert got[0].nonzero().flatten().tolist() == sorted(set(want_ids))


def test_label_embeddings_gradient_reaches_the_table() -> None:
    tokenizer, marker = train_tokenizer("bytelevel")
    torch.manual_seed(15)
    weight = torch.randn(len(tokenizer), 4, dtype=torch.float64, requires_grad=True)
    coeff = torch.randn(len(WORDS), 4, dtype=torch.float64)
    (label_embeddings(WORDS, tokenizer, weight) * coeff).sum().backward()
    want = torch.zeros_like(weight)
    for row, word in enumerate(WORDS):
        ids = [t.id for t in tokenizer.backend_tokenizer.model.tokenize(marker + word)]
        for i in ids:
            want[i] += coeff[row] / len(ids)
    torch.testing.assert_close(weight.grad, want)
    embedding = torch.nn.Embedding(len(tokenizer), 4)
    label_embeddings(WORDS, tokenizer, embedding).sum().backward()
    assert embedding.weight.grad is not None and embedding.weight.grad.abs().sum() > 0


def test_label_embeddings_keeps_low_precision_dtype_and_rejects_bad_words() -> None:
    tokenizer, _ = train_tokenizer("sp_always")
    weight = torch.randn(len(tokenizer), 4).to(torch.bfloat16)
    got = label_embeddings(WORDS, tokenizer, weight)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got.float()).all()
    assert label_embeddings([], tokenizer, weight).shape == (0, 4)
    for bad in ([" cat"], [""], "cat"):
        with pytest.raises(ValueError, match="word"):
            label_embeddings(bad, tokenizer, weight)
    with pytest.raises(ValueError, match="embedding"):
        label_embeddings(WORDS, tokenizer, torch.zeros(3))


# --------------------------------------------------------------------------------------------------
# sea_alignment_loss (REFERENCE.md 2.7)
# --------------------------------------------------------------------------------------------------


def naive_infonce(visual: torch.Tensor, text: torch.Tensor, tau: float) -> float:
    n = visual.shape[0]
    v = [visual[i].double() for i in range(n)]
    t = [text[i].double() for i in range(n)]

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    total = 0.0
    for i in range(n):
        row = [math.exp(cos(v[i], t[j]) / tau) for j in range(n)]
        col = [math.exp(cos(t[i], v[j]) / tau) for j in range(n)]
        total += math.log(row[i] / sum(row)) + math.log(col[i] / sum(col))
    return -total / (2 * n)


@pytest.mark.parametrize("tau", [1.0, 0.07, 3.0])
def test_alignment_loss_matches_naive_double_loop(tau: float) -> None:
    gen = torch.Generator().manual_seed(16)
    visual = torch.randn(6, 9, generator=gen) * 4
    text = torch.randn(6, 9, generator=gen)
    want = naive_infonce(visual, text, tau)
    assert float(sea_alignment_loss(visual, text, tau)) == pytest.approx(want, rel=1e-5)
    got = sea_alignment_loss(visual.double(), text.double(), torch.tensor(tau, dtype=torch.float64))
    assert float(got) == pytest.approx(want, rel=1e-12)


def test_alignment_loss_averages_both_directions() -> None:
    gen = torch.Generator().manual_seed(17)
    visual, text = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    logits = torch.nn.functional.normalize(visual, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    one_way = torch.nn.functional.cross_entropy(logits / 0.5, torch.arange(5))
    assert float(sea_alignment_loss(visual, text, 0.5)) != pytest.approx(float(one_way), rel=1e-3)
    assert float(sea_alignment_loss(visual, text, 0.5)) == pytest.approx(
        float(sea_alignment_loss(text, visual, 0.5))
    )


def test_alignment_loss_known_limits() -> None:
    eye = torch.eye(8)
    assert float(sea_alignment_loss(eye * 3, eye, 0.01)) < 1e-30  # log(1 + 7 e^-100)
    assert float(sea_alignment_loss(eye, eye, 1.0)) == pytest.approx(math.log(1 + 7 * math.exp(-1)))
    same = torch.randn(1, 5).expand(6, 5)
    assert float(sea_alignment_loss(same, same * 2, 0.3)) == pytest.approx(math.log(6))
    assert float(sea_alignment_loss(torch.randn(1, 3), torch.randn(1, 3), 0.1)) == pytest.approx(
        0.0, abs=1e-7
    )


def test_alignment_loss_gradcheck_tau_and_inputs() -> None:
    gen = torch.Generator().manual_seed(18)
    visual = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    text = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    log_tau = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda lt: sea_alignment_loss(visual, text, lt.exp()), (log_tau,))
    assert torch.autograd.gradcheck(lambda v, t: sea_alignment_loss(v, t, 0.4), (visual, text))
    loss = sea_alignment_loss(visual, text, log_tau.exp())
    loss.backward()
    assert log_tau.grad is not None and log_tau.grad != 0


def test_alignment_loss_empty_batch_is_a_differentiable_zero() -> None:
    visual = torch.zeros(0, 4, requires_grad=True)
    text = torch.zeros(0, 4, requires_grad=True)
    log_tau = torch.zeros((), requires_grad=True)
    loss = sea_alignment_loss(visual, text, log_tau.exp())
    assert loss.shape == () and float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert log_tau.grad == 0 and visual.grad is not None and visual.grad.shape == (0, 4)
    assert float(sea_alignment_loss(torch.zeros(0, 4), torch.zeros(0, 4), 0.1)) == 0.0


def test_alignment_loss_low_precision_inputs_and_bad_input() -> None:
    gen = torch.Generator().manual_seed(19)
    visual = torch.randn(4, 6, generator=gen)
    text = torch.randn(4, 6, generator=gen)
    got = sea_alignment_loss(visual.bfloat16(), text.bfloat16(), 0.2)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(
        naive_infonce(visual.bfloat16().float(), text.bfloat16().float(), 0.2), rel=1e-5
    )
    with pytest.raises(ValueError, match="same shape"):
        sea_alignment_loss(visual, text[:3], 0.2)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau"):
            sea_alignment_loss(visual, text, bad)
    with pytest.raises(ValueError, match="tau"):
        sea_alignment_loss(visual, text, torch.ones(2))


def test_label_embedding_rows_equal_the_full_table_on_the_rows_used() -> None:
    tokenizer, _ = train_tokenizer("bytelevel")
    torch.manual_seed(16)
    embedding = torch.nn.Embedding(len(tokenizer), 6).to(torch.bfloat16)
    words = WORDS * 3  # 30 words; a label store uses a few of them
    index = np.full((5, 4, 3), -1, dtype=np.int32)
    index[0, 0, :2] = [17, 3]
    index[2, 1, 0] = 29
    index[4, 3, :] = [3, 8, 0]
    used = used_word_ids(index, len(words), chunk_rows=2)
    assert used.tolist() == [0, 3, 8, 17, 29]
    full = label_embeddings(words, tokenizer, embedding)
    subset = label_embedding_rows(words, used, tokenizer, embedding, chunk=2)
    assert subset.rows.dtype == torch.bfloat16 and subset.rows.shape == (5, 6)
    assert torch.equal(subset.rows, full[torch.as_tensor(used)])
    labels = torch.as_tensor(index[index >= 0], dtype=torch.int64)
    assert torch.equal(subset.lookup(labels), full[labels])
    with pytest.raises(ValueError, match=r"word ids \[1\] have no label embedding row"):
        subset.lookup(torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="word id 29, outside the word list of 20"):
        used_word_ids(index, 20)

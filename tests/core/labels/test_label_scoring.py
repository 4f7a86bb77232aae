"""Fast label scoring (low-precision candidates, exact rescoring) equals the exact top-n."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.labels.extract_job import ExtractJob
from core.labels.scoring import exact_chunk, fast_score_error, select_labels
from core.sea_labels import extract_labels


def _features(seed: int, words: int = 3000, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches [2, 16, dim] near a few words each (peaked scores, as real labels) plus random words."""
    generator = torch.Generator().manual_seed(seed)
    word = torch.randn(words, dim, generator=generator)
    anchors = word[torch.randint(0, words, (2, 16), generator=generator)]
    patch = anchors + 0.8 * torch.randn(2, 16, dim, generator=generator)
    return patch, word


def _brute_force(patch: torch.Tensor, word: torch.Tensor, top_n: int, negate: bool) -> tuple[list, list]:
    """Per patch, the top-n words by float64 cosine (ties: lower index), only scores > 0."""
    p = torch.nn.functional.normalize(patch.double().reshape(-1, patch.shape[-1]), dim=-1)
    w = torch.nn.functional.normalize(word.double(), dim=-1)
    scores = (-1 if negate else 1) * (p @ w.T)
    index, score = [], []
    for row in scores.numpy():
        ranked = np.lexsort((np.arange(len(row)), -row))[:top_n]  # by score, then lower index
        kept = [int(j) for j in ranked if row[j] > 0]
        index.append(kept + [-1] * (top_n - len(kept)))
        score.append([float(row[j]) for j in kept] + [0.0] * (top_n - len(kept)))
    return index, score


@pytest.mark.parametrize("fast", ["bfloat16", "float16", "tf32"])
@pytest.mark.parametrize("negate", [False, True])
def test_fast_selection_equals_exact_top_n(fast: str, negate: bool) -> None:
    patch, word = _features(seed=1)
    want_index, want_score = extract_labels(patch, word, top_n=5, negate=negate)
    # A small budget: many word chunks and rescoring blocks.
    got_index, got_score = select_labels(patch, word, 5, negate=negate, fast=fast, budget_bytes=64 * 1024)
    assert torch.equal(got_index, want_index) and torch.equal(got_score, want_score)
    brute_index, brute_score = _brute_force(patch, word, 5, negate)
    assert got_index.reshape(-1, 5).tolist() == brute_index
    torch.testing.assert_close(
        got_score.reshape(-1, 5).double(), torch.tensor(brute_score, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_uncertified_patches_fall_back_to_the_exact_scan() -> None:
    # Near-duplicate words: their bfloat16 scores tie, so the candidates cannot be certified and
    # the exact scan must decide.
    patch, word = _features(seed=2, words=400)
    word[100:300] = word[100] + 1e-4 * torch.randn(
        200, word.shape[1], generator=torch.Generator().manual_seed(3)
    )
    patch[0, :4] = word[100] + 0.01
    want = extract_labels(patch, word, top_n=4, negate=False)
    got = select_labels(patch, word, 4, negate=False, fast="bfloat16", candidates=4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_few_words_and_bad_arguments() -> None:
    patch, word = _features(seed=4, words=3)
    want = extract_labels(patch, word, top_n=5, negate=False)
    got = select_labels(patch, word, 5, negate=False)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="fast='int8': unknown"):
        select_labels(patch, word, 2, fast="int8")
    assert fast_score_error("bfloat16", 768) < 0.05 and fast_score_error("tf32", 768) < 0.01


def test_exact_chunk_is_cut_to_the_memory_budget():
    # CLIP-L/336 at the default batch: 32 x 576 patches; 1 GiB at 32 bytes per (patch, word) entry.
    assert exact_chunk(32 * 576, None, 1 << 30) == (1 << 30) // (32 * 32 * 576) == 1820
    assert exact_chunk(32 * 576, 65536, 1 << 30) == 1820  # the setting's default would need 38 GB
    assert exact_chunk(10, 100, 1 << 30) == 100
    assert exact_chunk(10**9, None, 1) == 1


def test_exact_scorer_under_a_small_budget_equals_the_brute_force_top_n():
    patch, word = _features(seed=3, words=500)
    rows = patch.shape[0] * patch.shape[1]
    job = ExtractJob("tiny-clip", ("placeholder",), "unused.json", ".", top_n=4, budget_bytes=32 * rows * 7)
    assert exact_chunk(rows, None, job.budget_bytes) == 7  # 72 chunks of words
    index, score = job.scorer(torch.device("cpu"))(patch, word)
    want_index, want_score = _brute_force(patch, word, 4, negate=True)
    assert index.reshape(rows, 4).tolist() == want_index
    for got, want in zip(score.reshape(rows, 4).tolist(), want_score, strict=True):
        assert got == pytest.approx(want, abs=1e-6)

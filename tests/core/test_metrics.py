"""Tests for core.metrics (alignment, pope, vqa, choice) against naive float64 loops and hand-worked numbers."""

from __future__ import annotations

import math

import pytest
import torch

from core.metrics.alignment import (
    LabelRecallCounts,
    label_recall_at1,
    label_recall_counts,
    modality_gap,
    nearest_word_distance,
    nearest_words,
    tacs,
)
from core.metrics.choice import mc_accuracy, parse_choice_letter, pick_option_by_loglik
from core.metrics.pope import parse_yes_no, pope_counts, pope_headline, pope_metrics
from core.metrics.vqa import normalize_vqa_answer, vqa_accuracy


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ----------------------------------------------------------------------------------------------- nearest word


def test_nearest_words_matches_naive_loop(gen: torch.Generator) -> None:
    visual = torch.randn(2, 3, 5, 8, generator=gen, dtype=torch.float64)
    vocab = torch.randn(37, 8, generator=gen, dtype=torch.float64)
    idx, sim = nearest_words(visual, vocab, chunk_size=6)
    assert idx.shape == sim.shape == (2, 3, 5)
    assert idx.dtype == torch.long
    flat_v = visual.reshape(-1, 8).tolist()
    words = vocab.tolist()
    for t, x in enumerate(flat_v):
        sims = [_cos(x, w) for w in words]
        best = max(range(len(sims)), key=lambda j: sims[j])
        assert idx.reshape(-1)[t].item() == best
        assert sim.reshape(-1)[t].item() == pytest.approx(sims[best], abs=1e-12)


def test_nearest_words_hand_example() -> None:
    # (1, 1) is closest in angle to (2, 1.9) although (10, 0) is longer: cosine ignores norms.
    visual = torch.tensor([[[1.0, 1.0], [0.0, -3.0]]])
    vocab = torch.tensor([[10.0, 0.0], [2.0, 1.9], [0.0, -0.1]])
    idx, sim = nearest_words(visual, vocab)
    assert idx.tolist() == [[1, 2]]
    assert sim[0, 0].item() == pytest.approx(3.9 / (math.sqrt(2) * math.sqrt(4 + 1.9**2)), abs=1e-6)
    assert sim[0, 1].item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 37, 10_000])
def test_nearest_words_chunk_invariance(gen: torch.Generator, chunk_size: int) -> None:
    visual = torch.randn(4, 6, 16, generator=gen)
    vocab = torch.randn(37, 16, generator=gen)
    ref_idx, ref_sim = nearest_words(visual, vocab, chunk_size=37)
    idx, sim = nearest_words(visual, vocab, chunk_size=chunk_size)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sim, ref_sim)


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 8])
def test_nearest_words_ties_go_to_lowest_index(chunk_size: int) -> None:
    # Rows 1 and 5 are the same direction (and 5 is longer); they land in different chunks for most sizes.
    vocab = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 2.0], [2.0, 0.0]])
    idx, _ = nearest_words(torch.tensor([[3.0, 0.0]]), vocab, chunk_size=chunk_size)
    assert idx.tolist() == [1]


def test_nearest_words_low_precision_input_computes_in_float32(gen: torch.Generator) -> None:
    visual = torch.randn(5, 8, generator=gen).to(torch.bfloat16)
    vocab = torch.randn(11, 8, generator=gen).to(torch.bfloat16)
    idx, sim = nearest_words(visual, vocab)
    assert sim.dtype == torch.float32
    ref_idx, ref_sim = nearest_words(visual.double(), vocab.double())
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sim.double(), ref_sim, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("visual", "vocab", "chunk", "match"),
    [
        (torch.zeros(3, 4), torch.zeros(5, 3), 8, "vocab dim"),
        (torch.zeros(3, 4), torch.zeros(0, 4), 8, "vocab is empty"),
        (torch.zeros(4), torch.zeros(5, 4), 8, "visual must have shape"),
        (torch.zeros(3, 4), torch.zeros(2, 5, 4), 8, "vocab must have shape"),
        (torch.zeros(3, 4), torch.zeros(5, 4), 0, "chunk_size"),
    ],
)
def test_nearest_words_rejects_bad_input(
    visual: torch.Tensor, vocab: torch.Tensor, chunk: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        nearest_words(visual, vocab, chunk_size=chunk)


# ---------------------------------------------------------------------------------------------- modality gap


def test_modality_gap_hand_example() -> None:
    # token (0,0): nearest (0,1) at 1; token (6,8): nearest (3,4) at 5 -> D = (1 + 5) / 2 = 3.
    visual = torch.tensor([[[0.0, 0.0], [6.0, 8.0]]])
    vocab = torch.tensor([[0.0, 1.0], [3.0, 4.0]])
    assert modality_gap(visual, vocab) == pytest.approx(3.0)
    assert nearest_word_distance(visual, vocab)[0].tolist() == pytest.approx([1.0, 5.0])


def test_modality_gap_matches_naive_loop(gen: torch.Generator) -> None:
    visual = torch.randn(3, 7, 6, generator=gen, dtype=torch.float64) * 2
    vocab = torch.randn(29, 6, generator=gen, dtype=torch.float64)
    words = vocab.tolist()
    expected = [min(_dist(x, w) for w in words) for x in visual.reshape(-1, 6).tolist()]
    got = nearest_word_distance(visual, vocab, chunk_size=5)
    assert got.shape == (3, 7)
    assert got.reshape(-1).tolist() == pytest.approx(expected, abs=1e-10)
    assert modality_gap(visual, vocab, chunk_size=5) == pytest.approx(
        sum(expected) / len(expected), abs=1e-10
    )


@pytest.mark.parametrize("chunk_size", [1, 4, 29, 512])
def test_modality_gap_chunk_invariance(gen: torch.Generator, chunk_size: int) -> None:
    visual = torch.randn(2, 9, 12, generator=gen)
    vocab = torch.randn(29, 12, generator=gen)
    ref = nearest_word_distance(visual, vocab, chunk_size=29)
    torch.testing.assert_close(nearest_word_distance(visual, vocab, chunk_size=chunk_size), ref)


def test_modality_gap_has_no_cancellation_error_for_large_norms() -> None:
    # |x|^2 ~ 8e6 in float32 has an ulp of 0.5, so |x|^2 + |w|^2 - 2x.w alone would give a distance
    # anywhere in [0, 1]; the direct recomputation must return the exact 1/64.
    centre = torch.full((8,), 1000.0)
    visual = (centre + torch.tensor([1 / 64] + [0.0] * 7))[None]
    vocab = torch.stack([centre + 10.0, centre, centre - 10.0])
    assert modality_gap(visual, vocab) == pytest.approx(1 / 64, abs=1e-7)


def test_modality_gap_rejects_no_tokens() -> None:
    with pytest.raises(ValueError, match="no tokens"):
        modality_gap(torch.zeros(2, 0, 4), torch.zeros(3, 4))


# ------------------------------------------------------------------------------------------------------ TACS


def test_tacs_hand_worked_2d_with_padding_and_k_below_m() -> None:
    # Visual v0=(1,0), v1=(0,1), v2=(1,1); text t0=(1,0), t1=(3,4), t2=(0,1) padded.
    #   v0: cos t0 = 1,        cos t1 = 3/5                  -> 1
    #   v1: cos t0 = 0,        cos t1 = 4/5, (t2 = 1 masked) -> 4/5
    #   v2: cos t0 = 1/sqrt2,  cos t1 = 7/(5 sqrt2) = 0.98995 -> 0.98995
    # k=2 -> (1 + 7/(5 sqrt2)) / 2 = 0.994975. Without the mask v1 would score 1 and TACS = 1.
    visual = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]]) * 7.0  # cosine ignores the scale
    text = torch.tensor([[[1.0, 0.0], [3.0, 4.0], [0.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])
    expected = (1.0 + 7.0 / (5.0 * math.sqrt(2.0))) / 2.0
    assert tacs(visual, text, k=2, text_mask=mask).tolist() == pytest.approx([expected], abs=1e-6)
    assert tacs(visual, text, k=2).tolist() == pytest.approx([1.0], abs=1e-6)
    # k >= m averages all m maxima: (1 + 4/5 + 0.98995) / 3.
    all_three = (1.0 + 0.8 + 7.0 / (5.0 * math.sqrt(2.0))) / 3.0
    assert tacs(visual, text, k=10, text_mask=mask).tolist() == pytest.approx([all_three], abs=1e-6)


def test_tacs_matches_naive_loop(gen: torch.Generator) -> None:
    b, m, n, d, k = 3, 7, 5, 6, 4
    visual = torch.randn(b, m, d, generator=gen, dtype=torch.float64)
    text = torch.randn(b, n, d, generator=gen, dtype=torch.float64)
    mask = torch.rand(b, n, generator=gen) > 0.4
    mask[:, 0] = True
    got = tacs(visual, text, k=k, text_mask=mask)
    assert got.shape == (b,)
    for i in range(b):
        real = [text[i, j].tolist() for j in range(n) if mask[i, j]]
        best = sorted((max(_cos(visual[i, r].tolist(), t) for t in real) for r in range(m)), reverse=True)
        assert got[i].item() == pytest.approx(sum(best[:k]) / k, abs=1e-12)


def test_tacs_rejects_bad_input() -> None:
    v, t = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="every text token"):
        tacs(v, t, text_mask=torch.tensor([[True] * 5, [False] * 5]))
    with pytest.raises(ValueError, match="text_mask must be a bool"):
        tacs(v, t, text_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="k must be"):
        tacs(v, t, k=0)
    with pytest.raises(ValueError, match="agree on batch size"):
        tacs(v, torch.randn(3, 5, 4))


# ------------------------------------------------------------------------------------------ label recall@1


def test_label_recall_hand_example() -> None:
    nearest = torch.tensor([[3, 5, 7, 2]])
    labels = torch.tensor([[[3, -1], [1, 2], [-1, -1], [2, 9]]])
    # token 0 hit, token 1 miss, token 2 unlabelled (left out), token 3 hit -> 2 / 3.
    assert label_recall_counts(nearest, labels) == LabelRecallCounts(hits=2, labelled=3)
    assert label_recall_at1(nearest, labels) == pytest.approx(2 / 3)


def test_label_recall_matches_naive_loop(gen: torch.Generator) -> None:
    nearest = torch.randint(0, 6, (4, 9), generator=gen)
    labels = torch.randint(-1, 6, (4, 9, 3), generator=gen)
    hits = labelled = 0
    for b in range(4):
        for i in range(9):
            slots = [x for x in labels[b, i].tolist() if x >= 0]
            if slots:
                labelled += 1
                hits += int(nearest[b, i].item() in slots)
    counts = label_recall_counts(nearest, labels)
    assert (counts.hits, counts.labelled) == (hits, labelled)
    halves = label_recall_counts(nearest[:2], labels[:2]) + label_recall_counts(nearest[2:], labels[2:])
    assert halves == counts


def test_label_recall_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="undefined"):
        label_recall_at1(torch.tensor([[1, 2]]), torch.full((1, 2, 3), -1))
    with pytest.raises(ValueError, match="negative"):
        label_recall_at1(torch.tensor([[-1]]), torch.tensor([[[-1, 4]]]))
    with pytest.raises(ValueError, match="matching B, m"):
        label_recall_at1(torch.tensor([[1, 2]]), torch.zeros(1, 3, 2, dtype=torch.long))


# ------------------------------------------------------------------------------------------------------ POPE


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("No", "no"),
        ("no", "no"),
        ("There is not a cat", "no"),
        ("yes", "yes"),
        ("Yes, no doubt", "no"),  # 'no' is a word once ',' is deleted
        ("Yes,no", "yes"),  # deleting ',' glues the words into 'Yesno'
        ("No, there is none", "no"),
        ("Yes. There is no cat.", "yes"),  # only the first sentence counts
        ("Not sure", "yes"),  # LLaVA matches 'not' case-sensitively: 'Not' is not a negation
        ("NO", "yes"),
        ("No!", "yes"),  # '!' stays attached: 'No!' is not 'No'
        ("", "yes"),
    ],
)
def test_parse_yes_no_follows_llava(answer: str, parsed: str) -> None:
    assert parse_yes_no(answer) == parsed


def test_pope_metrics_hand_worked_confusion_matrix() -> None:
    # TP=3, FP=1, TN=4, FN=2 (n=10): acc 7/10, precision 3/4, recall 3/5,
    # F1 = 2*(3/4)(3/5)/(3/4+3/5) = 0.9/1.35 = 2/3, yes-ratio 4/10.
    preds = ["Yes"] * 3 + ["Yes, it is."] + ["No."] * 4 + ["There is not one"] * 2
    labels = ["yes"] * 3 + ["no"] + ["no"] * 4 + ["yes"] * 2
    c = pope_counts(preds, labels)
    assert (c.tp, c.fp, c.tn, c.fn) == (3, 1, 4, 2)
    got = pope_metrics(preds, labels)
    assert set(got) == {"accuracy", "precision", "recall", "f1", "yes_ratio"}
    assert got["accuracy"] == pytest.approx(0.7)
    assert got["precision"] == pytest.approx(0.75)
    assert got["recall"] == pytest.approx(0.6)
    assert got["f1"] == pytest.approx(2 / 3)
    assert got["yes_ratio"] == pytest.approx(0.4)


def test_pope_metrics_zero_division_is_zero() -> None:
    got = pope_metrics(["No", "no"], ["yes", "no"])
    assert got == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}
    assert pope_metrics(["Yes"], ["no"])["recall"] == 0.0


def test_pope_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        pope_metrics(["Yes"], ["maybe"])
    with pytest.raises(ValueError, match="differ in length"):
        pope_metrics(["Yes"], ["yes", "no"])
    with pytest.raises(ValueError, match="empty"):
        pope_metrics([], [])


def test_pope_headline_is_mean_f1() -> None:
    splits = {"adversarial": {"f1": 0.6}, "popular": {"f1": 0.7}, "random": {"f1": 0.8}}
    assert pope_headline(splits) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="empty"):
        pope_headline({})
    with pytest.raises(ValueError, match="no 'f1'"):
        pope_headline({"random": {"accuracy": 1.0}})


# ------------------------------------------------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Two", "2"),
        ("ten", "10"),
        ("none", "0"),
        ("the dog.", "dog"),
        ("A cat", "cat"),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("yes!", "yes"),
        ("Yes", "yes"),
        ("1,000", "1000"),  # digit,digit deletes every punctuation mark instead of spacing it
        ("12,5 apples!", "125 apples"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("1.", "1"),
        ("red,white", "red white"),  # ',' touching no space becomes a space
        ("red, white", "red white"),  # ',' touching a space is deleted
        ("x-ray", "x ray"),
        ("dog's", "dog's"),  # apostrophes are not in the punctuation list
        ("  Hot\tdog\n", "hot dog"),
        ("somebody'd", "somebodyd"),  # the official table's own typo, kept for comparability
    ],
)
def test_normalize_vqa_answer(raw: str, norm: str) -> None:
    assert normalize_vqa_answer(raw) == norm


def _official_style_accuracy(pred: str, answers: list[str]) -> float:
    # The official loop: drop reference i, count exact matches among the rest.
    p = normalize_vqa_answer(pred)
    refs = [normalize_vqa_answer(a) for a in answers]
    accs = []
    for i in range(len(refs)):
        others = refs[:i] + refs[i + 1 :]
        accs.append(min(1.0, sum(r == p for r in others) / 3))
    return sum(accs) / len(accs)


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # 0 matches: every subset has 0 -> 0.
        (0, 0.0),
        # 1 match: leaving it out gives 0; the other 9 subsets hold 1 -> 9*(1/3)/10 = 0.3.
        (1, 0.3),
        # 2 matches: leaving one of them out -> 1/3 (2 subsets); the other 8 subsets hold 2 -> 2/3.
        # (2*(1/3) + 8*(2/3)) / 10 = (2/3 + 16/3) / 10 = 6/10 = 0.6.
        (2, 0.6),
        # 3 matches: leaving one out -> 2/3 (3 subsets); the other 7 hold 3 -> 1. (2 + 7) / 10 = 0.9.
        (3, 0.9),
        # 4 matches: every subset holds >= 3 -> 1.
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_vqa_accuracy_leave_one_out(matches: int, expected: float) -> None:
    answers = ["two"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("2", answers) == pytest.approx(expected)
    assert vqa_accuracy("2", answers) == pytest.approx(_official_style_accuracy("2", answers))


def test_vqa_accuracy_other_reference_counts() -> None:
    # 3 references, all matching: each subset of 2 holds 2 -> 2/3.
    assert vqa_accuracy("Dog", ["dog", "the dog", "dog."]) == pytest.approx(2 / 3)
    # A single reference leaves an empty subset -> 0.
    assert vqa_accuracy("dog", ["dog"]) == 0.0
    mixed = ["yes", "Yes!", "no", "yes", "nope", "yes.", "no", "no", "yes", "maybe", "yes", "no"]
    assert vqa_accuracy("YES", mixed) == pytest.approx(_official_style_accuracy("YES", mixed))
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("dog", [])


# -------------------------------------------------------------------------------------------- multiple choice


def test_mc_accuracy() -> None:
    assert mc_accuracy(["A", "B ", None, "D"], ["A", "B", "C", "C"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in length"):
        mc_accuracy(["A"], ["A", "B"])
    with pytest.raises(ValueError, match="empty"):
        mc_accuracy([], [])


def test_pick_option_by_loglik_normalises_by_length() -> None:
    # Raw best is option 1 (-4), but per token: -6/3 = -2, -4/1 = -4, -9/3 = -3 -> option 0.
    assert pick_option_by_loglik([-6.0, -4.0, -9.0], [3, 1, 3]) == 0
    # Per token -3, -2, -2.5 -> option 1.
    assert pick_option_by_loglik([-3.0, -4.0, -5.0], [1, 2, 2]) == 1
    # Ties at -2 per token -> lowest index.
    assert pick_option_by_loglik([-4.0, -2.0, -6.0], [2, 1, 3]) == 0
    with pytest.raises(ValueError, match=">= 1"):
        pick_option_by_loglik([-1.0], [0])
    with pytest.raises(ValueError, match="NaN"):
        pick_option_by_loglik([float("nan"), -1.0], [1, 1])


@pytest.mark.parametrize(
    ("answer", "n", "letter"),
    [
        ("B", 4, "B"),
        ("(B)", 4, "B"),
        ("B.", 4, "B"),
        ("B. A red car", 4, "B"),
        ("The answer is B", 4, "B"),
        ("Answer: C", 4, "C"),
        ("A", 4, "A"),
        ("A.", 2, "A"),
        ("A cat is shown, so the answer is D.", 4, "D"),  # 'A cat' is an article
        ("I think it is C", 4, "C"),
        ("E", 4, None),  # not one of four options
        ("E or B", 4, "B"),
        ("The best option is (c)", 4, None),  # lower case never counts
        ("BAD", 4, None),  # letters inside a word
        ("", 4, None),
    ],
)
def test_parse_choice_letter(answer: str, n: int, letter: str | None) -> None:
    assert parse_choice_letter(answer, n) == letter


def test_parse_choice_letter_rejects_bad_option_count() -> None:
    with pytest.raises(ValueError, match="n_options"):
        parse_choice_letter("A", 0)

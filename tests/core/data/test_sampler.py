"""The length-grouped sampler: modality groups, similar lengths together, once per epoch, resumable."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from core.data.sampler import LengthGroupedSampler, even_chunks, modality_lengths


def _lengths(count: int, seed: int = 0, text_fraction: float = 0.3) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 400) * (-1 if rng.random() < text_fraction else 1) for _ in range(count)]


def _padding(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(max(abs(lengths[i]) for i in b) * len(b) - sum(abs(lengths[i]) for i in b) for b in batches)


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order) - size + 1, size)]


def _ranks(lengths: list[int], world: int, **kwargs) -> list[LengthGroupedSampler]:
    return [LengthGroupedSampler(lengths, num_replicas=world, rank=r, **kwargs) for r in range(world)]


@pytest.mark.parametrize(
    ("count", "micro", "world", "accum"), [(1000, 4, 2, 2), (999, 3, 3, 1), (37, 2, 4, 3)]
)
def test_each_sample_once_per_epoch_across_ranks(count: int, micro: int, world: int, accum: int) -> None:
    lengths = _lengths(count)
    samplers = _ranks(lengths, world, micro_batch=micro, accumulation=accum, seed=5)
    for epoch in (0, 1):
        for s in samplers:
            s.start(epoch)
        orders = [list(s) for s in samplers]
        seen = [i for order in orders for i in order]
        assert len(seen) == len(set(seen))
        # As many samples as DistributedSampler(drop_last) + DataLoader(drop_last) train on.
        reference = DistributedSampler(range(count), num_replicas=world, rank=0, drop_last=True)
        assert all(
            len(order) == len(reference) // micro * micro == len(s)
            for order, s in zip(orders, samplers, strict=True)
        )


def test_drop_last_false_pads_with_repeats_only() -> None:
    lengths = _lengths(103)
    samplers = _ranks(lengths, 4, micro_batch=5, drop_last=False, seed=1)
    seen = [i for s in samplers for i in s]
    assert set(seen) == set(range(103)) and len(seen) == 120  # 6 rounds of 4 x 5
    assert len(samplers[0]) == 30


def _random_padding(lengths: list[int], count: int, micro: int) -> int:
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()[:count]
    return _padding(lengths, _batches(shuffled, micro))


def test_modalities_grouped_and_micro_batches_balanced() -> None:
    # An image adds 576 tokens, so mixing modalities in a micro-batch pads a lot (LLaVA-1.5's case).
    lengths = [n + 576 if n > 0 else n for n in _lengths(4000, seed=2)]
    micro, world, accum = 4, 2, 2
    sampler = LengthGroupedSampler(lengths, micro_batch=micro, num_replicas=world, accumulation=accum)
    order = sampler.global_order()
    megabatches = _batches(order, micro * world * accum)
    mixed = [g for g in megabatches if len({lengths[i] > 0 for i in g}) > 1]
    assert len(mixed) <= 2  # only the joined remainders of the two modalities
    longest = max(abs(n) for n in lengths)
    for group in megabatches:  # LLaVA's even chunks: about the same tokens per micro-batch
        totals = [sum(abs(lengths[i]) for i in b) for b in _batches(group, micro)]
        assert max(totals) - min(totals) <= longest
    assert _padding(lengths, _batches(order, micro)) < 0.8 * _random_padding(lengths, len(order), micro)


def test_unbalanced_puts_similar_lengths_together() -> None:
    lengths = _lengths(4000, seed=2)
    sampler = LengthGroupedSampler(lengths, micro_batch=4, num_replicas=2, accumulation=4, balance=False)
    order = sampler.global_order()
    for group in _batches(order, 4 * 2 * 4):
        if len({lengths[i] > 0 for i in group}) == 1:  # not the joined remainders
            assert [abs(lengths[i]) for i in group] == sorted((abs(lengths[i]) for i in group), reverse=True)
    assert _padding(lengths, _batches(order, 4)) < 0.5 * _random_padding(lengths, len(order), 4)


def test_rank_gets_every_world_th_micro_batch() -> None:
    lengths = _lengths(200)
    samplers = _ranks(lengths, 3, micro_batch=4, accumulation=2, seed=3)
    order = samplers[0].global_order()
    for rank, sampler in enumerate(samplers):
        expected = [i for k, b in enumerate(_batches(order, 4)) if k % 3 == rank for i in b]
        assert list(sampler) == expected


def test_resume_mid_epoch_gives_the_same_remaining_order() -> None:
    lengths = _lengths(500)
    first = LengthGroupedSampler(lengths, micro_batch=4, num_replicas=2, rank=1, seed=7)
    first.start(3)
    full = list(first)
    resumed = LengthGroupedSampler(lengths, micro_batch=4, num_replicas=2, rank=1, seed=7)
    resumed.start(3, skip=96)
    assert list(resumed) == full[96:] and len(resumed) == len(full) - 96
    loader = DataLoader(range(500), batch_size=4, sampler=resumed, drop_last=True)
    assert [int(i) for batch in loader for i in batch] == full[96:]
    first.start(4)
    assert list(first) != full  # a new epoch, a new order
    with pytest.raises(ValueError, match="skip=1000 outside"):
        resumed.start(0, skip=1000)


def test_one_modality_only_and_bad_lengths() -> None:
    sampler = LengthGroupedSampler([-3, -5, -7, -9], micro_batch=2)
    assert sorted(sampler) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"samples \[1\] have length 0"):
        LengthGroupedSampler([3, 0], micro_batch=1)


def test_even_chunks_and_modality_lengths() -> None:
    lengths = [9, 7, 5, 3, 2, 1]
    assert even_chunks([0, 1, 2, 3, 4, 5], lengths, 2) == [[0, 3, 4], [1, 2, 5]]
    assert even_chunks([0, 1, 2], lengths, 2) == [[0, 2], [1]]
    records = [
        {
            "id": "a",
            "image": "a.png",
            "conversations": [{"value": "<image>\nWhat is it?"}, {"value": "A cat."}],
        },
        {"id": "b", "conversations": [{"value": "Hi there"}, {"value": "Hello"}]},
    ]
    assert modality_lengths(records) == [6, -3]
    with pytest.raises(ValueError, match="record 0 \\(id 'c'\\) has no words"):
        modality_lengths([{"id": "c", "conversations": [{"value": " "}]}])

"""A distributed, resumable length-grouped sampler: LLaVA's `group_by_modality_length`, per rank and epoch.

LLaVA-1.5 trains stage 2 with `group_by_modality_length`: multimodal and text-only samples never
share a global batch, and within a global batch samples of similar length share a micro-batch, so
less of each micro-batch is padding. Its order (`get_modality_length_grouped_indices` in
llava/train/llava_trainer.py), followed here:

1. Each modality on its own: a random permutation, cut into megabatches of one global batch
   (`micro_batch * world * accumulation` samples), each sorted longest first and dealt into
   `world * accumulation` micro-batches of about equal total length (`balance=True`, LLaVA's
   `split_to_even_chunks`: every rank and accumulation step gets about the same number of tokens,
   so each micro-batch holds long and short samples alike). `balance=False` cuts the sorted
   megabatch into consecutive micro-batches instead (as transformers' `group_by_length`): similar
   lengths share a micro-batch, which pads far less, but the ranks' loads differ within a step.
2. The megabatches of both modalities, all but each modality's last (short) one, in random order;
   the two short ones joined form a mixed remainder, whose first full megabatch (if any) goes first
   and the rest last.

The global order is the same on every rank (seeded by `seed + epoch`, as DistributedSampler). Micro
batch k of it goes to rank k % world, which is how the HF Trainer's dataloader shards LLaVA's order.
`drop_last=True` cuts the order to whole rounds of `world` micro-batches, which keeps exactly as many
samples as DistributedSampler(drop_last=True) + DataLoader(drop_last=True) do; `drop_last=False` pads
it with its own head. `start(epoch, skip)` / `__iter__` / `__len__` match `ResumableSampler`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler


def modality_lengths(records: Sequence[Mapping[str, Any]]) -> list[int]:
    """LLaVA's `modality_lengths`: the words of all turns, negative for a sample without an image."""
    lengths = []
    for index, record in enumerate(records):
        words = sum(len(str(turn.get("value", "")).split()) for turn in record.get("conversations", ()))
        if words == 0:
            raise ValueError(f"record {index} (id {record.get('id')!r}) has no words in its conversations")
        lengths.append(words if "image" in record else -words)
    return lengths


def even_chunks(indices: list[int], lengths: Sequence[int], num_chunks: int) -> list[list[int]]:
    """Deal `indices` (longest first) into `num_chunks` equal-count chunks, each to the lightest so far.

    As LLaVA's `split_to_even_chunks`: when the count does not divide evenly it deals round-robin.
    """
    if len(indices) % num_chunks:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    per_chunk = len(indices) // num_chunks
    chunks: list[list[int]] = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        lightest = totals.index(min(totals))
        chunks[lightest].append(index)
        totals[lightest] += lengths[index]
        if len(chunks[lightest]) == per_chunk:
            totals[lightest] = float("inf")  # full: never chosen again
    return chunks


def length_grouped(
    lengths: Sequence[int], megabatch: int, chunks: int, generator: torch.Generator, balance: bool = True
) -> list[int]:
    """Positions 0..len-1: random megabatches, each sorted longest first (and dealt into even chunks)."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    out: list[int] = []
    for start in range(0, len(order), megabatch):
        group = sorted(order[start : start + megabatch], key=lambda i: lengths[i], reverse=True)
        if balance:
            group = [i for chunk in even_chunks(group, lengths, chunks) for i in chunk]
        out.extend(group)
    return out


def modality_grouped(
    lengths: Sequence[int], megabatch: int, chunks: int, generator: torch.Generator, balance: bool = True
) -> list[int]:
    """LLaVA's global order over sample indices (`lengths` > 0 multimodal, < 0 text-only)."""
    megabatches: list[list[int]] = []
    remainder: list[int] = []
    for sign in (1, -1):
        members = [i for i, length in enumerate(lengths) if length * sign > 0]
        if not members:
            continue
        sizes = [abs(lengths[i]) for i in members]
        order = [members[p] for p in length_grouped(sizes, megabatch, chunks, generator, balance)]
        groups = [order[i : i + megabatch] for i in range(0, len(order), megabatch)]
        megabatches += groups[:-1]
        remainder += groups[-1]
    shuffled = [megabatches[i] for i in torch.randperm(len(megabatches), generator=generator).tolist()]
    if len(remainder) >= megabatch:
        shuffled.insert(0, remainder[:megabatch])
        remainder = remainder[megabatch:]
    if remainder:
        shuffled.append(remainder)
    return [i for group in shuffled for i in group]


class LengthGroupedSampler(Sampler[int]):
    """This rank's share of the modality- and length-grouped order; resumable part-way through an epoch.

    `lengths`: one non-zero int per sample, its length (tokens or words), negative for text-only
    samples (`modality_lengths` gives LLaVA's word counts). `micro_batch` is the DataLoader's batch
    size and `accumulation` the gradient accumulation steps: a global batch is
    `micro_batch * num_replicas * accumulation` samples, as in LLaVA. `balance` (LLaVA's
    behaviour) evens the tokens across the micro-batches of a global batch; False puts similar
    lengths together (see the module docstring).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        *,
        micro_batch: int,
        num_replicas: int = 1,
        rank: int = 0,
        accumulation: int = 1,
        seed: int = 0,
        drop_last: bool = True,
        balance: bool = True,
    ) -> None:
        for name, value in (
            ("micro_batch", micro_batch),
            ("num_replicas", num_replicas),
            ("accumulation", accumulation),
        ):
            if value < 1:
                raise ValueError(f"LengthGroupedSampler: {name}={value} must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"LengthGroupedSampler: rank={rank} must be in 0..{num_replicas - 1}")
        zero = [i for i, length in enumerate(lengths) if length == 0]
        if zero:
            raise ValueError(
                f"LengthGroupedSampler: samples {zero[:5]} have length 0; lengths must be non-zero "
                "(the sign marks the modality: > 0 with an image, < 0 text-only)"
            )
        self.lengths = list(lengths)
        self.micro_batch = micro_batch
        self.num_replicas = num_replicas
        self.rank = rank
        self.accumulation = accumulation
        self.seed = seed
        self.drop_last = drop_last
        self.balance = balance
        self.epoch = 0
        self.skip = 0
        round_size = micro_batch * num_replicas
        if drop_last:
            self.total = len(self.lengths) // round_size * round_size
        else:
            self.total = -(-len(self.lengths) // round_size) * round_size

    def start(self, epoch: int, skip: int = 0) -> None:
        """Begin `epoch` with this rank's first `skip` samples already seen."""
        if not 0 <= skip <= self.total // self.num_replicas:
            raise ValueError(
                f"LengthGroupedSampler: skip={skip} outside 0..{self.total // self.num_replicas}"
            )
        self.epoch = epoch
        self.skip = skip

    def global_order(self) -> list[int]:
        """The epoch's order on all ranks, cut (drop_last) or padded with its head to whole rounds."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        chunks = self.num_replicas * self.accumulation
        order = modality_grouped(self.lengths, self.micro_batch * chunks, chunks, generator, self.balance)
        while len(order) < self.total:
            order += order[: self.total - len(order)]
        return order[: self.total]

    def rank_order(self) -> list[int]:
        """This rank's whole epoch: micro-batch k of the global order goes to rank k % num_replicas."""
        order = self.global_order()
        size = self.micro_batch
        stride = size * self.num_replicas
        return [
            i for start in range(self.rank * size, len(order), stride) for i in order[start : start + size]
        ]

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_order()[self.skip :])

    def __len__(self) -> int:
        return self.total // self.num_replicas - self.skip

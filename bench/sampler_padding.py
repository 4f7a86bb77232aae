"""Padding per epoch on the synthetic instruction data: random order vs the length-grouped sampler."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from torch.utils.data import DistributedSampler

from core.data.sampler import LengthGroupedSampler, modality_lengths
from core.data.synthetic_instruct import InstructSpec, ensure_instruct
from core.data.templates import encode_conversation
from core.models.tiny_tokenizer import train_tiny_tokenizer


def token_lengths(records: list[dict], visual_tokens: int) -> list[int]:
    """Sequence length as the LLM sees it (the image placeholder replaced by `visual_tokens`), signed."""
    tokenizer = train_tiny_tokenizer(1024, 512)
    out = []
    for record in records:
        ids = encode_conversation(record["conversations"], "vicuna_v1", tokenizer).input_ids
        out.append(len(ids) - 1 + visual_tokens if "image" in record else -len(ids))
    return out


def padding_fraction(lengths: list[int], rank_orders: list[list[int]], micro: int) -> float:
    """Padded positions over all positions of the micro-batches of every rank (each padded to its longest)."""
    padded = total = 0
    for order in rank_orders:
        for start in range(0, len(order) - micro + 1, micro):
            sizes = [abs(lengths[i]) for i in order[start : start + micro]]
            padded += max(sizes) * micro - sum(sizes)
            total += max(sizes) * micro
    return padded / total


def measure(
    lengths: list[int], grouping: list[int], micro: int, world: int, accum: int, balance: bool
) -> float:
    orders = []
    for rank in range(world):
        sampler = LengthGroupedSampler(
            grouping, micro_batch=micro, num_replicas=world, rank=rank, accumulation=accum, balance=balance
        )
        orders.append(list(sampler))
    return padding_fraction(lengths, orders, micro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--visual-tokens", type=int, nargs="+", default=[64, 576])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        json_path, _ = ensure_instruct(InstructSpec(num_samples=args.samples), Path(tmp))
        records = json.loads(json_path.read_text())
    words = modality_lengths(records)
    print(f"{args.samples} synthetic instruction samples, {sum(n < 0 for n in words)} text-only")
    print(
        "| visual tokens | micro x world x accum | random | LLaVA grouping (words) | LLaVA grouping (tokens) | similar lengths together |"
    )
    print("|---|---|---|---|---|---|")
    for visual in args.visual_tokens:
        lengths = token_lengths(records, visual)
        for micro, world, accum in ((4, 2, 2), (16, 8, 1)):
            start = time.perf_counter()
            random_orders = [
                list(DistributedSampler(range(len(records)), num_replicas=world, rank=r, drop_last=True))
                for r in range(world)
            ]
            row = [
                padding_fraction(lengths, random_orders, micro),
                measure(lengths, words, micro, world, accum, balance=True),
                measure(lengths, lengths, micro, world, accum, balance=True),
                measure(lengths, lengths, micro, world, accum, balance=False),
            ]
            cells = " | ".join(f"{100 * value:.1f} %" for value in row)
            print(
                f"| {visual} | {micro} x {world} x {accum} | {cells} |  ({time.perf_counter() - start:.2f} s)"
            )


if __name__ == "__main__":
    main()

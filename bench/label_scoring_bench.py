"""Label scoring per image: exact `extract_labels` vs `select_labels` (fast candidates + exact rescoring)."""

from __future__ import annotations

import argparse
import resource
import time

import torch

from core.labels.extract import select_labels
from core.sea_labels import extract_labels


def features(words: int, patches: int, dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Random word features and patches that lie near a few of them (peaked scores, as real labels)."""
    generator = torch.Generator().manual_seed(0)
    word = torch.randn(words, dim, generator=generator)
    anchors = word[torch.randint(0, words, (1, patches), generator=generator)]
    patch = anchors + 0.8 * torch.randn(1, patches, dim, generator=generator)
    return patch.to(device), word.to(device)


def timed(fn, repeats: int) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=100_000)
    parser.add_argument("--patches", type=int, default=576)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--top-n", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=16384, help="extract_labels' words per chunk")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    patch, word = features(args.words, args.patches, args.dim, args.device)
    exact_s, want = timed(
        lambda: extract_labels(patch, word, top_n=args.top_n, chunk_size=args.chunk_size), args.repeats
    )
    print(f"{args.patches} patches x {args.words} words x {args.dim} on {args.device}, top-{args.top_n}")
    print("| kernel | s / image | words x patches / s | equal to exact |")
    print("|---|---|---|---|")
    rate = args.words * args.patches
    print(f"| extract_labels (fp32, chunk {args.chunk_size}) | {exact_s:.3f} | {rate / exact_s:.3g} | - |")
    fasts = ["bfloat16", "tf32"] if args.device == "cuda" else ["bfloat16", "float32"]
    for fast in fasts:
        seconds, got = timed(
            lambda fast=fast: select_labels(patch, word, args.top_n, fast=fast), args.repeats
        )
        same = torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        print(f"| select_labels ({fast} candidates) | {seconds:.3f} | {rate / seconds:.3g} | {same} |")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()

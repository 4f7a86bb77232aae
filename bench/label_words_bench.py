"""SEA labels with a huge word list: encode N generated words, then label images, against the forward bound.

Reports the word-encoding rate (words/s), the peak resident memory, and the extraction rate (images/s)
of the encoder's forward plus the scoring of every patch against all N words, as a fraction of the
encoder's forward pass alone (the bound). Real scale is 4M words x 576 patches x 768 (CLIP-L/336); on a
CPU the tiny encoders stand in (`--encoder tiny-clip`), with the same code path as extraction
(`core.labels.extract_job`: `encode_words`, `ExtractJob.scorer`).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from core.labels.extract_job import ExtractJob
from core.labels.extract_job import encode_words as _word_features
from core.models.encoder_loading import load_encoder


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--words", type=int, default=4_000_000)
    parser.add_argument("--encoder", default="tiny-clip")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--scoring", default="auto", help="ExtractJob.scoring: auto, exact, bfloat16, ...")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    words = [f"w{i:07d}" for i in range(args.words)]  # distinct tokens, as a real list's rare words are
    tower = load_encoder(args.encoder, text_tower=True).to(device).eval()
    size = tower.spec.image_size
    images = torch.randn(args.images, 3, size, size, device=device)

    with torch.inference_mode():
        t0 = time.perf_counter()
        word_features = _word_features(tower, words)
        encode_s = time.perf_counter() - t0
        job = ExtractJob(args.encoder, ("placeholder",), "unused.json", ".", scoring=args.scoring)
        scorer = job.scorer(device)
        t0 = time.perf_counter()
        for start in range(0, args.images, args.batch):
            tower.joint_patch_features(images[start : start + args.batch])
        forward_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for start in range(0, args.images, args.batch):
            feats = tower.joint_patch_features(images[start : start + args.batch])
            scorer(feats.float(), word_features)
        extract_s = time.perf_counter() - t0

    rows = [
        ("words", f"{args.words:,}"),
        (
            "word features",
            f"{tuple(word_features.shape)} float32, {word_features.numel() * 4 / 2**20:.0f} MiB",
        ),
        ("word encoding", f"{args.words / encode_s:,.0f} words/s ({encode_s:.1f} s)"),
        ("forward only", f"{args.images / forward_s:.1f} images/s"),
        ("forward + scoring", f"{args.images / extract_s:.2f} images/s ({args.scoring})"),
        ("extraction / forward bound", f"{forward_s / extract_s:.1%}"),
        ("peak RSS", f"{peak_rss_mib():,.0f} MiB"),
        ("device", f"{device} ({args.threads} threads)" if device.type == "cpu" else str(device)),
    ]
    print(f"| quantity ({args.encoder}) | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()

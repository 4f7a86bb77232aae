"""LLaVA loader at 665K records: parse and length-cache times, items/s and memory per worker process."""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

from core.data import LlavaDataset, make_collate
from core.data.llava_cache import _PARSED
from core.models.tiny_tokenizer import train_tiny_tokenizer
from core.paths import using_cache_dir

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WORDS = [
    "the",
    "a",
    "red",
    "blue",
    "green",
    "small",
    "large",
    "cat",
    "dog",
    "car",
    "tree",
    "sky",
    "house",
    "person",
    "table",
    "left",
    "right",
    "near",
]


def make_images(root: Path, count: int, size: int, seed: int) -> list[str]:
    """`count` JPEGs of random blocks (decode cost like a photo of that size, not like a flat colour)."""
    rng = np.random.default_rng(seed)
    names = []
    for index in range(count):
        blocks = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize((size, size), Image.BILINEAR)
        name = f"img/{index:04d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name, quality=90)
        names.append(name)
    return names


def make_records(count: int, images: list[str], text_only: float, seed: int) -> list[dict[str, Any]]:
    """LLaVA-665K-like records: 1-4 turns, about `text_only` of them without an image."""
    rng = random.Random(seed)

    def sentence(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    records = []
    for index in range(count):
        turns = []
        for _turn in range(rng.randint(1, 4)):
            turns += [
                {"from": "human", "value": sentence(4, 12) + "?"},
                {"from": "gpt", "value": sentence(3, 40)},
            ]
        record: dict[str, Any] = {"id": f"{index:07d}", "conversations": turns}
        if rng.random() >= text_only:
            record["image"] = rng.choice(images)
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        records.append(record)
    return records


def rss_mib(pid: int) -> tuple[float, float | None]:
    """(resident, unique) MiB of a process: psutil's RSS and USS when installed, else /proc VmRSS only."""
    try:
        import psutil

        info = psutil.Process(pid).memory_full_info()
        return info.rss / 2**20, info.uss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024, None
    return float("nan"), None


def children() -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process().children()]
    except ImportError:
        return []


def measure_loader(dataset: LlavaDataset, pad: int, workers: int, items: int, micro: int) -> dict[str, Any]:
    loader = DataLoader(
        dataset,
        batch_size=micro,
        sampler=RandomSampler(dataset, generator=None),
        collate_fn=make_collate(pad),
        drop_last=True,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
    )
    batches = items // micro
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not throughput
    worker_mem: dict[int, tuple[float, float | None]] = {}
    start = time.perf_counter()
    for done in range(1, batches + 1):
        next(iterator)
        if done == batches // 2:
            worker_mem = {pid: rss_mib(pid) for pid in children()}
    seconds = time.perf_counter() - start
    del iterator
    rss = [m[0] for m in worker_mem.values()]
    uss = [m[1] for m in worker_mem.values() if m[1] is not None]
    return {
        "workers": workers,
        "items_per_s": batches * micro / seconds,
        "main_rss": rss_mib(os.getpid())[0],
        "worker_rss": max(rss) if rss else None,
        "worker_uss": max(uss) if uss else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=665_000)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=384, help="stored JPEG side")
    parser.add_argument("--crop", type=int, default=336, help="encoder input side (CLIP-L/336)")
    parser.add_argument(
        "--check-records", type=int, default=20_000, help="records of the timed supervision pass"
    )
    parser.add_argument("--items", type=int, default=1536, help="items timed per worker count")
    parser.add_argument("--micro", type=int, default=16)
    parser.add_argument("--workers", default="0,2,4")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp, using_cache_dir(Path(tmp) / "cache"):
        root = Path(tmp)
        t0 = time.perf_counter()
        images = make_images(root, args.images, args.image_size, seed=0)
        tokenizer = train_tiny_tokenizer(1024, 2048)

        def build(json_path: Path, check: float | None) -> tuple[LlavaDataset, float]:
            t = time.perf_counter()
            ds = LlavaDataset(
                json_path, root, tokenizer, "vicuna_v1", image_size=args.crop, mean=CLIP_MEAN, std=CLIP_STD,
                image_mode="pad", max_unsupervised_fraction=check,
            )  # fmt: skip
            return ds, time.perf_counter() - t

        # The supervision pass tokenises every record once; time it on a subset (it scales linearly).
        subset = root / "subset.json"
        subset.write_text(json.dumps(make_records(args.check_records, images, text_only=0.06, seed=1)))
        _, cold = build(subset, 0.01)  # parse + validate + tokenise every record, lengths written
        _PARSED.clear()
        _, fresh = build(subset, 0.01)  # as a new process: parse again, lengths read from disk
        _, again = build(subset, 0.01)  # same process: parse cached, lengths from disk
        print(
            f"supervision pass on {args.check_records} records: cold {cold:.1f} s "
            f"({args.check_records / cold:.0f} records/s tokenised), new process with the lengths cache "
            f"{fresh:.2f} s, same process {again:.2f} s"
        )

        json_path = root / "llava_v1_5_mix665k.json"
        json_path.write_text(json.dumps(make_records(args.records, images, text_only=0.06, seed=0)))
        size_mb = json_path.stat().st_size / 1e6
        print(
            f"generated {args.records} records ({size_mb:.0f} MB JSON), {args.images} images in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        dataset, first = build(json_path, None)
        _, second = build(json_path, None)
        print(
            f"{args.records}-record dataset build (parse + validate + image stat): {first:.1f} s; "
            f"again in the same process: {second:.1f} s"
        )

        rows = [measure_loader(dataset, tokenizer.pad_token_id, int(w), args.items, args.micro)
                for w in args.workers.split(",")]  # fmt: skip
        print(
            f"\n{'workers':>7} {'items/s':>8} {'main RSS MiB':>12} {'worker RSS MiB':>14} {'worker USS MiB':>14}"
        )
        for row in rows:
            fmt = lambda v: f"{v:.0f}" if v is not None else "-"  # noqa: E731
            print(f"{row['workers']:>7} {row['items_per_s']:>8.1f} {row['main_rss']:>12.0f} "
                  f"{fmt(row['worker_rss']):>14} {fmt(row['worker_uss']):>14}")  # fmt: skip
        print(
            f"({os.cpu_count()} CPUs; {args.crop}px pad mode from {args.image_size}px JPEGs; micro {args.micro})"
        )


if __name__ == "__main__":
    main()

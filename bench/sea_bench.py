"""SEA's cost over the LLaVA baseline, measured as ratios in one process: step time, data loading, label extraction.

Run: ``uv run --frozen python bench/sea_bench.py [--llm tiny-llama --encoder tiny-clip --steps 30 ...]``.

Two ways to get a model:

- ``--init pretrained`` (default for tiny ids): ``build_vlm`` / ``load_encoder`` as training does; the labels are
  extracted from the synthetic dataset with ``extract_store`` (timed: the end-to-end extraction number) and the
  label embeddings come from the LLM's tokenizer (Eq. 10).
- ``--init random`` (default for real ids): the LLM and the encoder are built from the registry's ``arch``
  facts with random weights directly on the device; nothing is downloaded. Word features and label embeddings
  are random (no tokenizer is needed), the label store holds random labels of the encoder's grid, and the
  data loader reads the synthetic dataset with the tiny-llama tokenizer (its ids are valid in every vocab).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sea_bench.json"
RANDOM_WORDS = 50_000  # about the 41K-word 2of12 list of the SEA preprint
TEXT_BATCH = 1024
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


# --- devices and timing ---


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # bf16 is what LLaVA-1.5 trains in; CPU matmuls in bf16 are slow and not what anyone trains with.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: unknown; use auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()``, with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return str(device)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}


# --- what the three benchmarks share ---


@dataclass
class Setup:
    """One VLM (adapter trainable), its data with and without labels, and an extraction tower with word features."""

    init: str
    vlm: Any  # core.models.VLM
    pad_id: int
    plain: Dataset
    labelled: Any  # core.labels.WithLabels over `plain`
    word_embeddings: Tensor  # [q, D] label embeddings (Eq. 10) in the LLM's input space
    tower: Any  # core.models.VisionTower with its text tower, for extraction
    word_features: Tensor  # [q, e] unit word features in the joint image-text space
    extract_dtype: torch.dtype
    end_to_end: dict[str, Any] | None = None  # timing of extract_store, pretrained mode only
    notes: list[str] = field(default_factory=list)


def resolve_init(init: str, llm_id: str, encoder_id: str) -> str:
    from core.models import get_encoder_spec, get_llm_spec

    if init != "auto":
        return init
    tiny = get_llm_spec(llm_id).builder is not None and get_encoder_spec(encoder_id).builder is not None
    return "pretrained" if tiny else "random"


def synthetic_dataset(num_samples: int, image_size: int, seed: int) -> tuple[Path, Path]:
    from core.data import SyntheticSpec, ensure_synthetic

    return ensure_synthetic(SyntheticSpec(num_samples=num_samples, seed=seed, image_size=image_size))


def fit_words(words: list[str], num_words: int | None) -> list[str]:
    """The caption words cut or padded with filler words to ``num_words`` (None: as they are)."""
    if num_words is None:
        return words
    if num_words <= len(words):
        return words[:num_words]
    taken = set(words)
    filler = (f"filler{i}" for i in range(num_words * 2))
    return words + [w for w in filler if w not in taken][: num_words - len(words)]


def unit_text_features(tower: Any, words: list[str]) -> Tensor:
    parts = [
        tower.text_features(words[i : i + TEXT_BATCH], normalize=True)
        for i in range(0, len(words), TEXT_BATCH)
    ]
    return torch.cat(parts).float()


def setup_pretrained(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, work: Path) -> Setup:
    """Models as training loads them; labels extracted from the synthetic dataset into ``work``."""
    from core.data import LlavaDataset
    from core.labels import ExtractJob, WithLabels, caption_words, extract_store
    from core.models import build_vlm, get_encoder_spec, load_encoder
    from core.sea import label_embeddings

    spec = get_encoder_spec(args.encoder)
    if not spec.has_text_tower:
        raise ValueError(
            f"--encoder {args.encoder}: has no text tower, so it cannot label its own patches; the benchmark "
            "does not do label transfer; use an encoder with one (e.g. tiny-clip, clip-l-336)"
        )
    vlm, tokenizer = build_vlm(
        args.llm,
        args.encoder,
        args.adapter,
        llm_path=args.llm_path,
        encoder_path=args.encoder_path,
        dtype=dtype,
    )
    vlm.freeze_for_stage1().to(device)
    json_path, image_root = synthetic_dataset(
        args.num_samples, args.image_size or max(128, spec.image_size), 0
    )
    words = fit_words(caption_words(json_path, min_count=1), args.num_words)

    print(f"extracting labels of {args.num_samples} images against {len(words)} words ...", file=sys.stderr)
    start = time.perf_counter()
    store = extract_store(
        ExtractJob(
            args.encoder,
            words,
            json_path,
            image_root,
            top_n=args.top_n,
            batch_size=args.extract_batch,
            encoder_path=args.encoder_path,
            chunk_size=args.chunk_size,
        ),
        work / "labels",
        device=device,
        progress=False,
    )
    seconds = time.perf_counter() - start
    assert store is not None  # no max_batches: it runs to the end or raises
    end_to_end = {
        "images": len(store),
        "seconds": seconds,
        "images_per_s": len(store) / seconds,
        "what": "extract_store into a fresh dir: encoder load (float32), text tower over the words, image "
        "decoding, joint features, extract_labels, writes",
    }

    enc = vlm.vision.spec
    plain = LlavaDataset(
        json_path, image_root, tokenizer, "plain", image_size=enc.image_size, mean=enc.mean, std=enc.std
    )
    with torch.no_grad():
        word_embeddings = label_embeddings(store.words, tokenizer, vlm.llm.get_input_embeddings())
    extract_dtype = resolve_dtype(args.extract_dtype, device)
    tower = load_encoder(args.encoder, path=args.encoder_path, text_tower=True, dtype=extract_dtype).to(
        device
    )
    with torch.inference_mode():
        word_features = unit_text_features(tower, store.words)
    return Setup(
        init="pretrained",
        vlm=vlm,
        pad_id=int(tokenizer.pad_token_id),
        plain=plain,
        labelled=WithLabels(plain, store),
        word_embeddings=word_embeddings,
        tower=tower,
        word_features=word_features,
        extract_dtype=extract_dtype,
        end_to_end=end_to_end,
    )


def random_towers(
    encoder_id: str, device: torch.device, dtype: torch.dtype, extract_dtype: torch.dtype
) -> Any:
    """(vision-only tower for the VLM, dual tower for extraction), randomly initialised on ``device``."""
    import transformers

    from core.models import encoder_config, get_encoder_spec
    from core.models.towers import HfClipTower, HfSiglipTower

    spec = get_encoder_spec(encoder_id)
    classes = {
        "hf_clip": (transformers.CLIPModel, transformers.CLIPVisionModel, HfClipTower),
        "hf_siglip": (transformers.SiglipModel, transformers.SiglipVisionModel, HfSiglipTower),
    }
    if spec.kind not in classes or not spec.arch:
        raise NotImplementedError(
            f"--init random --encoder {encoder_id}: needs a transformers CLIP/SigLIP encoder with arch facts in "
            f"the registry (kind {spec.kind!r}); those that qualify: clip-l-336, clip-l-224, siglip-so400m-384, "
            "tiny-hf-clip, tiny-siglip"
        )
    full_cls, vision_cls, tower_cls = classes[spec.kind]
    config = encoder_config(encoder_id)
    with torch.device(device):
        vision = tower_cls(spec, vision_cls(config.vision_config), source=None).to(dtype)
        dual = tower_cls(spec, full_cls(config), source=None).to(extract_dtype)
    return vision, dual


def write_random_store(path: Path, json_path: Path, grid: tuple[int, int], top_n: int, num_words: int) -> Any:
    """A finished label store for the images of ``json_path`` with uniformly random labels (scores descending)."""
    from core.labels import LabelStore, image_records
    from core.labels.store_format import make_meta
    from core.labels.store_writer import StoreWriter

    ids, images = image_records(json_path)
    words = [f"w{i}" for i in range(num_words)]
    meta = make_meta(
        encoder="random",
        words=words,
        dataset={"bench": "random labels"},
        top_n=top_n,
        sign="negated",
        grid=grid,
        num_images=len(ids),
        score_dtype="float32",
    )
    writer = StoreWriter.create_or_resume(path, meta, words, ids, images)
    rng = np.random.default_rng(0)
    m = grid[0] * grid[1]
    index = rng.integers(0, num_words, size=(len(ids), m, top_n), dtype=np.int32)
    score = -np.sort(-rng.uniform(0.01, 0.3, size=(len(ids), m, top_n)), axis=-1).astype(np.float32)
    writer.write(0, index, score)
    writer.commit(len(ids))
    writer.finish()
    return LabelStore.open(path)


def setup_random(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, work: Path) -> Setup:
    """Random weights from the registry's arch facts, built on ``device``; random words and labels."""
    from transformers import AutoModelForCausalLM

    from core.data import LlavaDataset
    from core.labels import WithLabels
    from core.models import VLM, build_adapter, get_encoder_spec, get_llm_spec, llm_config, load_llm

    llm_spec = get_llm_spec(args.llm)
    if not llm_spec.arch:
        raise NotImplementedError(f"--init random --llm {args.llm}: the registry has no arch facts for it")
    if args.llm_path or args.encoder_path:
        raise ValueError("--llm-path/--encoder-path load weights; they go with --init pretrained")
    spec = get_encoder_spec(args.encoder)
    extract_dtype = resolve_dtype(args.extract_dtype, device)
    torch.manual_seed(args.seed)
    print(f"building {args.llm} + {args.encoder} with random weights on {device} ...", file=sys.stderr)
    with torch.device(device):
        llm = AutoModelForCausalLM.from_config(llm_config(args.llm), dtype=dtype)
    llm.to(device)  # a no-op unless from_config initialised outside the device context
    vision, tower = random_towers(args.encoder, device, dtype, extract_dtype)
    d_llm = llm.get_input_embeddings().embedding_dim
    adapter = build_adapter(args.adapter, spec.feature_dim, d_llm).to(device=device, dtype=dtype)
    vlm = VLM(vision, adapter, llm, max_length=llm_spec.max_length, adapter_name=args.adapter)
    vlm.freeze_for_stage1()

    num_words = args.num_words or RANDOM_WORDS
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        table = llm.get_input_embeddings().weight
        rows = torch.randint(table.shape[0], (num_words,), generator=generator)
        word_embeddings = table[rows.to(table.device)].clone()
    word_features = F.normalize(torch.randn(num_words, spec.joint_dim, generator=generator), dim=-1)

    # The loader reads real files: synthetic images at the encoder's size, tiny-llama's tokenizer for the text.
    _, tokenizer = load_llm("tiny-llama")
    json_path, image_root = synthetic_dataset(
        args.num_samples, args.image_size or max(128, spec.image_size), 0
    )
    store = write_random_store(work / "labels", json_path, spec.grid, args.top_n, num_words)
    plain = LlavaDataset(
        json_path, image_root, tokenizer, "plain", image_size=spec.image_size, mean=spec.mean, std=spec.std
    )
    return Setup(
        init="random",
        vlm=vlm,
        pad_id=int(tokenizer.pad_token_id),
        plain=plain,
        labelled=WithLabels(plain, store),
        word_embeddings=word_embeddings,
        tower=tower,
        word_features=word_features.to(device),
        extract_dtype=extract_dtype,
        notes=[
            "random init: labels are uniform over the word list, so de-duplication keeps nearly every "
            "sampled pair (an upper bound on SEA's pair count; real labels repeat words)",
            "random init: captions tokenised with tiny-llama's tokenizer (more tokens per caption than a "
            "real 32K vocabulary)",
        ],
    )


# --- 1. step time, baseline vs SEA ---


def bench_steps(setup: Setup, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Median forward+backward+optimizer step of each objective, alternated AB BA AB ... on the same batches."""
    from core.config import SeaConfig
    from core.labels import make_collate_with_labels
    from core.methods.objective import Objective
    from core.methods.sea_objective import SeaObjective

    vlm = setup.vlm
    if args.gradient_checkpointing:
        vlm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vlm.train()
    loader = DataLoader(
        setup.labelled,
        batch_size=args.batch,
        shuffle=False,
        collate_fn=make_collate_with_labels(setup.pad_id),
        drop_last=True,
    )
    batches = [to_device(b, device) for b in islice(loader, args.num_batches)]
    if len(batches) < args.num_batches:
        raise ValueError(
            f"--num-samples {args.num_samples} gives {len(batches)} batches of {args.batch}, "
            f"--num-batches wants {args.num_batches}; raise --num-samples"
        )
    sea = SeaObjective(
        SeaConfig(top_n=args.top_n, window=args.window),
        word_embeddings=setup.word_embeddings,
        grid=tuple(vlm.vision.spec.grid),
        seed=args.seed,
    ).to(device)
    objectives = {"baseline": Objective(), "sea": sea}
    params = vlm.trainable_parameters() + [p for p in sea.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    metrics: dict[str, list[dict[str, float]]] = {name: [] for name in objectives}

    def step(name: str, batch: dict[str, Any]) -> None:
        out = vlm(batch)
        loss, terms = objectives[name].total(batch, out)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # as stage 1 does
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        metrics[name].append(terms)

    times: dict[str, list[float]] = {name: [] for name in objectives}
    peak: dict[str, int] = {name: 0 for name in objectives}
    pairs: list[float] = []
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        # Alternating the order within each pair cancels drift and any "goes first" effect.
        order = ("baseline", "sea") if i % 2 == 0 else ("sea", "baseline")
        pair: dict[str, float] = {}
        for name in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            pair[name] = timed(lambda name=name, batch=batch: step(name, batch), device)
            if device.type == "cuda":
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device))
        if i >= args.warmup:
            for name in objectives:
                times[name].append(pair[name])
            pairs.append(pair["sea"] / pair["baseline"])
        print(
            f"step {i + 1}/{args.warmup + args.steps}: baseline {pair['baseline'] * 1e3:.1f} ms, "
            f"sea {pair['sea'] * 1e3:.1f} ms",
            file=sys.stderr,
        )
    base, sea_ms = statistics.median(times["baseline"]), statistics.median(times["sea"])
    result: dict[str, Any] = {
        "baseline_ms": base * 1e3,
        "sea_ms": sea_ms * 1e3,
        "ratio": sea_ms / base,
        "overhead_pct": (sea_ms / base - 1) * 100,
        "paired_ratio_median": statistics.median(pairs),
        "baseline_ms_all": [t * 1e3 for t in times["baseline"]],
        "sea_ms_all": [t * 1e3 for t in times["sea"]],
        "sea_pairs_mean": statistics.fmean(m["pairs"] for m in metrics["sea"][args.warmup :]),
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "distinct_batches": len(batches),
        "visual_tokens": vlm.num_visual_tokens,
        "num_words": int(setup.word_embeddings.shape[0]),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
    }
    if device.type == "cuda":
        result["peak_mem_gib"] = {k: v / 2**30 for k, v in peak.items()}
    return result


# --- 2. data loading, plain vs labelled items ---


def bench_loader(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds per item fetched through a DataLoader, with and without the SEA label rows."""
    from core.data import make_collate
    from core.labels import make_collate_with_labels

    workers = args.loader_workers
    loaders = {
        name: DataLoader(
            dataset,
            batch_size=args.batch,
            shuffle=False,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
            drop_last=True,
        )
        for name, dataset, collate in (
            ("plain", setup.plain, make_collate(setup.pad_id)),
            ("labelled", setup.labelled, make_collate_with_labels(setup.pad_id)),
        )
    }

    def per_item(loader: Iterable[dict[str, Any]]) -> float:
        start, items = time.perf_counter(), 0
        for batch in loader:
            items += len(batch["ids"])
        return (time.perf_counter() - start) / items

    for loader in loaders.values():  # warm: page cache, worker start-up
        per_item(loader)
    seconds: dict[str, list[float]] = {name: [] for name in loaders}
    for r in range(args.loader_repeats):
        for name in ("plain", "labelled") if r % 2 == 0 else ("labelled", "plain"):
            seconds[name].append(per_item(loaders[name]))
    plain, labelled = statistics.median(seconds["plain"]), statistics.median(seconds["labelled"])
    # The label read alone, without the loader around it: less noisy than the difference of two passes.
    rows = range(len(setup.labelled))
    reads = []
    for _ in range(args.loader_repeats):
        start = time.perf_counter()
        for i in rows:
            setup.labelled.label_rows(i)
        reads.append((time.perf_counter() - start) / len(rows))
    return {
        "plain_ms_per_item": plain * 1e3,
        "labelled_ms_per_item": labelled * 1e3,
        "ratio": labelled / plain,
        "label_read_ms_per_item": statistics.median(reads) * 1e3,
        "items_per_pass": len(loaders["plain"]) * args.batch,
        "repeats": args.loader_repeats,
        "workers": workers,
    }


# --- 3. label extraction vs the encoder's forward pass ---


def bench_extraction(setup: Setup, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Images/s of (a) joint patch features alone and (b) joint features + top-n labels against the word list."""
    from core.sea_labels import extract_labels

    tower, words = setup.tower, setup.word_features
    size = tower.spec.image_size
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.extract_images, 3, size, size, generator=generator).to(device)
    batches = images.split(args.extract_batch)

    def encoder_only(pixels: Iterable[Tensor]) -> None:
        for px in pixels:
            tower.joint_patch_features(px)

    def full(pixels: Iterable[Tensor]) -> None:
        # What core.labels.extract_store does per batch, minus image decoding and the writes.
        for px in pixels:
            feats = tower.joint_patch_features(px)
            index, score = extract_labels(
                feats.float(), words, top_n=args.top_n, negate=True, chunk_size=args.chunk_size
            )
            index.cpu(), score.cpu()

    paths = {"encoder": encoder_only, "extraction": full}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    with torch.inference_mode():
        for fn in paths.values():
            fn(batches[:1])  # warm-up
        for r in range(args.extract_repeats):
            for name in ("encoder", "extraction") if r % 2 == 0 else ("extraction", "encoder"):
                seconds[name].append(timed(lambda fn=paths[name]: fn(batches), device))
    rate = {name: len(images) / statistics.median(s) for name, s in seconds.items()}
    result: dict[str, Any] = {
        "images": len(images),
        "batch": args.extract_batch,
        "num_words": int(words.shape[0]),
        "top_n": args.top_n,
        "chunk_size": args.chunk_size,
        "dtype": str(setup.extract_dtype).removeprefix("torch."),
        "encoder_images_per_s": rate["encoder"],
        "extraction_images_per_s": rate["extraction"],
        "throughput_ratio": rate["extraction"] / rate["encoder"],
        "repeats": args.extract_repeats,
    }
    if setup.end_to_end is not None:
        result["extract_store"] = setup.end_to_end
    return result


# --- report ---


def markdown(report: dict[str, Any]) -> str:
    step, loader, ext = report["step"], report["loader"], report["extraction"]
    rows = [
        ("device", report["device"]),
        ("llm / encoder", f"{report['llm']} / {report['encoder']}"),
        ("init / dtype", f"{report['init']} / {report['dtype']}"),
        ("batch / visual tokens / words", f"{step['batch']} / {step['visual_tokens']} / {step['num_words']}"),
        ("step, baseline (median)", f"{step['baseline_ms']:.1f} ms"),
        ("step, SEA (median)", f"{step['sea_ms']:.1f} ms"),
        ("SEA / baseline", f"{step['ratio']:.3f} ({step['overhead_pct']:+.1f} %)"),
        ("SEA / baseline, median of paired steps", f"{step['paired_ratio_median']:.3f}"),
        ("SEA pairs per step (mean)", f"{step['sea_pairs_mean']:.0f}"),
    ]
    if "peak_mem_gib" in step:
        mem = step["peak_mem_gib"]
        rows.append(("peak memory baseline / SEA", f"{mem['baseline']:.2f} / {mem['sea']:.2f} GiB"))
    rows += [
        ("loader, plain items", f"{loader['plain_ms_per_item']:.2f} ms/item"),
        ("loader, labelled items", f"{loader['labelled_ms_per_item']:.2f} ms/item"),
        ("loader labelled / plain", f"{loader['ratio']:.3f}"),
        ("label rows read alone", f"{loader['label_read_ms_per_item']:.3f} ms/item"),
        (f"(a) encoder joint features ({ext['dtype']})", f"{ext['encoder_images_per_s']:.1f} img/s"),
        (
            f"(b) + extract_labels vs {ext['num_words']} words",
            f"{ext['extraction_images_per_s']:.1f} img/s",
        ),
        ("(b) / (a) throughput", f"{ext['throughput_ratio']:.3f}"),
    ]
    if "extract_store" in ext:
        e2e = ext["extract_store"]
        rows.append(
            (
                "extract_store end to end (loads, text tower, decoding, writes)",
                f"{e2e['images_per_s']:.1f} img/s ({e2e['images']} images)",
            )
        )
    lines = ["| quantity | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default="tiny-llama")
    p.add_argument("--encoder", default="tiny-clip")
    p.add_argument("--adapter", default="mlp2x_gelu")
    p.add_argument("--init", choices=("auto", "pretrained", "random"), default="auto",
                   help="auto: pretrained for tiny ids, random for real ones")  # fmt: skip
    p.add_argument("--llm-path", default=None, help="pretrained init: local LLM checkpoint")
    p.add_argument("--encoder-path", default=None, help="pretrained init: local encoder checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="VLM dtype; auto = bf16 on CUDA, float32 elsewhere")
    p.add_argument("--extract-dtype", default="float32",
                   help="label-extraction encoder dtype (extract_store loads float32)")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=30, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per method first")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--num-batches", type=int, default=4, help="distinct pre-collated batches, cycled")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--num-samples", type=int, default=256, help="synthetic dataset size")
    p.add_argument("--image-size", type=int, default=None,
                   help="synthetic image size; default max(128, encoder image size)")  # fmt: skip
    p.add_argument("--num-words", type=int, default=None,
                   help=f"word list size; default: caption words (pretrained), {RANDOM_WORDS} (random)")  # fmt: skip
    p.add_argument("--loader-workers", type=int, default=0)
    p.add_argument("--loader-repeats", type=int, default=10)
    p.add_argument("--extract-images", type=int, default=256)
    p.add_argument("--extract-batch", type=int, default=32, help="as sea.label_batch_size")
    p.add_argument("--extract-repeats", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=16384, help="extract_labels words per chunk (0: one)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    positive = ("steps", "batch", "num_batches", "num_samples", "extract_images", "extract_batch")
    for name in positive + ("loader_repeats", "extract_repeats", "top_n", "window"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.loader_workers < 0 or args.chunk_size < 0:
        p.error("--warmup, --loader-workers and --chunk-size must be >= 0")
    if args.num_words is not None and args.num_words < 1:
        p.error(f"--num-words must be >= 1, got {args.num_words}")
    args.chunk_size = args.chunk_size or None
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import transformers

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    init = resolve_init(args.init, args.llm, args.encoder)
    with tempfile.TemporaryDirectory(prefix="sea-bench-") as tmp:
        build = setup_pretrained if init == "pretrained" else setup_random
        setup = build(args, device, dtype, Path(tmp))
        print("step time ...", file=sys.stderr)
        step = bench_steps(setup, args, device)
        print("data loader ...", file=sys.stderr)
        loader = bench_loader(setup, args)
        print("label extraction ...", file=sys.stderr)
        extraction = bench_extraction(setup, args, device)
    report = {
        "device": describe_device(device),
        "llm": args.llm,
        "encoder": args.encoder,
        "init": init,
        "dtype": str(dtype).removeprefix("torch."),
        "step": step,
        "loader": loader,
        "extraction": extraction,
        "notes": setup.notes,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    table = markdown(report)
    print(table)
    for note in setup.notes:
        print(f"\n- {note}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report, "table": table}, indent=2) + "\n")
    print(f"\nwritten to {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()

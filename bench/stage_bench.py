"""Stage-1 and stage-2 training steps: median step time, samples/s, tokens/s and model FLOPs utilisation (MFU).

Run: ``uv run --frozen python bench/stage_bench.py [--llm tiny-llama --encoder tiny-clip --batch 8 --steps 10 ...]``.

Tiny ids load as training loads them (``build_vlm``). Real ids (e.g. ``--llm vicuna-7b --encoder clip-l-336``)
are built from the registry's ``arch`` facts with random weights directly on the device, nothing downloaded,
and read the synthetic data through tiny-llama's tokenizer (its ids are valid in every vocabulary).

Model FLOPs per step = k * N_llm * T + 6 * N_adapter * V + 2 * N_vision * P, where T is the real (unpadded)
tokens of the batch after splicing in the visual tokens, V the visual tokens, P the tokens through the vision
tower (patches + prefix, per image); k = 4 in stage 1 (frozen LLM: forward + activation gradients) and 6 in
stage 2 (forward + activation and weight gradients). N counts matmul weights only (linear layers including the
LM head, attention in-projections, the patch convolution), not embedding lookups or norms; the attention
score matmuls (about 2 % of a 7B step at 600 tokens) and gradient-checkpointing recompute are not counted.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sea_bench is a sibling script, not a package
from sea_bench import describe_device, resolve_device, resolve_dtype, timed, to_device  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "stage_bench.json"
# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s), matched against the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


# --- peak FLOP/s ---


def measure_matmul_tflops(device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` TFLOP/s of one ``size``-square float32 matmul: the CPU's practical peak."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b  # warm-up: thread pool, allocator
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best / 1e12


def resolve_peak(peak: float | None, device: torch.device) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from); None where no peak is known for a CUDA device."""
    if peak is not None:
        return peak, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in PEAK_BF16_TFLOPS.items():
            if key in name:
                return value, f"{key} dense bf16 data-sheet peak"
        return None, f"no known peak for {name!r}; pass --peak-tflops"
    if device.type == "cpu":
        return measure_matmul_tflops(device), "measured: best float32 2048^3 matmul on this CPU"
    return None, f"no known peak for {device}; pass --peak-tflops"


# --- FLOP counting ---


def matmul_params(module: nn.Module) -> int:
    """Weights that take part in a matmul per token: linear, attention in-projection and conv weights."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            total += m.weight.numel()
        elif isinstance(m, nn.MultiheadAttention):
            # open_clip's attention keeps its q/k/v projection as bare parameters (out_proj is a Linear).
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                w = getattr(m, name, None)
                total += w.numel() if w is not None else 0
    return total


def spliced_lengths(batch: dict[str, Any], num_visual: int, max_length: int) -> Tensor:
    """Each sample's sequence length after ``VLM.splice``: the image token becomes ``num_visual`` tokens, then truncated."""
    has_image = batch["has_image"].long()
    return (batch["attention_mask"].sum(dim=1) + has_image * (num_visual - 1)).clamp(max=max_length)


def step_flops(batch: dict[str, Any], vlm: Any, stage: int, counts: dict[str, int]) -> dict[str, float]:
    """Model FLOPs of one training step on ``batch`` (formula in the module docstring)."""
    m = vlm.num_visual_tokens
    tokens = int(spliced_lengths(batch, m, vlm.max_length).sum())
    images = int(batch["has_image"].sum())
    spec = vlm.vision.spec
    tower_tokens = images * (spec.num_patches + spec.num_prefix_tokens)
    k = 4 if stage == 1 else 6
    return {
        "tokens": tokens,
        "images": images,
        "llm": k * counts["llm"] * tokens,
        "adapter": 6 * counts["adapter"] * images * m,
        "vision": 2 * counts["vision"] * tower_tokens,
    }


# --- models and data ---


def build_random_vlm(
    llm_id: str, encoder_id: str, adapter: str, device: torch.device, dtype: torch.dtype
) -> Any:
    """A VLM as ``build_vlm`` composes it, with random weights built on ``device`` from the registry's arch facts."""
    import transformers
    from transformers import AutoModelForCausalLM

    from core.models import VLM, build_adapter, encoder_config, get_encoder_spec, get_llm_spec, llm_config
    from core.models.towers import HfClipTower, HfSiglipTower

    spec = get_encoder_spec(encoder_id)
    classes = {
        "hf_clip": (transformers.CLIPVisionModel, HfClipTower),
        "hf_siglip": (transformers.SiglipVisionModel, HfSiglipTower),
    }
    if spec.kind not in classes or not spec.arch:
        raise NotImplementedError(
            f"--encoder {encoder_id}: random init needs a transformers CLIP/SigLIP encoder with arch facts "
            f"(kind {spec.kind!r}); e.g. clip-l-336, clip-l-224, siglip-so400m-384, tiny-hf-clip"
        )
    llm_spec = get_llm_spec(llm_id)
    print(f"building {llm_id} + {encoder_id} with random weights on {device} ...", file=sys.stderr)
    vision_cls, tower_cls = classes[spec.kind]
    with torch.device(device):
        llm = AutoModelForCausalLM.from_config(llm_config(llm_id), dtype=dtype)
        vision = tower_cls(spec, vision_cls(encoder_config(encoder_id).vision_config), source=None)
    llm.to(device)  # a no-op unless from_config initialised outside the device context
    vision.to(device=device, dtype=dtype)
    d_llm = llm.get_input_embeddings().embedding_dim
    module = build_adapter(adapter, spec.feature_dim, d_llm).to(device=device, dtype=dtype)
    return VLM(vision, module, llm, max_length=llm_spec.max_length, adapter_name=adapter)


def load_vlm(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, str]:
    """(vlm on ``device``, tokenizer for the data, init) for the requested ids."""
    from core.models import build_vlm, get_encoder_spec, get_llm_spec, load_llm

    tiny = get_llm_spec(args.llm).builder is not None and get_encoder_spec(args.encoder).builder is not None
    if args.init == "pretrained" or (args.init == "auto" and tiny):
        vlm, tokenizer = build_vlm(args.llm, args.encoder, args.adapter, dtype=dtype)
        return vlm.to(device), tokenizer, "pretrained"
    torch.manual_seed(args.seed)
    vlm = build_random_vlm(args.llm, args.encoder, args.adapter, device, dtype)
    _, tokenizer = load_llm("tiny-llama")
    return vlm, tokenizer, "random"


def stage_batches(
    vlm: Any, tokenizer: Any, stage: int, args: argparse.Namespace, device: torch.device
) -> list:
    """Pre-collated batches on ``device``: captions (plain, square) for stage 1, conversations (chat, pad) for 2."""
    from core.data import (
        InstructSpec,
        LlavaDataset,
        SyntheticSpec,
        ensure_instruct,
        ensure_synthetic,
        make_collate,
    )
    from core.models import get_llm_spec

    spec = vlm.vision.spec
    n, size = args.batch * args.num_batches, max(128, spec.image_size)
    if stage == 1:
        json_path, root = ensure_synthetic(SyntheticSpec(num_samples=n, seed=args.seed, image_size=size))
        template, mode = "plain", "square"
    else:
        json_path, root = ensure_instruct(InstructSpec(num_samples=n, seed=args.seed, image_size=size))
        template, mode = get_llm_spec(args.llm).chat_template, "pad"
    dataset = LlavaDataset(
        json_path, root, tokenizer, template, image_size=spec.image_size, mean=spec.mean, std=spec.std,
        image_mode=mode,
    )  # fmt: skip
    loader = DataLoader(dataset, batch_size=args.batch, collate_fn=make_collate(tokenizer.pad_token_id))
    return [to_device(b, device) for b in islice(loader, args.num_batches)]


# --- the benchmark ---


def bench_stage(
    vlm: Any, batches: list, stage: int, args: argparse.Namespace, device: torch.device, peak: float | None
) -> dict[str, Any]:
    """Median forward + backward + clip + AdamW step of one stage over the cycled batches."""
    if stage == 1:
        vlm.freeze_for_stage1()
    else:
        vlm.freeze_for_stage2()
    params = vlm.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    vlm.train()

    def step(batch: dict[str, Any]) -> None:
        # As run_stage does: bf16 autocast on CUDA (a no-op on weights already in bf16).
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = vlm(batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        seconds = timed(lambda i=i: step(batches[i % len(batches)]), device)
        if i >= args.warmup:
            times.append(seconds)
        print(
            f"stage {stage} step {i + 1}/{args.warmup + args.steps}: {seconds * 1e3:.1f} ms", file=sys.stderr
        )

    counts = {
        "llm": matmul_params(vlm.llm),
        "adapter": matmul_params(vlm.adapter),
        "vision": matmul_params(vlm.vision),
    }
    per_batch = [step_flops(b, vlm, stage, counts) for b in batches]
    # Means over the cycled batches, weighted by how often each was timed.
    used = [per_batch[i % len(batches)] for i in range(args.warmup, args.warmup + args.steps)]
    mean = {key: statistics.fmean(f[key] for f in used) for key in per_batch[0]}
    flops = mean["llm"] + mean["adapter"] + mean["vision"]
    median = statistics.median(times)
    achieved = flops / median
    result: dict[str, Any] = {
        "stage": stage,
        "batch": args.batch,
        "tokens_per_step": mean["tokens"],
        "images_per_step": mean["images"],
        "step_ms": median * 1e3,
        "step_ms_all": [t * 1e3 for t in times],
        "samples_per_s": args.batch / median,
        "tokens_per_s": mean["tokens"] / median,
        "model_flops_per_step": flops,
        "flops_parts": {k: mean[k] for k in ("llm", "adapter", "vision")},
        "k": 4 if stage == 1 else 6,
        "matmul_params": counts,
        "trainable_params": sum(p.numel() for p in params),
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (peak * 1e12) if peak else None,
    }
    if device.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    vlm.zero_grad(set_to_none=True)  # stage 1's adapter grads must not leak into stage 2's first step
    return result


def markdown(report: dict[str, Any]) -> str:
    head = "| device | llm / encoder | dtype | stage | batch | tokens/step | step ms | samples/s | tokens/s | TFLOP/s | MFU |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in report["stages"]:
        mfu = f"{r['mfu'] * 100:.1f} %" if r["mfu"] is not None else "n/a"
        lines.append(
            f"| {report['device']} | {report['llm']} / {report['encoder']} | {report['dtype']} | {r['stage']} "
            f"| {r['batch']} | {r['tokens_per_step']:.0f} | {r['step_ms']:.1f} | {r['samples_per_s']:.1f} "
            f"| {r['tokens_per_s']:.0f} | {r['achieved_tflops']:.3g} | {mfu} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llm", default="tiny-llama")
    p.add_argument("--encoder", default="tiny-clip")
    p.add_argument("--adapter", default="mlp2x_gelu")
    p.add_argument("--init", choices=("auto", "pretrained", "random"), default="auto",
                   help="auto: pretrained (build_vlm) for tiny ids, random weights for real ones")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="VLM dtype; auto = bf16 on CUDA, float32 elsewhere")
    p.add_argument("--stages", default="1,2", help="comma-separated subset of 1,2")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps per stage")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per stage first")
    p.add_argument("--num-batches", type=int, default=2, help="distinct pre-collated batches, cycled")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for MFU; default: data sheet bf16 for H100/H200/A100, measured matmul on CPU")  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    for name in ("batch", "steps", "num_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        p.error(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    try:
        args.stages = sorted({int(s) for s in args.stages.split(",")})
    except ValueError:
        p.error(f"--stages {args.stages!r}: use a comma-separated subset of 1,2 (e.g. 1,2 or 2)")
    if not args.stages or not set(args.stages) <= {1, 2}:
        p.error(f"--stages {args.stages}: use a comma-separated subset of 1,2")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import transformers

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    peak, peak_source = resolve_peak(args.peak_tflops, device)
    vlm, tokenizer, init = load_vlm(args, device, dtype)
    if args.gradient_checkpointing:
        vlm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    stages = []
    for stage in args.stages:
        batches = stage_batches(vlm, tokenizer, stage, args, device)
        if len(batches) < args.num_batches:
            raise ValueError(
                f"stage {stage}: got {len(batches)} batches, --num-batches wants {args.num_batches}"
            )
        stages.append(bench_stage(vlm, batches, stage, args, device, peak))
    report = {
        "device": describe_device(device),
        "llm": args.llm,
        "encoder": args.encoder,
        "init": init,
        "dtype": str(dtype).removeprefix("torch."),
        "peak_tflops": peak,
        "peak_source": peak_source,
        "stages": stages,
        "formula": "model FLOPs/step = k*N_llm*T + 6*N_adapter*V + 2*N_vision*P; k=4 (stage 1), 6 (stage 2)",
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
    peak_text = f"{peak:.3g} TFLOP/s" if peak else "unknown"
    print(f"\npeak: {peak_text} ({peak_source}); init: {init}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report, "table": table}, indent=2) + "\n")
    print(f"written to {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()

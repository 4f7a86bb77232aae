"""The GPU check: the real trainer at full size on one GPU, in minutes (``just gpu-check``; BENCHMARKS.md).

Random-init full-size vicuna-7b + clip-l-336 (registry configs, built on the GPU in bf16: nothing downloaded;
the synthetic data is read through tiny-llama's tokenizer, whose ids are valid in every vocabulary) go
through ``core.train.stage.run_stage`` with a ``make_stage_job`` job: 1 worker, a 1-rank NCCL group,
stage 1 under ZeRO-2 and stage 2 under ZeRO-3, bf16, gradient checkpointing. Parts, each skipped when
``--budget-s`` would not cover it:

1. stage 1 (adapter) with LLaVA's loss, then with SEA's and with BASIC's: step time, samples/s, MFU,
   measured peak memory against ``grid.memory``'s estimate for the same settings; SEA's and BASIC's
   step-time and memory overhead over LLaVA's;
2. SEA's label extraction (the label step, text tower included) in images/s against the encoder's
   forward-only bound (the tower's patch features on random pixels, same batch size);
3. stage 2 (adapter + LLM) from stage 1's adapter: the same figures.

Step times are the trainer's own ``samples_per_s`` (one optimizer step per log line), the first
``--warmup`` steps left out. Model FLOPs as in bench/stage_bench.py (k = 4 in stage 1, 6 in stage 2;
checkpointing's recompute not counted). Prints one table and the rows for BENCHMARKS.md, and writes
them to ``--out`` (JSON). ``--tiny``: tiny-llama + tiny-clip (as training loads them), for a CPU.

``--cpu``: the real path on a CPU (what CI runs): the same registry architectures and random weights,
cut to ``--layers`` LLM layers (default 1; vision and text towers 2), micro-batch 1, one step per part.
Every line a GPU run takes runs, but the CUDA kernels. On one 80 GB GPU, stage 2 at 7B under ZeRO-3 on
one rank (~108 GB: 16 bytes a trained parameter) cannot fit at full depth: it runs ``--stage2-layers``
of the LLM's layers (default 16), and its row says so; its estimate is for that depth too.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, not a package
from sea_bench import describe_device  # noqa: E402
from stage_bench import resolve_peak  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu_check.json"
GIB = 2**30
METHODS = ("llava", "sea", "basic")


@dataclass
class Budget:
    """Wall-clock seconds left for the check; a part starts only when its expected time fits."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def fits(self, expected: float) -> bool:
        return self.left() >= expected


@dataclass
class Row:
    """One measured part: a stage run or the label extraction."""

    part: str
    status: str = "ok"
    seconds: float = 0.0
    step_s: float | None = None
    samples_per_s: float | None = None
    tokens_per_step: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    estimate_gib: float | None = None
    images_per_s: float | None = None
    bound_images_per_s: float | None = None
    notes: str = ""


# --- random full-size weights through the trainer's own loading calls ---


@dataclass
class Depth:
    """How many layers the random models get (None: the registry's); stage 2 may be cut further."""

    llm: int | None = None
    vision: int | None = None

    def label(self, llm_id: str) -> str:
        from core.models.llm import get_llm_spec

        return "" if self.llm is None else f" ({self.llm}/{get_llm_spec(llm_id).num_layers} LLM layers)"


DEPTH = Depth()  # set per part by `run_parts`; read by the loaders when the trainer builds the model


def _random_llm(llm_id: str, device: torch.device) -> Callable[..., tuple[Any, Any]]:
    """A stand-in for ``core.models.llm.load_llm``: the registry config with random weights, built in the
    requested dtype on ``device`` (under ZeRO-3 inside transformers' DeepSpeed integration, partitioned
    as it is built), with tiny-llama's tokenizer."""
    from transformers import AutoModelForCausalLM

    from core.models.llm import get_llm_spec, llm_config, load_llm

    def load(_: str, *, path: Any = None, dtype: Any = None, zero3_config: Any = None) -> tuple[Any, Any]:
        config, dtype = llm_config(llm_id), dtype or torch.float32
        if DEPTH.llm is not None:
            config.num_hidden_layers = DEPTH.llm
        if zero3_config is None:
            with torch.device(device):
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            import copy

            from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

            keep = HfDeepSpeedConfig(copy.deepcopy(dict(zero3_config)))
            try:
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            finally:
                unset_hf_deepspeed_config()
                del keep
        _, tokenizer = load_llm("tiny-llama")
        tokenizer.model_max_length = get_llm_spec(llm_id).max_length
        return model, tokenizer

    return load


def _random_encoder(encoder_id: str, device: torch.device) -> Callable[..., Any]:
    """A stand-in for ``core.models.encoder_loading.load_encoder``: the registry's CLIP/SigLIP config with random
    weights on ``device``; the text tower reads words through tiny-hf-clip's tokenizer."""
    from core.models.encoder_loading import _hf_dual_classes, load_encoder
    from core.models.vision import encoder_config, get_encoder_spec

    spec = get_encoder_spec(encoder_id)

    def load(_: str, *, path: Any = None, text_tower: bool = True, dtype: Any = torch.float32) -> Any:
        full_cls, vision_cls, tower_cls = _hf_dual_classes(spec)
        config = encoder_config(encoder_id)
        if DEPTH.vision is not None:
            config.vision_config.num_hidden_layers = DEPTH.vision
            config.text_config.num_hidden_layers = DEPTH.vision
        with torch.device(device):
            model = full_cls(config) if text_tower else vision_cls(config.vision_config)
        tower = tower_cls(spec, model.to(dtype), source=None)
        if text_tower:
            from transformers import AutoTokenizer

            # `load_encoder` is the real one (bound before the patch): tiny-hf-clip is built locally.
            tower._tokenizer = AutoTokenizer.from_pretrained(load_encoder("tiny-hf-clip").source)
        return tower

    return load


@contextlib.contextmanager
def random_weights(llm_id: str, encoder_id: str, device: torch.device) -> Iterator[None]:
    """The trainer and the label step load random full-size models instead of reading checkpoints."""
    import core.models.encoder_loading as encoder_loading
    import core.models.vlm as vlm_module

    saved = (vlm_module.load_llm, vlm_module.load_encoder, encoder_loading.load_encoder)
    encoder = _random_encoder(encoder_id, device)
    vlm_module.load_llm, vlm_module.load_encoder, encoder_loading.load_encoder = (
        _random_llm(llm_id, device),
        encoder,
        encoder,
    )
    try:
        yield
    finally:
        vlm_module.load_llm, vlm_module.load_encoder, encoder_loading.load_encoder = saved


# --- what a stage run used: its model and its batches ---


@dataclass
class Seen:
    vlm: Any = None
    lengths: list[list[int]] = field(default_factory=list)  # unpadded tokens of each sample, per micro-batch
    images: list[int] = field(default_factory=list)


@contextlib.contextmanager
def watching() -> Iterator[Seen]:
    """Record the model ``build_model`` returns and each micro-batch ``to_device`` moves (for FLOPs)."""
    import core.train.loop as loop
    import core.train.setup as setup

    seen = Seen()
    build, move = setup.build_model, loop.to_device

    def build_model(*args: Any, **kwargs: Any) -> Any:
        vlm, tokenizer = build(*args, **kwargs)
        seen.vlm = vlm
        return vlm, tokenizer

    def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        has_image = batch["has_image"].long()
        seen.lengths.append((batch["attention_mask"].sum(dim=1) - has_image).tolist())
        seen.images.append(int(has_image.sum()))
        return move(batch, device)

    setup.build_model, loop.to_device = build_model, to_device
    try:
        yield seen
    finally:
        setup.build_model, loop.to_device = build, move


def matmul_params(module: nn.Module) -> int:
    """Weights in a matmul per token (as bench/stage_bench.py), whole even when ZeRO-3 partitions them."""
    total = 0
    for m in module.modules():
        weights = [m.weight] if isinstance(m, nn.Linear | nn.Conv2d) else []
        if isinstance(m, nn.MultiheadAttention):
            weights = [getattr(m, n, None) for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight")]
            weights.append(getattr(m, "v_proj_weight", None))
        total += sum(int(getattr(w, "ds_numel", w.numel())) for w in weights if w is not None)
    return total


def flops_per_step(seen: Seen, stage: str, steps: int) -> tuple[float, float]:
    """(model FLOPs, tokens) of one optimizer step, averaged over the micro-batches the run saw."""
    vlm = seen.vlm
    m, spec = vlm.num_visual_tokens, vlm.vision.spec
    k = 4 if stage == "stage1" else 6
    llm, adapter, vision = matmul_params(vlm.llm), matmul_params(vlm.adapter), matmul_params(vlm.vision)
    flops = tokens = 0.0
    for lengths, images in zip(seen.lengths, seen.images, strict=True):
        spliced = sum(min(n + (m if images else 0), vlm.max_length) for n in lengths)
        tower = images * (spec.num_patches + spec.num_prefix_tokens)
        flops += k * llm * spliced + 6 * adapter * images * m + 2 * vision * tower
        tokens += spliced
    per = len(seen.lengths) / max(1, steps)
    return flops / len(seen.lengths) * per, tokens / len(seen.lengths) * per


# --- the parts ---


def trial(args: argparse.Namespace, method: str) -> Any:
    from core.config import TrialConfig

    common = {
        "precision": args.precision,
        "gradient_checkpointing": True,
        "micro_batch_size": args.micro_batch,
        "global_batch_size": args.micro_batch,
        "max_steps": args.warmup + args.steps,
        "log_every": 1,
        "checkpoint_minutes": None,
    }
    samples = max(args.micro_batch * (args.warmup + args.steps), args.label_images)
    # BASIC supervises half the LLM's layers by default: none of a 1-layer cut; then the one it has.
    basic = {"layers": 1} if args.cpu and args.layers < 2 else {}
    return TrialConfig.model_validate(
        {
            "model": {"llm": args.llm, "encoder": args.encoder},
            "method": {"name": method, "basic": basic},
            "data": {
                "stage1": {"source": "synthetic", "synthetic": {"num_samples": samples, "seed": 5}},
                "stage2": {"source": "synthetic", "synthetic": {"num_samples": samples, "seed": 6}},
            },
            "stage1": {**common, "deepspeed": {"zero": 2}},
            "stage2": {**common, "enabled": True, "deepspeed": {"zero": 3}},
            "eval": {"enabled": False},
        }
    )


def _peak_reset(device: torch.device) -> int:
    """Free what earlier parts left and start counting; the bytes still allocated (not this run's)."""
    gc.collect()
    if device.type != "cuda":
        return 0
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def _peak_gib(device: torch.device, before: int) -> float | None:
    return (torch.cuda.max_memory_allocated(device) - before) / GIB if device.type == "cuda" else None


def run_stage_part(
    args: argparse.Namespace,
    part: str,
    cfg: Any,
    stage: str,
    out: Path,
    device: torch.device,
    peak_tflops: float | None,
    **paths: str,
) -> Row:
    """One stage through the trainer: its step time, samples/s, MFU, peak memory and the estimate."""
    from core.train.checkpoint import LocalCheckpoints
    from core.train.job import make_stage_job
    from core.train.stage import run_stage
    from grid.memory import model_facts, stage_memory, stage_settings

    out.mkdir(parents=True, exist_ok=True)
    checkpoints = LocalCheckpoints()
    before = _peak_reset(device)
    t0 = time.perf_counter()
    with watching() as seen:
        run_stage(make_stage_job(cfg, stage, out, **paths), checkpoints=checkpoints, device=device)
    seconds = time.perf_counter() - t0
    rates = [m["metrics"][f"{stage}/samples_per_s"] for m in checkpoints.messages][args.warmup :]
    rate = statistics.median(rates)
    step_s = args.micro_batch / rate
    flops, tokens = flops_per_step(seen, stage, len(checkpoints.messages))
    mfu = flops / step_s / (peak_tflops * 1e12) if peak_tflops else None
    longest = max(max(lengths) for lengths in seen.lengths) + seen.vlm.num_visual_tokens
    seen.vlm = None  # the next part's peak must not include this model
    peak_gib = _peak_gib(device, before)
    facts = at_depth(model_facts(cfg.model.llm, cfg.model.encoder, cfg.model.adapter), DEPTH)
    estimate = stage_memory(facts, stage_settings(cfg, stage), tokens=min(longest, facts.max_length))
    return Row(
        part=part,
        seconds=seconds,
        step_s=step_s,
        samples_per_s=rate,
        tokens_per_step=tokens,
        mfu=mfu,
        peak_gib=peak_gib,
        # The registry gives no size for tiny models: no estimate.
        estimate_gib=estimate.total / GIB if facts.llm_params else None,
    )


def at_depth(facts: Any, depth: Depth) -> Any:
    """The registry's model facts for the layers this part builds (the estimate of a cut model)."""
    import dataclasses

    out = facts
    if depth.llm is not None and facts.llm_params:
        d = facts.hidden
        per_layer = 2 * d * facts.q_dim + 2 * d * facts.kv_dim + 3 * d * facts.ffn
        params = facts.llm_params - (facts.layers - depth.llm) * per_layer
        out = dataclasses.replace(out, layers=depth.llm, llm_params=params)
    if depth.vision is not None and facts.encoder_layers:
        h, ffn = facts.encoder_hidden, facts.encoder_ffn
        params = facts.encoder_params - (facts.encoder_layers - depth.vision) * (4 * h * h + 2 * h * ffn)
        out = dataclasses.replace(out, encoder_layers=depth.vision, encoder_params=params)
    return out


@contextlib.contextmanager
def timing_fill() -> Iterator[list[tuple[float, int]]]:
    """(seconds, images) of each call of the label step's extraction loop (``_fill``: decoding, the
    encoder's forward, scoring, writing), without the encoder's loading and the words' encoding."""
    import core.labels.extract as extract

    calls: list[tuple[float, int]] = []
    fill = extract._fill

    def timed_fill(writer: Any, *args: Any, **kwargs: Any) -> int:
        start, done = time.perf_counter(), writer.done
        ran = fill(writer, *args, **kwargs)
        calls.append((time.perf_counter() - start, writer.done - done))
        return ran

    extract._fill = timed_fill
    try:
        yield calls
    finally:
        extract._fill = fill


def label_part(args: argparse.Namespace, cfg: Any, root: Path, device: torch.device) -> tuple[Row, Path]:
    """SEA's label step (the trainer's own) in images/s, against the tower's forward-only rate."""
    from core.models.encoder_loading import load_encoder
    from core.pipeline import prepare_labels

    t0 = time.perf_counter()
    with timing_fill() as calls:
        labels = prepare_labels(cfg, root)
    seconds = time.perf_counter() - t0
    fill_s, images = sum(c[0] for c in calls), sum(c[1] for c in calls)
    tower = load_encoder(cfg.model.encoder, text_tower=True).to(device)  # the joint space needs it
    batch = min(cfg.method.sea.label_batch_size, max(1, images))
    size = tower.spec.image_size
    pixels = torch.randn(batch, 3, size, size, device=device)
    with torch.inference_mode():
        tower.joint_patch_features(pixels)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(args.bound_repeats):
            tower.joint_patch_features(pixels)
        _sync(device)
    bound = batch * args.bound_repeats / (time.perf_counter() - start)
    row = Row(
        "labels (SEA)",
        seconds=seconds,
        images_per_s=images / fill_s if fill_s else None,
        bound_images_per_s=bound,
        notes=f"{images} images, batch {batch}; step {seconds:.1f}s with loading",
    )
    return row, labels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- output ---


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row], base: dict[str, Row]) -> str:
    head = (
        "| part | status | step s | samples/s | tokens/step | MFU | peak GiB | estimate GiB | est./peak "
        "| overhead step | overhead mem | images/s | forward bound | notes |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ref = base.get(r.part.split(" ")[0])
        step_over = mem_over = None
        if ref is not None and ref is not r and r.step_s and ref.step_s:
            step_over = r.step_s / ref.step_s - 1
            if r.peak_gib and ref.peak_gib:
                mem_over = r.peak_gib / ref.peak_gib - 1
        ratio = r.estimate_gib / r.peak_gib if r.estimate_gib and r.peak_gib else None
        lines.append(
            f"| {r.part} | {r.status} | {_fmt(r.step_s, '.3f')} | {_fmt(r.samples_per_s, '.2f')} "
            f"| {_fmt(r.tokens_per_step, '.0f')} | {_fmt(r.mfu, '.1%')} | {_fmt(r.peak_gib, '.1f')} "
            f"| {_fmt(r.estimate_gib, '.1f')} | {_fmt(ratio, '.2f')} | {_fmt(step_over, '+.1%')} "
            f"| {_fmt(mem_over, '+.1%')} | {_fmt(r.images_per_s, '.1f')} "
            f"| {_fmt(r.bound_images_per_s, '.1f')} | {r.notes} |"
        )
    return "\n".join(lines)


# --- main ---


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny-llama + tiny-clip on this machine (CPU)")
    parser.add_argument(
        "--cpu", action="store_true", help="the real architectures on a CPU, cut to --layers (CI's check)"
    )
    parser.add_argument("--layers", type=int, default=1, help="LLM layers with --cpu (towers: at least 2)")
    parser.add_argument(
        "--stage2-layers",
        type=int,
        default=16,
        help="LLM layers of stage 2 on a GPU (7B under ZeRO-3 on one rank needs ~108 GB at full depth); "
        "0: full depth",
    )
    parser.add_argument("--llm", default=None, help="default vicuna-7b (tiny-llama with --tiny)")
    parser.add_argument("--encoder", default=None, help="default clip-l-336 (tiny-clip with --tiny)")
    parser.add_argument("--micro-batch", type=int, default=None, help="default 16 (2 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (default 4, 1 tiny)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each run not timed")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32", "auto"))
    parser.add_argument("--bound-repeats", type=int, default=3)
    parser.add_argument("--label-images", type=int, default=None, help="default 512 (8 with --tiny)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="stop starting parts after this (default 450; --cpu: none)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="default: data sheet / measured")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)
    if args.tiny and args.cpu:
        parser.error("--tiny and --cpu are two different checks; pick one")
    small = args.tiny or args.cpu
    args.llm = args.llm or ("tiny-llama" if args.tiny else "vicuna-7b")
    args.encoder = args.encoder or ("tiny-clip" if args.tiny else "clip-l-336")
    args.micro_batch = args.micro_batch or (1 if args.cpu else 2 if args.tiny else 16)
    args.steps = args.steps or (1 if small else 4)
    args.warmup = 0 if args.cpu else args.warmup
    args.label_images = args.label_images or (4 if args.cpu else 8 if args.tiny else 512)
    # --cpu proves the path, not a speed: every part runs however long this machine takes.
    args.budget_s = args.budget_s if args.budget_s is not None else (float("inf") if args.cpu else 450.0)
    return args


def part_depth(args: argparse.Namespace, stage: str) -> Depth:
    """The layers a part's random models get: the registry's (--tiny: real tiny checkpoints), --layers
    on a CPU, --stage2-layers for stage 2 on a GPU."""
    if args.tiny:
        return Depth()
    if args.cpu:
        return Depth(llm=args.layers, vision=max(2, args.layers))  # CLIP reads its penultimate layer
    if stage == "stage2" and args.stage2_layers:
        return Depth(llm=args.stage2_layers)
    return Depth()


def run_parts(args: argparse.Namespace, work: Path, device: torch.device, budget: Budget) -> list[Row]:
    """Stage 1 (LLaVA, SEA with its labels, BASIC), then stage 2; a part is skipped when the time left
    would not cover the longest run so far."""
    # No MFU in --cpu mode: a 1-layer cut on a CPU says nothing about a GPU's utilisation.
    peak = None if args.cpu else resolve_peak(args.peak_tflops, device)[0]
    rows: list[Row] = []
    longest = 0.0

    def attempt(name: str, run: Callable[[], Row]) -> Row | None:
        nonlocal longest
        depth = part_depth(args, name.split(" ")[0])
        DEPTH.llm, DEPTH.vision = depth.llm, depth.vision
        name += depth.label(args.llm) if name.startswith("stage") else ""
        if not budget.fits(longest):
            rows.append(Row(name, status=f"skipped: {budget.left():.0f}s left, a run took {longest:.0f}s"))
            return None
        try:
            row = run()
            row.part = name
        except Exception as err:  # noqa: BLE001 - one failed part must not hide the others' figures
            text = f"{type(err).__name__}: {err}".replace("|", "/").replace("\n", " ")
            row = Row(name, status=f"failed: {text[:160]}")
        longest = max(longest, row.seconds)
        rows.append(row)
        return row

    cfgs = {m: trial(args, m) for m in METHODS}
    s1 = {m: work / f"stage1-{m}" for m in METHODS}
    attempt(
        "stage1 llava",
        lambda: run_stage_part(args, "stage1 llava", cfgs["llava"], "stage1", s1["llava"], device, peak),
    )
    labels: dict[str, Path] = {}

    def labelled() -> Row:
        row, labels["dir"] = label_part(args, cfgs["sea"], work / "steps", device)
        return row

    attempt("labels (SEA)", labelled)
    if "dir" in labels:
        attempt(
            "stage1 sea",
            lambda: run_stage_part(
                args,
                "stage1 sea",
                cfgs["sea"],
                "stage1",
                s1["sea"],
                device,
                peak,
                labels_dir=str(labels["dir"]),
            ),
        )
    attempt(
        "stage1 basic",
        lambda: run_stage_part(args, "stage1 basic", cfgs["basic"], "stage1", s1["basic"], device, peak),
    )
    if (s1["llava"] / "adapter").is_dir():
        attempt(
            "stage2 llava",
            lambda: run_stage_part(
                args,
                "stage2 llava",
                cfgs["llava"],
                "stage2",
                work / "stage2",
                device,
                peak,
                stage1_dir=str(s1["llava"]),
            ),
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    device = torch.device("cpu")
    if not (args.tiny or args.cpu):
        from core.train.cuda_start import start_cuda

        # An explicit index: set_device refuses a bare "cuda"; a failure names the driver needed.
        device = torch.device("cuda", 0)
        start_cuda(device)
    loading = contextlib.nullcontext() if args.tiny else random_weights(args.llm, args.encoder, device)
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        stack.enter_context(loading)
        rows = run_parts(args, work, device, budget)
    base = {"stage1": next((r for r in rows if r.part.startswith("stage1 llava")), None)}
    base = {k: v for k, v in base.items() if v is not None and v.status == "ok"}
    text = table(rows, base)
    where = f"{describe_device(device)}, {args.llm} + {args.encoder}, micro-batch {args.micro_batch}, {args.precision}"
    if args.cpu:
        where += f", random weights cut to {args.layers} LLM layer(s) (CPU mode: no GPU figures)"
    print(f"\n{where}\n\n{text}\n")
    print("Rows for BENCHMARKS.md:\n" + "\n".join(text.splitlines()[2:]))
    report = {
        "device": where,
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": [asdict(r) for r in rows],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} in {time.perf_counter() - budget.start:.0f}s")
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

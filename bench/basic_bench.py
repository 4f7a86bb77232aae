"""What BASIC costs over the LLaVA baseline per training step: median step time and peak memory, side by side.

Run: ``uv run --frozen python bench/basic_bench.py [--llm tiny-llama --encoder tiny-clip --device cpu --batch 4 ...]``;
on CUDA with a full-size model: ``--llm vicuna-7b --encoder clip-l-336 --device cuda --dtype bf16`` (random
weights built on the device from the registry's arch facts, nothing downloaded; see stage_bench.py).

One process, one model, the same pre-collated batches for every mode. A step is what the training loop
does: ``forward_context`` + forward + ``objective.total`` + backward + gradient clipping + AdamW, under bf16
autocast on CUDA. Modes (``--modes``):

- ``baseline``: ``Objective()``, L_lm only.
- ``basic``: ``BasicObjective`` as configured (default k = half the layers, inc, degree auto, lambda1 = 1,
  lambda2 = 0.01): hidden-state capture + attention-row capture + DAS + SDS.
- ``basic-equal``: degree equal, so no attention capture: isolates what the supervision degree costs.
- ``basic-das``: degree equal and lambda2 = 0: the hidden-state capture and DAS only.

Timing: after ``--warmup`` untimed steps per mode, the modes take turns step by step (ABC CBA ABC ...) so
drift cancels out; the median of ``--steps`` timed steps per mode is reported with its ratio to the baseline,
and the median over rounds of (mode step / baseline step of the same round), which is less sensitive to a
shared machine's load.

Memory, measured per mode in its own block of ``--mem-steps`` steps after the timing:
- CUDA: ``torch.cuda.max_memory_allocated`` over the block (peak of live tensors, allocator cache not
  counted), and that peak minus what was allocated at the block's start (what a step needs on top of
  weights, gradients and optimizer state).
- CPU: there is no allocator counter, so the process's peak resident set size (Linux VmHWM, reset through
  /proc/self/clear_refs before the block, after ``malloc_trim``) minus the resident size at the block's
  start. It counts every page the step touched, including allocator slack and freed-but-kept memory, so
  it is an upper bound on the step's working memory and noisier than the CUDA figure.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, not a package
from sea_bench import describe_device, resolve_device, resolve_dtype, timed  # noqa: E402
from stage_bench import load_vlm, stage_batches  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "basic_bench.json"
MODES = ("baseline", "basic", "basic-equal", "basic-das")


@dataclass
class BasicSettings:
    """Stands in for grid.spec.BasicConfig (same attribute names)."""

    layers: int | None = None
    weighting: str = "inc"
    degree: str = "auto"
    das_weight: float = 1.0
    sds_weight: float = 0.01


def build_objective(mode: str, vlm: Any, args: argparse.Namespace) -> Any:
    from core.methods.basic_objective import BasicObjective
    from core.methods.objective import Objective

    if mode == "baseline":
        return Objective()
    settings = BasicSettings(layers=args.layers, weighting=args.weighting, sds_weight=args.sds_weight)
    if mode in ("basic-equal", "basic-das"):
        settings.degree = "equal"
    if mode == "basic-das":
        settings.sds_weight = 0.0
    return BasicObjective(settings, vlm)


# --- memory ---


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}; CPU memory needs Linux")
    return int(match.group(1))


class MemoryBlock:
    """Peak memory of what runs inside (see the module docstring for what each device measures)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self.peak = 0

    def __enter__(self) -> MemoryBlock:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            with contextlib.suppress(OSError):  # not glibc: no trim, a noisier figure
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.start = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _status_kib("VmHWM") * 1024


# --- the benchmark ---


def make_step(vlm: Any, objective: Any, optimizer: torch.optim.Optimizer, params: list, device: torch.device):
    def step(batch: dict[str, Any]) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            with objective.forward_context(vlm):
                out = vlm(batch)
            loss, _ = objective.total(batch, out)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    vlm, tokenizer, init = load_vlm(args, device, dtype)
    if args.stage == 1:
        vlm.freeze_for_stage1()
    else:
        vlm.freeze_for_stage2()
    if args.gradient_checkpointing:
        vlm.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vlm.train()
    batches = stage_batches(vlm, tokenizer, args.stage, args, device)
    params = vlm.trainable_parameters()
    # One optimizer for all modes: AdamW's state is allocated on the first step (a warm-up step), so it
    # is part of every mode's resident memory alike.
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps = {
        mode: make_step(vlm, build_objective(mode, vlm, args), optimizer, params, device)
        for mode in args.modes
    }

    for mode in args.modes:
        for i in range(args.warmup):
            seconds = timed(lambda i=i, mode=mode: steps[mode](batches[i % len(batches)]), device)
            print(f"warm-up {mode} {i + 1}/{args.warmup}: {seconds * 1e3:.1f} ms", file=sys.stderr)
    times: dict[str, list[float]] = {mode: [] for mode in args.modes}
    for i in range(args.steps):
        order = args.modes if i % 2 == 0 else args.modes[::-1]
        batch = batches[i % len(batches)]
        for mode in order:
            times[mode].append(timed(lambda mode=mode, batch=batch: steps[mode](batch), device))
        print(
            f"step {i + 1}/{args.steps}: "
            + ", ".join(f"{m} {times[m][-1] * 1e3:.1f} ms" for m in args.modes),
            file=sys.stderr,
        )
    memory: dict[str, dict[str, float]] = {}
    for mode in args.modes:
        with MemoryBlock(device) as block:
            for i in range(args.mem_steps):
                steps[mode](batches[i % len(batches)])
        memory[mode] = {"peak_mib": block.peak / 2**20, "step_mib": (block.peak - block.start) / 2**20}

    base = statistics.median(times[args.modes[0]])
    rows = []
    for mode in args.modes:
        median = statistics.median(times[mode])
        rows.append(
            {
                "mode": mode,
                "step_ms": median * 1e3,
                "step_ms_all": [t * 1e3 for t in times[mode]],
                "time_ratio": median / base,
                # Steps of one round run back to back under the same machine load: less noisy than medians.
                "pair_ratio": statistics.median(
                    t / b for t, b in zip(times[mode], times[args.modes[0]], strict=True)
                ),
                **memory[mode],
                "peak_ratio": memory[mode]["peak_mib"] / memory[args.modes[0]]["peak_mib"],
                "step_mem_ratio": memory[mode]["step_mib"] / max(memory[args.modes[0]]["step_mib"], 1e-9),
            }
        )
    import transformers

    from core.methods.basic_objective import BasicObjective

    probe = BasicObjective(BasicSettings(layers=args.layers), vlm)
    return {
        "device": describe_device(device),
        "llm": args.llm,
        "encoder": args.encoder,
        "init": init,
        "dtype": str(dtype).removeprefix("torch."),
        "stage": args.stage,
        "batch": args.batch,
        "layers_k": probe.layers,
        "num_layers": int(vlm.llm.config.num_hidden_layers),
        "visual_tokens": vlm.num_visual_tokens,
        "attn_implementation": vlm.llm.config._attn_implementation,
        "memory_measure": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "process peak RSS (VmHWM reset per block)",
        "rows": rows,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def markdown(report: dict[str, Any]) -> str:
    head = (
        "| mode | step ms (median) | x baseline | median paired ratio | peak MiB | x baseline | step MiB "
        "| x baseline |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(
            f"| {r['mode']} | {r['step_ms']:.1f} | {r['time_ratio']:.3f} | {r['pair_ratio']:.3f} | {r['peak_mib']:.0f} | "
            f"{r['peak_ratio']:.3f} | {r['step_mib']:.1f} | {r['step_mem_ratio']:.3f} |"
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
    p.add_argument(
        "--dtype", default="auto", help="VLM dtype (bf16, fp32, ...); auto = bf16 on CUDA, fp32 elsewhere"
    )
    p.add_argument("--stage", type=int, choices=(1, 2), default=1, help="1: adapter trains; 2: adapter + LLM")
    p.add_argument(
        "--modes",
        default="baseline,basic,basic-equal",
        help=f"comma-separated, first is the reference; of {MODES}",
    )
    p.add_argument("--layers", type=int, default=None, help="BASIC's k; default half the LLM's layers")
    p.add_argument("--weighting", default="inc", choices=("inc", "const", "dec"))
    p.add_argument("--sds-weight", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per mode first")
    p.add_argument("--mem-steps", type=int, default=2, help="steps per mode in the memory block")
    p.add_argument("--num-batches", type=int, default=2, help="distinct pre-collated batches, cycled")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    for name in ("batch", "steps", "num_batches", "mem_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 1:
        p.error("--warmup must be >= 1: the first step allocates AdamW's state")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown or len(set(args.modes)) != len(args.modes) or len(args.modes) < 2:
        p.error(f"--modes {args.modes}: give two or more distinct modes of {MODES}, the reference first")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    table = markdown(report)
    print(
        f"{report['device']} | {report['llm']} + {report['encoder']} ({report['init']}, {report['dtype']}) | "
        f"stage {report['stage']} | batch {report['batch']} | k = {report['layers_k']} of "
        f"{report['num_layers']} | m = {report['visual_tokens']} | attention {report['attn_implementation']}"
    )
    print(table)
    print(f"memory: {report['memory_measure']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**report, "table": table}, indent=2) + "\n")
    print(f"written to {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()

"""Benchmark kind -> its `BenchmarkKind`; scoring a model on one configured benchmark, or a shard of it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.evaluation.benchmarks.context import RunContext
from core.evaluation.benchmarks.files import BenchFiles
from core.evaluation.benchmarks.kind import BenchmarkKind, Scored
from core.evaluation.benchmarks.mc import MC, TEXT_MC
from core.evaluation.benchmarks.official import OFFICIAL
from core.evaluation.benchmarks.pope import POPE
from core.evaluation.benchmarks.vqa import VQA
from core.evaluation.config import BenchmarkConfig
from core.evaluation.shard import Shard

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM

# One line per kind (`BenchmarkConfig.kind`); a new benchmark is a module defining its BenchmarkKind.
BENCHMARKS: dict[str, BenchmarkKind[Any, Any]] = {
    "pope": POPE,
    "vqa": VQA,
    "mc": MC,
    "text_mc": TEXT_MC,
    **OFFICIAL,  # the papers' benchmarks by their official rules, one kind per scorer family
}


def bench_files(bench: BenchmarkConfig, synthetic_dir: Path | None) -> BenchFiles:
    """The files a benchmark reads: its own (source files) or the synthetic set's, same formats."""
    if bench.source == "files":

        def p(value: str | None) -> Path | None:
            return Path(value).expanduser() if value is not None else None

        return BenchFiles(
            p(bench.question_file),
            p(bench.annotation_file),
            p(bench.annotation_dir),
            p(bench.image_root),
            p(bench.context_file),
        )
    if synthetic_dir is None:
        raise ValueError(f"benchmark '{bench.name}': source 'synthetic' needs the synthetic eval directory")
    return BENCHMARKS[bench.kind].synthetic(Path(synthetic_dir))


def metric_names(bench: BenchmarkConfig, prefix: str | None = None) -> list[str]:
    """The full names of the metrics `bench` reports (`prefix` default `eval/<name>`)."""
    prefix = prefix or f"eval/{bench.name}"
    return [f"{prefix}/{k}" if k else prefix for k in BENCHMARKS[bench.kind].metric_names(bench)]


def _scored(kind: BenchmarkKind[Any, Any], ctx: RunContext, bench: BenchmarkConfig) -> Scored:
    items = kind.read(bench, ctx.files)
    outputs = kind.ask(ctx, bench, items)
    raw, preds = kind.score(bench, items, outputs)
    if bench.submission and ctx.submission_dir is not None and kind.submit is not None:
        kind.submit(bench, items, outputs, ctx.submission_dir)
    declared = kind.metric_names(bench)
    if set(raw) != set(declared):
        raise AssertionError(
            f"benchmark kind '{bench.kind}' reported {sorted(raw)}, declares {sorted(declared)}"
        )
    return raw, preds


def _context(
    vlm: VLM | None,
    tokenizer: Tokenizer | None,
    bench: BenchmarkConfig,
    template: str,
    synthetic_dir: Path | None,
    **opts: Any,
) -> RunContext:
    files = bench_files(bench, synthetic_dir)
    return RunContext(vlm, tokenizer, template, image_root=files.image_root, files=files, **opts)


def run_benchmark(
    vlm: VLM | None,
    tokenizer: Tokenizer | None,
    bench: BenchmarkConfig,
    template: str,
    *,
    synthetic_dir: Path | None = None,
    prefix: str | None = None,
    image_mode: str = "pad",
    batch_size: int = 8,
    max_new_tokens: int = 16,
    log: Callable[[str], None] | None = print,
    replay: dict[str, list[Any]] | None = None,
    submission_dir: Path | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score `vlm` on one benchmark: (metrics, predictions); with `bench.submission`, its evaluation
    server's answer file is written into `submission_dir` too.

    Metric names: `prefix` (default `eval/<name>`) for the headline (POPE: mean F1 over the splits;
    VQA: accuracy; MC: accuracy) and `prefix/<detail>` for the rest (POPE `<split>/<metric>` and
    `yes_ratio`; MC generate mode `unparsed`); all values are fractions in [0, 1]. Predictions are
    one JSON-able dict per question. text_mc items have no image, so only the LLM is scored.
    With `replay` (the shards' gathered outputs, `benchmark_outputs`) no model runs: `vlm` and
    `tokenizer` may be None, and the scoring is the unsharded run's.
    """
    opts = {"image_mode": image_mode, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    ctx = _context(
        vlm, tokenizer, bench, template, synthetic_dir, replay=replay, submission_dir=submission_dir, **opts
    )
    t0 = time.perf_counter()
    raw, preds = _scored(BENCHMARKS[bench.kind], ctx, bench)
    prefix = prefix or f"eval/{bench.name}"
    metrics = {(f"{prefix}/{k}" if k else prefix): float(v) for k, v in raw.items()}
    if log is not None:
        log(
            f"[eval] {bench.name} ({bench.kind}, {bench.source}): {len(preds)} questions in "
            f"{time.perf_counter() - t0:.1f}s, {prefix} = {metrics[prefix]:.4f}"
        )
    return metrics, preds


def benchmark_outputs(
    vlm: VLM,
    tokenizer: Tokenizer,
    bench: BenchmarkConfig,
    template: str,
    shard: Shard,
    *,
    synthetic_dir: Path | None = None,
    image_mode: str = "pad",
    batch_size: int = 8,
    max_new_tokens: int = 16,
) -> dict[str, list[Any]]:
    """The model outputs of `shard`'s batches of one benchmark (model call -> output or None per row),
    for `run_benchmark(..., replay=gathered)` to score once all shards have run."""
    opts = {"image_mode": image_mode, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    ctx = _context(vlm, tokenizer, bench, template, synthetic_dir, shard=shard, **opts)
    kind = BENCHMARKS[bench.kind]
    items = kind.read(bench, ctx.files)
    kind.ask(ctx, bench, items)
    return ctx.recorded

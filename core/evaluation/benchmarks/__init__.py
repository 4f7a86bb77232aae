"""Benchmarks: a registry from `BenchmarkConfig.kind` to a `BenchmarkKind`, one module per family.

A kind (core/evaluation/benchmarks/kind.py) is five functions:

    read(bench, files) -> list[Item]               # the items, at most bench.max_samples
    ask(ctx, bench, items) -> list[Output]         # through ctx.generate / ctx.option_scores only
    score(bench, items, outputs) -> (metrics, predictions)
    synthetic(dir) -> BenchFiles                   # this kind's files in the synthetic eval set
    metric_names(bench) -> tuple[str, ...]         # what score returns; "" is the headline

`ask` never calls the model directly, so sharded evaluation (each shard runs its batches, the driver
replays the gathered outputs through `score`) works for every kind unchanged. Readers raise
`BenchmarkFileError` naming the file, line and field (helpers in `files.py`). To add a benchmark: a
module defining its items, the five functions and `KIND = BenchmarkKind(...)`, one line in
`registry.BENCHMARKS`, and its kind (and the files it reads) in core/config/evaluation.py.
"""

from core.evaluation.benchmarks.context import RunContext
from core.evaluation.benchmarks.files import BenchFiles, BenchmarkFileError, ImageRef, read_jsonl
from core.evaluation.benchmarks.kind import BenchmarkKind, Scored
from core.evaluation.benchmarks.mc import McItem, mc_question, read_mc
from core.evaluation.benchmarks.pope import PopeItem, read_pope
from core.evaluation.benchmarks.registry import (
    BENCHMARKS,
    bench_files,
    benchmark_outputs,
    metric_names,
    run_benchmark,
)
from core.evaluation.benchmarks.vqa import VqaItem, read_vqa

__all__ = [
    "BENCHMARKS",
    "BenchFiles",
    "BenchmarkFileError",
    "BenchmarkKind",
    "ImageRef",
    "McItem",
    "PopeItem",
    "RunContext",
    "Scored",
    "VqaItem",
    "bench_files",
    "benchmark_outputs",
    "mc_question",
    "metric_names",
    "read_jsonl",
    "read_mc",
    "read_pope",
    "read_vqa",
    "run_benchmark",
]

"""The interface of a kind of benchmark: read its items, ask the model, score the answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from core.evaluation.benchmarks.context import RunContext
from core.evaluation.benchmarks.files import BenchFiles
from core.evaluation.config import BenchmarkConfig

Item = TypeVar("Item")
Output = TypeVar("Output")
# (metrics by name relative to the benchmark's prefix, "" being the headline; one JSON-able dict per
# question, written to predictions/<name>.jsonl)
Scored = tuple[dict[str, float], list[dict[str, Any]]]


@dataclass(frozen=True)
class BenchmarkKind(Generic[Item, Output]):
    """One kind of benchmark (`BenchmarkConfig.kind`), as three pure-ish steps and two facts.

    - `read(bench, files)`: the items to ask, at most `bench.max_samples` (a file mistake raises
      `BenchmarkFileError` naming the file, line and field);
    - `ask(ctx, bench, items)`: the model's outputs, one per item, only through `ctx.generate` /
      `ctx.option_scores` (so sharding and replay work unchanged);
    - `score(bench, items, outputs)`: `Scored`, the metrics and the predictions;
    - `synthetic(dir)`: where the synthetic evaluation set keeps this kind's files;
    - `metric_names(bench)`: every metric name `score` returns (relative, "" the headline), declared
      once here: the runner checks them, and they are what reports and searches can read;
    - `submit(bench, items, outputs, directory)`: the evaluation server's answer file written into
      `directory`, its path (kinds in `SUBMISSION_KINDS` only).
    """

    read: Callable[[BenchmarkConfig, BenchFiles], list[Item]]
    ask: Callable[[RunContext, BenchmarkConfig, list[Item]], list[Output]]
    score: Callable[[BenchmarkConfig, list[Item], list[Output]], Scored]
    synthetic: Callable[[Path], BenchFiles]
    metric_names: Callable[[BenchmarkConfig], tuple[str, ...]]
    submit: Callable[[BenchmarkConfig, list[Item], list[Output], Path], Path] | None = None

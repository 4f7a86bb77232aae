"""`just plan SPEC`: which cells of the paper's published tables the spec's trials fill, and which they cannot."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from grid.expand import Trial
from grid.published import PublishedTable, load_published, matching

FILLED, NO_TRIAL, NO_BENCHMARK = "planned", "no trial", "no benchmark"


def benchmark_metrics(trial: Trial) -> set[str]:
    """The metrics the trial's evaluation logs: eval/<benchmark name> (the headline) and every other name
    its benchmark kind declares (core.evaluation.benchmarks.metric_names), e.g. eval/mme/cognition."""
    from core.evaluation.benchmarks import metric_names

    cfg = trial.config.eval
    return {m for b in cfg.benchmarks for m in metric_names(b)} if cfg.enabled else set()


def cell_states(table: PublishedTable, trials: list[Trial]) -> list[tuple[list[Trial], dict[str, str]]]:
    """Per paper row: its trials, and per column whether they fill it (planned / no trial / no benchmark)."""
    out = []
    for row in table.rows:
        hits = matching(row, trials)
        logged = set().union(*(benchmark_metrics(t) for t in hits)) if hits else set()
        states = {m: NO_TRIAL if not hits else FILLED if m in logged else NO_BENCHMARK for m in table.columns}
        out.append((hits, states))
    return out


def print_table_cells(spec_path: str | Path, trials: list[Trial], console: Console) -> None:
    """Print, per published table of the spec, which trials fill which cells; nothing when it has none."""
    published = load_published(spec_path)
    if published is None:
        return
    for table in published.tables:
        states = cell_states(table, trials)
        out = Table(title=f"cells of {table.title}", caption=table.source)
        out.add_column("paper row")
        out.add_column("trials")
        for column in table.columns.values():
            out.add_column(column.label, justify="center")
        for row, (hits, cells) in zip(table.rows, states, strict=True):
            out.add_row(row.label, ", ".join(t.id for t in hits) or "-", *cells.values())
        console.print(out)
        total = sum(len(cells) for _, cells in states)
        filled = sum(s == FILLED for _, cells in states for s in cells.values())
        missing = sorted({m for _, cells in states for m, s in cells.items() if s == NO_BENCHMARK})
        line = f"{filled} of {total} cells planned"
        if missing:
            line += f"; no benchmark in the spec logs {', '.join(missing)} (see the spec's eval comments)"
        console.print(line, highlight=False, soft_wrap=True)

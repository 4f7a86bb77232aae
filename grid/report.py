"""Paper-style result tables and plots of a grid from its MLflow runs: Markdown, CSV, PNGs, rich output."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.table import Table

from core.evaluation import names
from core.evaluation.names import diag_name
from grid.expand import Trial, check_path, expand
from grid.plan import trial_status
from grid.plots import BASELINE, METHOD, file_stem, scaling_plot, tacs_plot
from grid.published import beside_published
from grid.spec import SpecError, did_you_mean, load_spec
from grid.tracking import RunInfo, Tracker

DEFAULT_ROWS = (METHOD, "model.llm")
HEADLINE = re.compile(r"^eval/[^/]+$")
TACS = diag_name(names.TACS)
# The alignment diagnostics shown beside the benchmarks by default: on small or untrained models the
# benchmarks often cannot tell the methods apart while these can (REFERENCE.md 5).
DIAGNOSTICS = tuple(diag_name(d) for d in names.DIAGNOSTICS)
ARTIFACT_DIR = "report"
STATUSES = ("done", "failed", "running", "killed", "new")
# What a cell without a value says, most telling first: a failure explains more than a queued trial.
EMPTY_CELL = (("failed", "failed"), ("running", "running"), ("killed", "killed"), ("done", "n/a"))


@dataclass
class Report:
    """A grid's results, grouped by the row axes.

    `table` has one line per (row values, metric) with mean, std (sample, ddof 1), n (trials with
    a value), trials (trials in the cell), the count per status, delta (mean minus the baseline
    row's mean) and cell (what the table shows). Values are as logged (fractions, not x100).
    `trials` has one line per trial of the spec: id, status, run id, config values and metrics.
    """

    spec_name: str
    rows: tuple[str, ...]
    columns: list[str]
    averaged: list[str]
    percent: dict[str, bool]
    table: pl.DataFrame
    trials: pl.DataFrame
    markdown: str
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    parent_run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    published: Any = None  # grid.published.Beside: the papers' tables beside this grid's numbers

    def cell(self, metric: str, where: Mapping[str, Any]) -> dict[str, Any]:
        """The table line of `metric` for the row values in `where` (e.g. {'method.name': 'sea', ...})."""
        expr = pl.col("metric") == metric
        for path, value in where.items():
            expr &= pl.col(path) == _text(value)
        hits = self.table.filter(expr)
        if hits.height != 1:
            raise KeyError(
                f"{metric} at {dict(where)}: {hits.height} table lines match; rows are {self.rows}"
            )
        return hits.row(0, named=True)


def _text(value: Any) -> str:
    """A config value as a row label (sections and lists as compact JSON)."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _value_at(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        node = node[part]
    return node


def find_parent_run(tracker: Tracker) -> str | None:
    """The grid's parent run id if the store has one; unlike Tracker.parent_run, never creates one."""
    return tracker.find_parent_run()


def merge_plot_notes(notes: list[str]) -> list[str]:
    """'scaling plot of A: why' and 'scaling plot of B: why' become 'scaling plots of A, B: why'."""
    reasons: dict[str, list[str]] = {}
    out: list[str] = []
    for note in notes:
        m = re.match(r"^scaling plot of (\S+): (.*)$", note)
        if not m:
            out.append(note)
        elif m.group(2) not in reasons:
            reasons[m.group(2)] = [m.group(1)]
            out.append(m.group(2))  # a placeholder, filled in below
        else:
            reasons[m.group(2)].append(m.group(1))
    return [
        (
            f"scaling plot{'s' if len(reasons[n]) > 1 else ''} of {', '.join(reasons[n])}: {n}"
            if n in reasons
            else n
        )
        for n in out
    ]


def default_columns(found: Sequence[str]) -> list[str]:
    """Every eval/<name> headline metric the runs have, then the alignment diagnostics they have (after
    stage 1, then after stage 2)."""
    diags = [d + suffix for suffix in ("", "/after_stage2") for d in DIAGNOSTICS]
    return [m for m in found if HEADLINE.match(m)] + [d for d in diags if d in found]


def trials_frame(trials: list[Trial], runs: dict[str, RunInfo], paths: Sequence[str]) -> pl.DataFrame:
    """One line per trial: id, status, run id, the config values at `paths` (as text) and its metrics.

    Metrics come only from finished runs: a failed or running attempt's partial numbers are no result.
    """
    records: list[dict[str, Any]] = []
    metric_names: set[str] = set()
    for t in trials:
        run = runs.get(t.id)
        status = trial_status(run)
        config = t.config.model_dump(mode="json")
        rec: dict[str, Any] = {"trial_id": t.id, "status": status, "run_id": run.run_id if run else None}
        rec.update({p: _text(_value_at(config, p)) for p in paths})
        metrics = run.metrics if run is not None and status == "done" else {}
        rec["metrics"] = metrics
        metric_names.update(metrics)
        records.append(rec)
    names = sorted(metric_names)
    schema: dict[str, Any] = {"trial_id": pl.String, "status": pl.String, "run_id": pl.String}
    schema.update(dict.fromkeys(paths, pl.String))
    schema.update(dict.fromkeys(names, pl.Float64))
    data = [
        {**{k: v for k, v in r.items() if k != "metrics"}, **{m: r["metrics"].get(m) for m in names}}
        for r in records
    ]
    return pl.DataFrame(data, schema=schema)


def _order(rows: Sequence[str], baseline: tuple[str, str]) -> list[str]:
    """Row paths in display and sort order: the baseline axis innermost, so each method sits under
    the baseline it is compared with (as the papers' tables)."""
    axis, _ = baseline
    return [p for p in rows if p != axis] + [p for p in rows if p == axis]


def _fmt(value: float, percent: bool, signed: bool = False) -> str:
    if percent:
        return f"{value * 100:+.1f}" if signed else f"{value * 100:.1f}"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _cell_text(r: dict[str, Any], percent: bool) -> tuple[str, str, str]:
    """(value text, delta text, cell status) of one table line."""
    if r["n"] == 0:
        state = next((text for s, text in EMPTY_CELL if r[s]), "missing")
        return state, "", state
    text = _fmt(r["mean"], percent)
    if r["std"] is not None:  # several trials (seeds) in the row: mean ± std (n)
        text += f" ± {_fmt(r['std'], percent)} (n={r['n']})"
    state = "ok"
    if r["n"] < r["trials"]:
        text += f" [{r['n']}/{r['trials']}]"
        state = "partial"
    delta = "" if r["delta"] is None else _fmt(r["delta"], percent, signed=True)
    return text, delta, state


def summarise(
    trials: pl.DataFrame,
    rows: Sequence[str],
    columns: Sequence[str],
    percent: Mapping[str, bool],
    baseline: tuple[str, str] = (METHOD, BASELINE),
) -> pl.DataFrame:
    """The long table: per (row values, metric) mean, std, n, status counts, delta and the cell text."""
    rows = list(rows)
    counts = trials.group_by(rows, maintain_order=True).agg(
        pl.len().alias("trials"), *[(pl.col("status") == s).sum().alias(s) for s in STATUSES]
    )
    axis, base_value = baseline
    others = [p for p in rows if p != axis]
    parts = []
    for metric in columns:
        col = pl.col(metric) if metric in trials.columns else pl.lit(None, dtype=pl.Float64)
        stats = trials.group_by(rows, maintain_order=True).agg(
            col.mean().alias("mean"), col.std().alias("std"), col.count().cast(pl.Int64).alias("n")
        )
        if axis in rows:
            base = stats.filter(pl.col(axis) == base_value).select(*others, pl.col("mean").alias("base_mean"))
            stats = stats.join(base, on=others, how="left") if others else stats.join(base, how="cross")
            stats = stats.with_columns(
                pl.when(pl.col(axis) != base_value)
                .then(pl.col("mean") - pl.col("base_mean"))
                .otherwise(None)
                .alias("delta")
            ).drop("base_mean")
        else:
            stats = stats.with_columns(pl.lit(None, dtype=pl.Float64).alias("delta"))
        parts.append(stats.with_columns(pl.lit(metric).alias("metric")))
    if not parts:
        return counts.with_columns(pl.lit(None, dtype=pl.String).alias("metric"))
    long = pl.concat(parts).join(counts, on=rows, how="left")
    texts = [_cell_text(r, percent.get(r["metric"], False)) for r in long.iter_rows(named=True)]
    long = long.with_columns(
        pl.Series("cell", [t[0] for t in texts], dtype=pl.String),
        pl.Series("delta_text", [t[1] for t in texts], dtype=pl.String),
        pl.Series("cell_status", [t[2] for t in texts], dtype=pl.String),
    )
    return long.select(
        *rows, "metric", "mean", "std", "n", "trials", *STATUSES, "delta", "cell", "delta_text", "cell_status"
    )


def _row_groups(
    table: pl.DataFrame, order: list[str], first_seen: dict[str, list[str]], baseline: tuple[str, str]
):
    """The distinct row-value tuples in display order: each path's values in spec order, baseline first."""
    axis, base_value = baseline
    keys = table.select(order).unique().rows()

    def rank(key: tuple[str, ...]) -> tuple[int, ...]:
        out = []
        for path, value in zip(order, key, strict=True):
            seen = first_seen[path]
            out.append(-1 if path == axis and value == base_value else seen.index(value))
        return tuple(out)

    return sorted(keys, key=rank)


def _trials_text(line: dict[str, Any]) -> str:
    parts = [f"{line[s]} {s}" for s in STATUSES if line[s]]
    return ", ".join(parts)


def _display_name(metric: str, columns: Sequence[str]) -> str:
    short = metric.removeprefix("eval/")
    return short if short == metric or short not in columns else metric


def render(report_rows: list[dict[str, Any]], order: list[str], columns: Sequence[str]) -> list[list[str]]:
    """Header + body of the paper table: row values, trials, then 'mean ± std (delta)' per metric."""
    header = [*order, "trials", *[_display_name(m, columns) for m in columns]]
    body = []
    for line in report_rows:
        cells = []
        for m in columns:
            c = line["cells"][m]
            cells.append(f"{c['cell']} ({c['delta_text']})" if c["delta_text"] else c["cell"])
        body.append([*line["key"], line["trials_text"], *cells])
    return [header, *body]


def _markdown_table(grid: list[list[str]]) -> str:
    header, *body = grid
    esc = [[c.replace("|", "\\|") for c in row] for row in grid]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in esc[1:]]
    return "\n".join(lines)


def _wide_csv(
    table: pl.DataFrame, keys: list[tuple[str, ...]], order: list[str], columns: Sequence[str]
) -> pl.DataFrame:
    """One CSV line per row group: status counts, then mean/std/n/delta/status columns per metric."""
    lines = []
    for key in keys:
        sel = table.filter(pl.all_horizontal([pl.col(p) == v for p, v in zip(order, key, strict=True)]))
        first = sel.row(0, named=True)
        rec: dict[str, Any] = dict(zip(order, key, strict=True))
        rec.update({"trials": first["trials"], **{s: first[s] for s in STATUSES}})
        for m in columns:
            hit = sel.filter(pl.col("metric") == m).row(0, named=True)
            rec.update({f"{m}:mean": hit["mean"], f"{m}:std": hit["std"], f"{m}:n": hit["n"]})
            rec.update({f"{m}:delta": hit["delta"], f"{m}:status": hit["cell_status"]})
        lines.append(rec)
    return pl.DataFrame(lines, infer_schema_length=None)


def _tacs_history(tracker: Tracker, trials: pl.DataFrame, panel_paths: list[str]) -> pl.DataFrame:
    """diag/tacs by training step for every finished trial, labelled with its method and panel."""
    records = []
    for r in trials.filter(pl.col("status") == "done").iter_rows(named=True):
        panel = ", ".join(f"{p.rsplit('.', 1)[-1]}={r[p]}" for p in panel_paths) or "all trials"
        last: dict[int, tuple[int, float]] = {}
        for m in tracker.client.get_metric_history(r["run_id"], TACS):
            # Several values at one step (a re-logged step): the latest one stands, as in MLflow's view.
            if m.step not in last or m.timestamp >= last[m.step][0]:
                last[m.step] = (m.timestamp, m.value)
        records += [
            {"method": r[METHOD], "panel": panel, "trial_id": r["trial_id"], "step": s, "value": v}
            for s, (_, v) in last.items()
        ]
    schema = {
        "method": pl.String,
        "panel": pl.String,
        "trial_id": pl.String,
        "step": pl.Int64,
        "value": pl.Float64,
    }
    return pl.DataFrame(records, schema=schema)


def _clear_old(out_dir: Path) -> None:
    """Remove the files an earlier report wrote here, so no stale plot is logged again."""
    for pattern in ("report.md", "report.csv", "published.csv", "scaling_*.png", "tacs.png"):
        for path in out_dir.glob(pattern):
            path.unlink()


@dataclass
class _Summary:
    """A grid's runs read back and summarised: what the report's files and table are written from."""

    spec: Any
    trials: list[Trial]
    tracker: Tracker
    runs: dict[str, RunInfo]
    frame: pl.DataFrame
    columns: list[str]
    notes: list[str]
    percent: dict[str, bool]
    averaged: list[str]
    table: pl.DataFrame
    order: list[str]
    keys: list[tuple[str, ...]]


def _summarise_grid(
    spec_path: str | Path,
    rows: tuple[str, ...],
    columns: Sequence[str] | None,
    tracking_uri: str | None,
    baseline: tuple[str, str],
) -> _Summary:
    """Every trial of the spec with its run's status and metrics, summarised per row group."""
    spec = load_spec(spec_path)
    trials = expand(spec, str(spec_path))
    tracker = Tracker(spec.name, tracking_uri or spec.output.tracking_uri)
    runs = tracker.trial_runs([t.id for t in trials])
    varied = list(dict.fromkeys(a for t in trials for a in t.axes))
    paths = list(dict.fromkeys([*rows, METHOD, "model.llm", *varied]))
    frame = trials_frame(trials, runs, paths)
    fixed = {"trial_id", "status", "run_id", *paths}
    chosen, notes = _choose_columns([c for c in frame.columns if c not in fixed], columns)
    percent = _percent_columns(frame, chosen)
    table = summarise(frame, rows, chosen, percent, baseline)
    order = _order(rows, baseline)
    first_seen = {p: frame[p].unique(maintain_order=True).to_list() for p in order}
    keys = _row_groups(table, order, first_seen, baseline)
    averaged = [a for a in varied if a not in rows]
    return _Summary(spec, trials, tracker, runs, frame, chosen, notes, percent, averaged, table, order, keys)


def build_report(
    spec_path: str | Path,
    *,
    rows: Sequence[str] = DEFAULT_ROWS,
    columns: Sequence[str] | None = None,
    tracking_uri: str | None = None,
    baseline: tuple[str, str] = (METHOD, BASELINE),
    console: Console | None = None,
    log_artifacts: bool = True,
) -> Report:
    """Tables and plots of the grid in `spec_path`, written to <output.root>/reports/<name>/.

    Every trial of the spec is accounted for: cells show 'mean ± std (delta)', or failed / running /
    missing (never ran) / n/a (finished without that metric). Axes not in `rows` are averaged over.
    The files are logged as artifacts of the grid's parent run under report/, if the store has one.
    """
    rows = _checked_rows(rows, spec_path)
    g = _summarise_grid(spec_path, rows, columns, tracking_uri, baseline)
    spec, tracker, frame, columns, order = g.spec, g.tracker, g.frame, g.columns, g.order
    out_dir = (Path(spec.output.root).expanduser() / "reports" / spec.name).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    _clear_old(out_dir)
    # Plots first, so their notes make it into the Markdown.
    files, plot_notes, tacs_note = _plots(tracker, frame, columns, g.percent, order, out_dir)
    notes = merge_plot_notes(g.notes + plot_notes) + ([tacs_note] if tacs_note else [])
    parent = find_parent_run(tracker)
    if parent is None:
        notes.append(_no_parent_note(tracker.uri, spec.name))
    grid_text = render(_report_rows(g.table, g.keys, order, columns), order, columns)
    beside = beside_published(spec_path, g.trials, g.runs)  # the papers' numbers (grid/published.py), if any
    method_values = frame[METHOD].unique().to_list()
    markdown = _markdown(
        spec.name, str(spec_path), tracker.uri, frame, order, g.averaged, columns, g.percent, baseline,
        method_values, grid_text, notes,
    )  # fmt: skip
    markdown += beside.markdown() if beside else ""
    files = [*_write_tables(out_dir, markdown, _wide_csv(g.table, g.keys, order, columns), beside), *files]
    if parent is not None and log_artifacts:
        tracker.log_artifacts(parent, out_dir, ARTIFACT_DIR)
    report = Report(
        spec.name, rows, list(columns), g.averaged, g.percent, g.table, frame, markdown, out_dir, files,
        parent, notes,
    )  # fmt: skip
    print_report(report, grid_text, console or Console())
    if beside:
        beside.print(console or Console())
    report.published = beside
    return report


def _checked_rows(rows: Sequence[str], spec_path: str | Path) -> tuple[str, ...]:
    """The row paths, distinct and each a config path (else SpecError naming it)."""
    rows = tuple(rows)
    if not rows or len(set(rows)) != len(rows):
        raise SpecError(f"report rows must be distinct config paths; got {list(rows)}")
    for path in rows:
        check_path(path, f"{spec_path}: report rows")
    return rows


def _percent_columns(frame: pl.DataFrame, columns: Sequence[str]) -> dict[str, bool]:
    """Which columns are benchmark scores in [0, 1] (shown as percentages)."""
    return {
        m: m.startswith("eval/")
        and m in frame.columns
        and bool(frame[m].drop_nulls().is_between(0.0, 1.0).all())
        for m in columns
    }


def _no_parent_note(uri: str, name: str) -> str:
    return (
        f"the store at {uri} has no parent run for grid '{name}' (the grid never ran there); the report is "
        "written to files only"
    )


def _write_tables(out_dir: Path, markdown: str, wide: pl.DataFrame, beside: Any) -> list[Path]:
    """report.md, report.csv and (with a published table) published.csv; their paths."""
    md_path, csv_path = out_dir / "report.md", out_dir / "report.csv"
    md_path.write_text(markdown)
    wide.write_csv(csv_path)
    return [md_path, csv_path, *([beside.csv(out_dir / "published.csv")] if beside else [])]


def _choose_columns(found: list[str], columns: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """The metric columns (given, or the defaults among those found) and notes on missing ones."""
    notes: list[str] = []
    if columns is None:
        chosen = default_columns(found)
        if not chosen:
            notes.append(
                "no finished trial has an eval/<name> or diag/ metric yet; the table shows trial counts only"
            )
        return chosen, notes
    chosen = list(dict.fromkeys(columns))
    for m in chosen:
        if m not in found:
            notes.append(f"no finished trial has the metric '{m}'{did_you_mean(m, found)}")
    return chosen, notes


def _report_rows(
    table: pl.DataFrame, keys: list[tuple[Any, ...]], order: Sequence[str], columns: Sequence[str]
) -> list[dict[str, Any]]:
    """One entry per table row: its key, its trial counts and its cells by metric."""
    out = []
    for key in keys:
        sel = table.filter(pl.all_horizontal([pl.col(p) == v for p, v in zip(order, key, strict=True)]))
        cells = {r["metric"]: r for r in sel.iter_rows(named=True)} if columns else {}
        out.append({"key": key, "trials_text": _trials_text(sel.row(0, named=True)), "cells": cells})
    return out


def _plots(
    tracker: Tracker,
    frame: pl.DataFrame,
    columns: Sequence[str],
    percent: dict[str, bool],
    order: Sequence[str],
    out_dir: Path,
) -> tuple[list[Path], list[str], str | None]:
    """The scaling plot of each metric and the TACS curves: their files, the scaling plots' notes and the
    TACS plot's note."""
    files: list[Path] = []
    notes: list[str] = []
    for m in columns:
        path, note = scaling_plot(frame, m, out_dir / f"scaling_{file_stem(m)}.png", percent=percent[m])
        files += [path] if path else []
        notes += [note] if note else []
    panel_paths = [p for p in order if p != METHOD]
    path, note = tacs_plot(_tacs_history(tracker, frame, panel_paths), out_dir / "tacs.png", metric=TACS)
    files += [path] if path else []
    return files, notes, note


def _markdown(
    name: str,
    spec_path: str,
    uri: str,
    frame: pl.DataFrame,
    order: list[str],
    averaged: list[str],
    columns: Sequence[str],
    percent: Mapping[str, bool],
    baseline: tuple[str, str],
    method_values: list[str],
    grid_text: list[list[str]],
    notes: list[str],
) -> str:
    axis, base_value = baseline
    counts = {s: int((frame["status"] == s).sum()) for s in STATUSES}
    status = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [
        f"# {name}: results",
        "",
        f"Spec `{spec_path}`, store `{uri}`: {frame.height} trials ({status}).",
        "",
        f"- Rows: {', '.join(f'`{p}`' for p in order)}.",
        "- Averaged over: "
        + (", ".join(f"`{a}`" for a in averaged) if averaged else "nothing (one trial per row)")
        + ".",
        "- Cells: mean ± sample std (ddof 1) (n=trials averaged, e.g. seeds) over the finished trials of "
        "the row; "
        + ("eval fractions are shown x100 with one decimal" if any(percent.values()) else "values as logged")
        + "; `[k/m]`: only k of the row's m trials have a value.",
    ]
    if axis in order and len(method_values) > 1:
        lines.append(
            f"- `(+x.x)`: difference of means to the `{base_value}` row with the same "
            + (", ".join(f"`{p}`" for p in order if p != axis) or "grid")
            + "."
        )
    lines.append(
        "- `failed`: the row's trials failed; `running`: still running; `missing`: never ran; "
        "`n/a`: finished without logging the metric."
    )
    lines.append("- `report.csv` has the same rows with the raw values (fractions, not x100).")
    lines += ["", _markdown_table(grid_text), ""]
    if notes:
        lines += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def print_report(report: Report, grid_text: list[list[str]], console: Console) -> None:
    """The table on the terminal, deltas coloured, then the averaged axes, notes and file paths."""
    header, *body = grid_text
    table = Table(title=f"{report.spec_name}: results", show_lines=False)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i <= len(report.rows) else "right", overflow="fold")
    for row in body:
        styled = []
        for c in row:
            c = c.replace("[", "\\[")
            c = re.sub(r"\(\+([0-9.]+)\)$", r"([green]+\1[/green])", c)
            c = re.sub(r"\(-([0-9.]+)\)$", r"([red]-\1[/red])", c)
            c = {"failed": "[red]failed[/red]", "missing": "[cyan]missing[/cyan]"}.get(c, c)
            styled.append(c)
        table.add_row(*styled)
    console.print(table)
    if report.averaged:
        console.print("averaged over: " + ", ".join(report.averaged), highlight=False)
    for n in report.notes:
        console.print(f"note: {n}", highlight=False, soft_wrap=True)
    where = (
        f"logged to parent run {report.parent_run_id}"
        if report.parent_run_id
        else "not logged (no parent run)"
    )
    console.print(f"files in {report.out_dir} ({where}):", highlight=False, soft_wrap=True)
    for f in report.files:
        console.print(f"  {f.name}", highlight=False)

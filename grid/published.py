"""The papers' published numbers beside a grid's results: a spec's published tables, matched to its trials."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import polars as pl
import yaml
from pydantic import Field, ValidationError, model_validator
from rich.console import Console
from rich.table import Table

from core.config import Strict
from grid.expand import Trial, check_path
from grid.spec import SpecError, describe_errors
from grid.tracking import RunInfo

# A spec's published numbers live beside it: experiments/published/<spec file name>.
PUBLISHED_DIR = "published"


class Column(Strict):
    """A paper column: its header, and the factor from our logged value to the paper's unit."""

    label: str
    scale: float = Field(100.0, gt=0, description="ours x scale = the paper's unit (fractions -> %: 100)")


class Row(Strict):
    """A paper row: the trials it describes (config values at dotted paths) and its numbers."""

    label: str
    match: dict[str, Any]
    values: dict[str, float | None] = {}


class PublishedTable(Strict):
    """One table (or figure) of a paper, with the report metric of each of its columns."""

    title: str
    source: str = Field(description="paper, table and file the numbers are copied from")
    columns: dict[str, Column]
    rows: list[Row]

    @model_validator(mode="after")
    def _values_are_columns(self) -> PublishedTable:
        for row in self.rows:
            unknown = [m for m in row.values if m not in self.columns]
            if unknown:
                raise ValueError(f"row '{row.label}': values for {unknown}, which are not columns")
        return self


class Published(Strict):
    """The published tables of one spec."""

    tables: list[PublishedTable] = Field(min_length=1)


def published_path(spec_path: str | Path) -> Path:
    """Where the published numbers of `spec_path` are: <spec dir>/published/<spec file name>."""
    spec_path = Path(spec_path)
    return spec_path.parent / PUBLISHED_DIR / spec_path.name


def load_published(spec_path: str | Path) -> Published | None:
    """The spec's published tables, or None when it has none; a SpecError names a bad file's path."""
    path = published_path(spec_path)
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
        published = Published.model_validate(data)
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    except ValidationError as err:
        lines = describe_errors(err, Published)
        raise SpecError(f"{path}: invalid published table:\n  " + "\n  ".join(lines)) from None
    for t, table in enumerate(published.tables):
        for row in table.rows:
            for key in row.match:
                check_path(key, f"{path}: tables[{t}] row '{row.label}' match")
    return published


def _value_at(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        node = node[part]
    return node


def _same(ours: Any, wanted: Any) -> bool:
    if isinstance(ours, float) or isinstance(wanted, float):
        return (
            isinstance(ours, int | float) and isinstance(wanted, int | float) and math.isclose(ours, wanted)
        )
    return ours == wanted


def matching(row: Row, trials: list[Trial]) -> list[Trial]:
    """The trials a paper row describes: every `match` path has the given value (seeds all count)."""
    out = []
    for trial in trials:
        config = trial.config.model_dump(mode="json")
        if all(_same(_value_at(config, p), v) for p, v in row.match.items()):
            out.append(trial)
    return out


@dataclass(frozen=True)
class Cell:
    """One metric of one paper row: ours (in the paper's unit) over the row's finished trials, the paper's."""

    published: float | None
    values: tuple[float, ...]
    trials: int

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if len(self.values) < 2:
            return None
        return float(
            cast(float, pl.Series(self.values).std())
        )  # numbers: a float (stubs: also timedelta, None)

    @property
    def delta(self) -> float | None:
        return None if self.mean is None or self.published is None else self.mean - self.published

    def text(self) -> str:
        """'ours / paper (delta)'; 'no trial' when no trial is the row, 'no result' when none has the value."""
        paper = "-" if self.published is None else f"{self.published:g}"
        if self.trials == 0:
            return f"no trial / {paper}"
        if self.mean is None:
            return f"no result / {paper}"
        ours = f"{self.mean:.4g}"
        if self.std is not None:
            ours += f" ± {self.std:.2g} (n={len(self.values)})"
        return f"{ours} / {paper}" + ("" if self.delta is None else f" ({self.delta:+.3g})")


def compare(table: PublishedTable, trials: list[Trial], runs: dict[str, RunInfo]) -> list[dict[str, Cell]]:
    """Per paper row, per column: our finished trials' values (scaled) beside the paper's number."""
    out = []
    for row in table.rows:
        hits = matching(row, trials)
        done = [runs[t.id] for t in hits if t.id in runs and runs[t.id].status == "FINISHED"]
        cells = {}
        for metric, column in table.columns.items():
            values = tuple(
                r.metrics[metric] * column.scale for r in done if r.metrics.get(metric) is not None
            )
            cells[metric] = Cell(row.values.get(metric), values, len(hits))
        out.append(cells)
    return out


@dataclass
class Beside:
    """The published tables of a spec with this grid's numbers beside them."""

    tables: list[tuple[PublishedTable, list[dict[str, Cell]]]]

    def grids(self) -> list[tuple[PublishedTable, list[list[str]]]]:
        out = []
        for table, rows in self.tables:
            header = ["paper row", *[c.label for c in table.columns.values()]]
            body = [[row.label, *[cells[m].text() for m in table.columns]] for row, cells in zip(table.rows, rows, strict=True)]  # fmt: skip
            out.append((table, [header, *body]))
        return out

    def markdown(self) -> str:
        lines = []
        for table, grid in self.grids():
            header, *body = grid
            lines += [
                "",
                f"## Beside the paper: {table.title}",
                "",
                f"Published numbers: {table.source}.",
                "",
            ]
            lines += [
                "Cells: ours (mean ± sample std (n=finished trials, seeds included), in the paper's unit) / "
                "the paper's (our mean minus the paper's); `no result`: the row's trials have not logged it; "
                "`no trial`: the spec has no trial for the row; `-`: the paper gives no number.",
                "",
            ]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
        return "\n".join(lines) + "\n"

    def csv(self, path: Path) -> Path:
        records = []
        for table, rows in self.tables:
            for row, cells in zip(table.rows, rows, strict=True):
                for metric, cell in cells.items():
                    records.append({
                        "table": table.title, "row": row.label, "metric": metric,
                        "column": table.columns[metric].label, "published": cell.published,
                        "mean": cell.mean, "std": cell.std, "n": len(cell.values), "trials": cell.trials,
                        "delta": cell.delta,
                    })  # fmt: skip
        pl.DataFrame(records, infer_schema_length=None).write_csv(path)
        return path

    def print(self, console: Console) -> None:
        for table, grid in self.grids():
            header, *body = grid
            out = Table(title=f"beside the paper: {table.title}", caption=table.source)
            for i, h in enumerate(header):
                out.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
            for row in body:
                out.add_row(*[c.replace("[", "\\[") for c in row])
            console.print(out)


def beside_published(spec_path: str | Path, trials: list[Trial], runs: dict[str, RunInfo]) -> Beside | None:
    """The spec's published tables with this grid's numbers, or None when the spec has none."""
    published = load_published(spec_path)
    if published is None:
        return None
    return Beside([(table, compare(table, trials, runs)) for table in published.tables])

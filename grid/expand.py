"""Grid expansion: a spec becomes the list of resolved trial configs, each with a stable id."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from core.config import TrialConfig
from core.config.identity import content_hash, identity_dict
from grid.cells import FilterCounts, check_filters, check_groups, count_filters, iter_product, matches
from grid.spec_errors import SpecError, check_path, describe_errors, with_yaml_hints

if TYPE_CHECKING:  # for annotations only: grid.spec imports this module
    from grid.spec import ExperimentSpec


@dataclass(frozen=True)
class Trial:
    """One cell of a grid: its id, the axis values that made it and its resolved config."""

    id: str
    axes: dict[str, Any]
    config: TrialConfig

    @property
    def hash(self) -> str:
        return self.id.rsplit("-", 1)[-1]


def _set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = copy.deepcopy(value)


def _get_path(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def check_grid(spec: ExperimentSpec, source: str) -> None:
    """Every path an axis, zip group, exclude or include names is a field of TrialConfig."""
    g = spec.grid
    for path in g.axes:
        check_path(path, f"{source}: grid.axes")
    for i, group in enumerate(g.zip):
        for path in group:
            check_path(path, f"{source}: grid.zip[{i}]")
    for i, rule in enumerate(g.exclude):
        for path in rule:
            check_path(path, f"{source}: grid.exclude[{i}]")
    for i, extra in enumerate(g.include):
        for path in extra:
            check_path(path, f"{source}: grid.include[{i}]")
    check_groups(spec, source)


def iter_cells(spec: ExperimentSpec, base: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(assignments {path: raw value}, where the cell comes from) of every cell the filters keep, lazily."""
    rules = spec.grid.exclude
    for cell in iter_product(spec):
        if not any(matches(cell, base, rule) for rule in rules):
            yield cell, "grid"
    for i, extra in enumerate(spec.grid.include):
        yield dict(extra), f"grid.include[{i}]"


def slug(axes: dict[str, Any], max_len: int = 60) -> str:
    """A readable name from the axis values, sorted by path so YAML order does not matter."""
    parts = []
    for path in sorted(axes):
        value = axes[path]
        text = (
            value
            if isinstance(value, str)
            else content_hash(value, 6)
            if isinstance(value, dict | list)
            else value
        )
        parts.append(f"{path.rsplit('.', 1)[-1]}={text}")
    raw = "_".join(parts) or "base"
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", raw)[:max_len].strip("-_")


def _project(validated: Any, raw: Any) -> Any:
    """The validated value restricted to what the user wrote: the keys of a section given in part, so
    that defaults filled in by validation do not enter the slug."""
    if isinstance(raw, dict) and isinstance(validated, dict):
        return {k: _project(validated.get(k), v) for k, v in raw.items()}
    if isinstance(raw, list) and isinstance(validated, list) and len(raw) == len(validated):
        return [_project(a, b) for a, b in zip(validated, raw, strict=True)]
    return validated


def canonical_axes(cell: dict[str, Any], config: TrialConfig) -> dict[str, Any]:
    """Each axis value as validation read it (`1e-3`, `0.001` and `1.0e-3` are all 0.001), so that the
    spelling of a value never changes a trial id."""
    data = config.model_dump(mode="json")
    return {path: _project(_get_path(data, path), raw) for path, raw in cell.items()}


def trial_hash(config: TrialConfig) -> str:
    """Hash of what defines the trial's result (not paths, logging, resources or code version)."""
    return content_hash(identity_dict(config))


@dataclass
class Expansion:
    """The trials of a grid and what its filters did."""

    trials: list[Trial]
    counts: FilterCounts


def make_trial(cell: dict[str, Any], base: dict[str, Any], source: str, origin: str = "grid") -> Trial:
    """One validated cell; an invalid value is named with the cell it is in."""
    data = copy.deepcopy(base)
    for path, value in cell.items():
        _set_path(data, path, value)
    try:
        config = TrialConfig.model_validate(data)
    except ValidationError as err:
        where = ", ".join(f"{p}={v!r}" for p, v in cell.items())
        lines = with_yaml_hints(describe_errors(err, TrialConfig), err)
        if not where:
            raise SpecError(f"{source}: the base config is invalid:\n  " + "\n  ".join(lines)) from None
        name = "the cell" if origin == "grid" else f"{origin}, the cell"
        axis_lines = [_axis_hint(line, cell) for line in lines]
        raise SpecError(f"{source}: {name} {where} is invalid:\n  " + "\n  ".join(axis_lines)) from None
    axes = canonical_axes(cell, config)
    return Trial(id=f"{slug(axes)}-{trial_hash(config)}", axes=axes, config=config)


def expand_grid(spec: ExperimentSpec, source: str = "<spec>") -> Expansion:
    """All trials of the grid, validated, in a stable order, one per distinct id, with the filter counts.

    An exclude rule that matches nothing, an include entry that adds nothing and a grid left empty are
    SpecErrors: each is a typo or a filter that does not do what it says.
    """
    check_grid(spec, source)
    base = spec.base.model_dump(mode="json")
    counts = count_filters(spec, base)
    check_filters(spec, base, counts, source)
    trials: list[Trial] = []
    origin_of: dict[str, str] = {}
    for cell, origin in iter_cells(spec, base):
        trial = make_trial(cell, base, source, origin)
        if trial.id in origin_of:
            if origin != "grid":
                raise SpecError(
                    f"{source}: {origin} {cell} adds nothing: the grid already has this cell ({trial.id}, "
                    f"from {origin_of[trial.id]}); drop the entry"
                )
            counts.merged += 1
            continue
        origin_of[trial.id] = origin
        trials.append(trial)
    if not trials:
        raise SpecError(f"{source}: the grid has no cell left ({'; '.join(counts.lines())}); {EMPTY_FIX}")
    return Expansion(trials, counts)


EMPTY_FIX = "check grid.exclude, or add values to the axes"


def expand(spec: ExperimentSpec, source: str = "<spec>") -> list[Trial]:
    """All trials of the grid, validated, in a stable order, without duplicates."""
    return expand_grid(spec, source).trials


def _axis_hint(line: str, cell: dict[str, Any]) -> str:
    """Blame the cell when the failing path is an axis, inside one or a section holding one (a model
    check over several fields); the base only when no axis is involved."""
    path = line.split(":", 1)[0]
    for axis in cell:
        if path in (axis, "(top level)") or path.startswith(axis + ".") or axis.startswith(path + "."):
            return (
                f"grid axis {line}"
                if path == axis or path.startswith(axis + ".")
                else f"in this cell, {line}"
            )
    return f"base.{line}"

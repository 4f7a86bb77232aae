"""Grid expansion: a spec becomes the list of resolved trial configs, each with a stable id."""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from core.config import TrialConfig
from core.config.identity import content_hash, identity_dict
from grid.spec_errors import SpecError, check_path, describe_errors

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


def _cells(spec: ExperimentSpec, source: str) -> list[tuple[dict[str, Any], bool]]:
    """(assignments {path: value}, whether exclude rules apply) for every cell, before validation."""
    g = spec.grid
    for path, values in g.axes.items():
        check_path(path, f"{source}: grid.axes")
        if not values:
            raise SpecError(f"{source}: grid.axes.{path}: an axis needs at least one value")
    factors: list[list[dict[str, Any]]] = [[{p: v} for v in vals] for p, vals in g.axes.items()]
    seen = set(g.axes)
    for i, group in enumerate(g.zip):
        lengths = {p: len(v) for p, v in group.items()}
        for path in group:
            check_path(path, f"{source}: grid.zip[{i}]")
            if path in seen:
                raise SpecError(
                    f"{source}: grid.zip[{i}].{path}: this path is already varied by another axis"
                )
            seen.add(path)
        if len(set(lengths.values())) > 1:
            raise SpecError(f"{source}: grid.zip[{i}]: zipped axes must have equal lengths; got {lengths}")
        n = next(iter(lengths.values()), 0)
        factors.append([{p: vals[j] for p, vals in group.items()} for j in range(n)])
    cells = [dict(kv for part in combo for kv in part.items()) for combo in itertools.product(*factors)]
    for i, rule in enumerate(g.exclude):
        for path in rule:
            check_path(path, f"{source}: grid.exclude[{i}]")
    for i, extra in enumerate(g.include):
        for path in extra:
            check_path(path, f"{source}: grid.include[{i}]")
    return [(c, True) for c in cells] + [(dict(extra), False) for extra in g.include]


def _matches(data: dict[str, Any], rule: dict[str, Any]) -> bool:
    """An exclude rule matches a cell whose resolved config has every value the rule names."""
    return all(_get_path(data, path) == value for path, value in rule.items())


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


def trial_hash(config: TrialConfig) -> str:
    """Hash of what defines the trial's result (not paths, logging, resources or code version)."""
    return content_hash(identity_dict(config))


def expand(spec: ExperimentSpec, source: str = "<spec>") -> list[Trial]:
    """All trials of the grid, validated, in a stable order, without duplicates."""
    base = spec.base.model_dump(mode="json")
    trials: list[Trial] = []
    ids: set[str] = set()
    for cell, excludable in _cells(spec, source):
        data = copy.deepcopy(base)
        for path, value in cell.items():
            _set_path(data, path, value)
        if excludable and any(_matches(data, rule) for rule in spec.grid.exclude):
            continue
        try:
            config = TrialConfig.model_validate(data)
        except ValidationError as err:
            where = ", ".join(f"{p}={v!r}" for p, v in cell.items()) or "the base config"
            lines = describe_errors(err, TrialConfig)
            axis_lines = [_axis_hint(line, cell) for line in lines]
            raise SpecError(f"{source}: the cell {where} is invalid:\n  " + "\n  ".join(axis_lines)) from None
        trial_id = f"{slug(cell)}-{trial_hash(config)}"
        if trial_id in ids:
            continue
        ids.add(trial_id)
        trials.append(Trial(id=trial_id, axes=cell, config=config))
    return trials


def _axis_hint(line: str, cell: dict[str, Any]) -> str:
    path = line.split(":", 1)[0]
    for axis in cell:
        if path == axis or path.startswith(axis + "."):
            return f"grid axis {line}"
    return f"base.{line}"

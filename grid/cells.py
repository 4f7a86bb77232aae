"""Grid cells before validation, one at a time: the axis product, the exclude rules and what each matched."""

from __future__ import annotations

import difflib
import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grid.spec_errors import SpecError

if TYPE_CHECKING:  # for annotations only: grid.spec imports grid.expand, which imports this module
    from grid.spec import ExperimentSpec


@dataclass
class FilterCounts:
    """What a grid's filters did: cells of the product, cells each exclude rule matched, cells kept."""

    product: int = 0
    excluded: list[int] = field(default_factory=list)  # cells each exclude rule matched
    removed: int = 0  # cells removed by any rule
    included: int = 0  # include entries (extra cells)
    merged: int = 0  # cells that were another cell under another spelling (one trial)

    @property
    def kept(self) -> int:
        return self.product - self.removed + self.included - self.merged

    def lines(self) -> list[str]:
        """What each filter did, one line each (the plan prints them)."""
        out = [f"{self.product} cells from grid.axes/grid.zip"]
        out += [f"grid.exclude[{i}] removes {n}" for i, n in enumerate(self.excluded)]
        if self.excluded and self.removed != sum(self.excluded):
            out.append(f"{self.removed} removed in all (some cells match several exclude rules)")
        if self.included:
            out.append(f"grid.include adds {self.included}")
        if self.merged:
            out.append(f"{self.merged} merged: the same value written two ways is one cell")
        return out


def check_groups(spec: ExperimentSpec, source: str) -> None:
    """Axes and zip groups that give cells: no empty list, no empty group, equal zipped lengths, no path
    varied twice."""
    g = spec.grid
    for path, values in g.axes.items():
        if not values:
            raise SpecError(f"{source}: grid.axes.{path}: an axis needs at least one value")
    seen = set(g.axes)
    for i, group in enumerate(g.zip):
        if not group:
            raise SpecError(
                f"{source}: grid.zip[{i}]: an empty group gives no cell; give it paths and values"
            )
        for path, values in group.items():
            if path in seen:
                raise SpecError(
                    f"{source}: grid.zip[{i}].{path}: this path is already varied by another axis"
                )
            if not values:
                raise SpecError(f"{source}: grid.zip[{i}].{path}: a zipped axis needs at least one value")
            seen.add(path)
        lengths = {p: len(v) for p, v in group.items()}
        if len(set(lengths.values())) > 1:
            raise SpecError(f"{source}: grid.zip[{i}]: zipped axes must have equal lengths; got {lengths}")


def product_size(spec: ExperimentSpec) -> int:
    """Cells of the axis product and zip groups, counted without building them."""
    sizes = [len(v) for v in spec.grid.axes.values()]
    sizes += [len(next(iter(group.values()), [])) for group in spec.grid.zip]
    return math.prod(sizes)


def _factors(spec: ExperimentSpec) -> list[list[dict[str, Any]]]:
    """One list of choices per axis and per zip group; a cell takes one choice of each."""
    g = spec.grid
    factors: list[list[dict[str, Any]]] = [[{p: v} for v in vals] for p, vals in g.axes.items()]
    for group in g.zip:
        n = len(next(iter(group.values())))
        factors.append([{p: vals[j] for p, vals in group.items()} for j in range(n)])
    return factors


def iter_product(spec: ExperimentSpec, reverse: bool = False) -> Iterator[dict[str, Any]]:
    """The product cells ({path: raw value}), one at a time, in a stable order (or its reverse)."""
    factors = _factors(spec)
    for combo in itertools.product(*[f[::-1] if reverse else f for f in factors]):
        yield {k: v for part in combo for k, v in part.items()}


def value_at(cell: dict[str, Any], base: dict[str, Any], path: str) -> Any:
    """The raw value at `path` of a cell: set by an axis (or inside an axis's section value), else the
    base's."""
    if path in cell:
        return cell[path]
    for axis, value in cell.items():
        if path.startswith(axis + "."):
            return _walk(value, path[len(axis) + 1 :])
    return _walk(base, path)


def _walk(node: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def same_value(a: Any, b: Any) -> bool:
    """Equal as written or as numbers: `1e-3`, `0.001` and `1.0e-3` are one value."""
    if a == b:
        return True
    na, nb = _number(a), _number(b)
    return na is not None and na == nb


def matches(cell: dict[str, Any], base: dict[str, Any], rule: dict[str, Any]) -> bool:
    """An exclude rule matches a cell whose resolved values include every value the rule names."""
    return all(same_value(value_at(cell, base, path), value) for path, value in rule.items())


# Up to this many exclude rules, the cells they remove together are counted by inclusion-exclusion
# (2^rules products of per-axis counts); above it, by walking the cells.
_MAX_RULES_COUNTED = 10
# How many cells an exclude rule that matches nothing is compared with, for its closest cells.
_MAX_CELLS_COMPARED = 20_000


def _owner(factors: list[list[dict[str, Any]]], path: str) -> int | None:
    """The factor whose choices set `path` (or a section above it); None when only the base does."""
    for i, factor in enumerate(factors):
        if any(path == k or path.startswith(k + ".") for k in factor[0]):
            return i
    return None


def _cells_matching(
    factors: list[list[dict[str, Any]]], base: dict[str, Any], rules: list[dict[str, Any]]
) -> int:
    """How many product cells match every one of `rules`, without building a cell: the rules' values
    split by the axis (factor) that sets them, so the count is a product of per-axis counts."""
    by_factor: dict[int | None, list[tuple[str, Any]]] = {}
    for rule in rules:
        for path, value in rule.items():
            by_factor.setdefault(_owner(factors, path), []).append((path, value))
    if not all(same_value(_walk(base, p), v) for p, v in by_factor.pop(None, [])):
        return 0
    by_axis = {i: wants for i, wants in by_factor.items() if i is not None}  # all of them, after the pop
    total = math.prod(len(f) for i, f in enumerate(factors) if i not in by_axis)
    for i, wants in by_axis.items():
        total *= sum(all(same_value(value_at(c, base, p), v) for p, v in wants) for c in factors[i])
    return total


def count_filters(spec: ExperimentSpec, base: dict[str, Any]) -> FilterCounts:
    """The cells each exclude rule matches and how many they remove, in O(axis values) time and memory
    (a grid of 10^6 cells is counted, not walked)."""
    rules = spec.grid.exclude
    factors = _factors(spec)
    counts = FilterCounts(product_size(spec), [], 0, len(spec.grid.include))
    counts.excluded = [_cells_matching(factors, base, [rule]) for rule in rules]
    if len(rules) <= _MAX_RULES_COUNTED:
        for k in range(1, len(rules) + 1):
            for subset in itertools.combinations(rules, k):
                counts.removed += (-1) ** (k + 1) * _cells_matching(factors, base, list(subset))
    else:
        counts.removed = sum(any(matches(c, base, r) for r in rules) for c in iter_product(spec))
    return counts


def closest_cells(spec: ExperimentSpec, base: dict[str, Any], rule: dict[str, Any], n: int = 3) -> list[str]:
    """The cells that agree with most of a rule's values, as `path=value` text (for an error message)."""
    scored: list[tuple[float, int, str]] = []
    # Bounded: on a 10^6-cell grid the error comes in seconds, from the first cells' neighbours.
    for k, cell in enumerate(itertools.islice(iter_product(spec), _MAX_CELLS_COMPARED)):
        score = sum(_likeness(value_at(cell, base, p), v) for p, v in rule.items())
        text = ", ".join(f"{p}={value_at(cell, base, p)!r}" for p in rule)
        item = (score, -k, text)
        if len(scored) < n * 4:
            heapq.heappush(scored, item)
        else:
            heapq.heappushpop(scored, item)
    return list(dict.fromkeys(t for _, _, t in sorted(scored, reverse=True)))[:n]


def _likeness(found: Any, wanted: Any) -> float:
    """1 for the same value, else how alike the two read as text (a typo scores high)."""
    if same_value(found, wanted):
        return 1.0
    return 0.9 * difflib.SequenceMatcher(None, str(found), str(wanted)).ratio()


def check_filters(spec: ExperimentSpec, base: dict[str, Any], counts: FilterCounts, source: str) -> None:
    """An exclude rule that matches no cell is a typo or another spelling: refused with the closest cells."""
    for i, (rule, n) in enumerate(zip(spec.grid.exclude, counts.excluded, strict=True)):
        if n == 0:
            near = "; ".join(closest_cells(spec, base, rule)) or "none"
            raise SpecError(
                f"{source}: grid.exclude[{i}] {rule} matches no cell of the grid, so it removes nothing; "
                f"fix its paths or values (closest cells: {near})"
            )


def _kept(spec: ExperimentSpec, base: dict[str, Any], reverse: bool) -> Iterator[dict[str, Any]]:
    rules = spec.grid.exclude
    return (c for c in iter_product(spec, reverse) if not any(matches(c, base, r) for r in rules))


def scan(spec: ExperimentSpec, base: dict[str, Any], keep: int) -> tuple[FilterCounts, list[Any], list[Any]]:
    """The filter counts and the first and last `keep` cells the filters keep ((cell, origin) pairs;
    includes come last), reading the product from both ends: time and memory do not grow with the grid."""
    counts = count_filters(spec, base)
    n_grid = counts.product - counts.removed
    first = list(itertools.islice(_kept(spec, base, reverse=False), keep))
    tail = list(itertools.islice(_kept(spec, base, reverse=True), max(0, min(keep, n_grid - keep))))[::-1]
    cells = [(c, "grid") for c in [*first, *tail]]
    includes = [(dict(extra), f"grid.include[{i}]") for i, extra in enumerate(spec.grid.include)]
    shown_first = (cells + includes)[:keep]
    rest = (cells + includes)[keep:]
    return counts, shown_first, rest[-keep:] if rest else []

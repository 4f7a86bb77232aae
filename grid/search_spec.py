"""The `search:` block of a spec: a space over config paths, a metric, a budget; validated at load time."""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from core.config import METHODS_WITH_BASIC, METHODS_WITH_SEA, Strict, TrialConfig
from core.config.methods import BASE_METRICS, BASIC, FINAL_LOSS, SEA, stage_metric
from core.evaluation.names import DIAGNOSTICS, diag_name
from grid.dotted import annotation_at
from grid.spec_errors import SpecError, check_path, describe_errors

# What each distribution takes: `choice`/`grid` a list of values, the others [low, high].
DISTRIBUTIONS: dict[str, str] = {
    "choice": "a list of values, sampled uniformly",
    "grid": "a list of values, each tried (times num_samples)",
    "uniform": "[low, high], a float",
    "loguniform": "[low, high], a float, low > 0",
    "randint": "[low, high], an integer, high exclusive",
}


class SchedulerConfig(Strict):
    """Early stopping: none, or ASHA on a per-step metric (steps of the metric's stage)."""

    kind: Literal["none", "asha"] = "none"
    grace_period: int = Field(1, ge=1, description="steps every trial runs before it can be stopped")
    max_t: int = Field(100, ge=1, description="the last rung's step (trials reaching it still finish)")
    reduction_factor: float = Field(2.0, gt=1)
    metric: str | None = Field(
        None, description="the per-step metric ASHA's rungs compare (default: the search's metric)"
    )
    mode: Literal["min", "max"] | None = Field(None, description="its direction (default: the search's mode)")


class SearchConfig(Strict):
    """A hyper-parameter search around the base config (inside each grid cell when there are axes)."""

    space: dict[str, dict[str, Any]] = Field(min_length=1)
    metric: str
    mode: Literal["min", "max"]
    num_samples: int = Field(8, ge=1)
    algorithm: Literal["random", "optuna"] = "random"
    seed: int = 0
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    max_concurrent: int | None = Field(None, ge=1, description="default: what the cluster's CPUs/GPUs allow")
    time_budget_s: float | None = Field(None, gt=0)
    accept_gameable_metric: str | None = Field(
        None,
        min_length=10,
        description="a sentence acknowledging that the metric rewards a searched knob by construction "
        "(the guard refuses such a search otherwise); logged to the search's MLflow run",
    )
    start_from_base: bool = Field(
        False, description="run the base config's own values (the paper's defaults) as the first trial"
    )


class SearchSpecError(ValueError):
    """A search block that cannot run; the message names the YAML path."""


def distribution(path: str, raw: dict[str, Any], where: str) -> tuple[str, Any]:
    """(kind, args) of one space entry such as {loguniform: [0.01, 10]}."""
    if len(raw) != 1 or next(iter(raw)) not in DISTRIBUTIONS:
        kinds = "; ".join(f"{k}: {v}" for k, v in DISTRIBUTIONS.items())
        raise SearchSpecError(f"{where}: write one distribution, e.g. {{choice: [1, 2]}}; allowed: {kinds}")
    kind, args = next(iter(raw.items()))
    if not isinstance(args, list) or not args:
        raise SearchSpecError(f"{where}.{kind}: needs {DISTRIBUTIONS[kind]}; got {args!r}")
    if kind in ("uniform", "loguniform", "randint"):
        # Bounds are numbers however they are written ('1e-4' quoted, as the base config accepts it).
        args = [_bound(a, kind) for a in args]
        if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
            raise SearchSpecError(f"{where}.{kind}: needs {DISTRIBUTIONS[kind]}; got {args!r}")
        if args[0] >= args[1]:
            raise SearchSpecError(f"{where}.{kind}: low {args[0]} must be below high {args[1]}")
        if kind == "loguniform" and args[0] <= 0:
            raise SearchSpecError(f"{where}.loguniform: low must be > 0 (got {args[0]})")
    return kind, args


def _bound(value: Any, kind: str) -> Any:
    """A bound written as text ('1e-4', '3') read as the number it spells; anything else as it is."""
    if not isinstance(value, str):
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if kind == "randint" and number.is_integer() else number


def _leaf_annotation(path: str) -> Any:
    return annotation_at(TrialConfig, path.split("."))


def _accepts(annotation: Any, kind: type) -> bool:
    """Whether a field's type admits values of `kind` (int or float), through Optional/unions."""
    if annotation is kind or (kind is int and annotation is float):
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return any(_accepts(a, kind) for a in typing.get_args(annotation))
    return False


def sample_values(kind: str, args: list[Any]) -> list[Any]:
    """The values to check against the field: every listed one, or the range's ends."""
    if kind == "randint":
        return [args[0], args[1] - 1]
    return list(args)


def with_values(base: dict[str, Any], assignments: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config dump with values set at dotted paths."""
    data = copy.deepcopy(base)
    for path, value in assignments.items():
        *parents, leaf = path.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return data


def check_space(search: SearchConfig, base: TrialConfig, source: str) -> None:
    """Every path exists, every distribution fits its field's type and every bound its range."""
    dump = base.model_dump(mode="json")
    for path, raw in search.space.items():
        where = f"{source}: search.space.{path}"
        try:
            check_path(path, f"{source}: search.space")
        except SpecError as err:
            raise SearchSpecError(str(err)) from None
        annotation = _leaf_annotation(path)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            raise SearchSpecError(f"{where}: '{path}' is a section; search one of its values")
        kind, args = distribution(path, raw, where)
        numeric = {"uniform": float, "loguniform": float, "randint": int}.get(kind)
        if numeric is not None and not _accepts(annotation, numeric):
            raise SearchSpecError(
                f"{where}.{kind}: the field holds {getattr(annotation, '__name__', annotation)}, not "
                f"{numeric.__name__}; use choice for a list of allowed values"
            )
        for value in sample_values(kind, args):
            try:
                TrialConfig.model_validate(with_values(dump, {path: value}))
            except ValidationError as err:
                lines = [ln for ln in describe_errors(err, TrialConfig) if ln.startswith(path)]
                detail = "; ".join(lines or describe_errors(err, TrialConfig))
                raise SearchSpecError(f"{where}.{kind}: the value {value!r} does not fit: {detail}") from None


def per_step_metrics(cfg: TrialConfig) -> set[str]:
    """Metrics a trial reports at its training steps (usable by ASHA)."""
    out: set[str] = set()
    method = cfg.method.name
    for stage in ("stage1", "stage2"):
        if not getattr(cfg, stage).enabled:
            continue
        out |= {f"{stage}/{m}" for m in BASE_METRICS}
        if method in METHODS_WITH_SEA and stage == "stage1":
            out |= {f"{stage}/{m}" for m in SEA.metrics}
        if method in METHODS_WITH_BASIC and getattr(cfg.method.basic, stage):
            out |= {f"{stage}/{m}" for m in BASIC.metrics}
    if cfg.stage1.enabled and cfg.eval.enabled and cfg.eval.diagnostics.every_steps:
        out |= {diag_name(d) for d in DIAGNOSTICS}
    return out | heldout_metrics(cfg, per_step=True)


def final_metrics(cfg: TrialConfig) -> set[str]:
    """Metrics a trial reports once, at its end (its evaluation and the stages' final losses)."""
    out = {stage_metric(s, FINAL_LOSS) for s in ("stage1", "stage2") if getattr(cfg, s).enabled}
    if cfg.eval.enabled:
        out |= {diag_name(d) for d in DIAGNOSTICS}
        out |= {f"eval/{b.name}" for b in cfg.eval.benchmarks}
    return out | heldout_metrics(cfg, per_step=False) | retention_names(cfg)


def retention_names(cfg: TrialConfig) -> set[str]:
    """`eval/<name>/retention` of each benchmark scored both before and after stage 2."""
    if not (cfg.eval.enabled and cfg.stage1.enabled and cfg.stage2.enabled):
        return set()
    both = [b for b in cfg.eval.benchmarks if b.runs_after("stage1", False) and b.runs_after("stage2", True)]
    return {f"eval/{b.name}/retention" for b in both}


def heldout_metrics(cfg: TrialConfig, *, per_step: bool) -> set[str]:
    """`<stage>/heldout/lm`: per step where the stage evaluates it every N steps, at the end wherever it
    holds data out."""
    out = set()
    for stage in ("stage1", "stage2"):
        settings = getattr(cfg, stage)
        held = settings.heldout.every_steps is not None if per_step else settings.heldout.active
        if settings.enabled and held:
            out.add(f"{stage}/heldout/lm")
    return out


def benchmark_metrics(cfg: TrialConfig) -> set[str]:
    """Every metric name the trial's benchmarks declare (their kinds' `metric_names`), after each stage they
    run after, and their retention. Imports the benchmark registry (torch): call it only for `eval/` names."""
    from core.evaluation.benchmarks.registry import metric_names
    from core.evaluation.names import metric_prefix

    if not cfg.eval.enabled:
        return set()
    stages = [s for s in ("stage1", "stage2") if getattr(cfg, s).enabled]
    out = set(retention_names(cfg))
    for bench in cfg.eval.benchmarks:
        for stage in stages:
            final = stage == stages[-1]
            if bench.runs_after(stage, final):
                out |= set(metric_names(bench, metric_prefix(bench.name, final)))
    return out


def metric_stage(metric: str) -> str:
    """The stage whose steps time a per-step metric (the diagnostics curve is stage 1's)."""
    return metric.split("/", 1)[0] if metric.startswith("stage") else "stage1"


def check_metric(search: SearchConfig, cfg: TrialConfig, source: str, cell: str = "") -> None:
    """The metric is one the trials report; ASHA needs one reported at every step."""
    steps, finals = per_step_metrics(cfg), final_metrics(cfg)
    if search.metric.startswith("eval/") and search.metric not in finals:
        finals = finals | benchmark_metrics(cfg)  # a benchmark's own metrics, as its kind declares them
    where = f"{source}: search.metric{f' (cell {cell})' if cell else ''}"
    if search.metric not in steps | finals:
        known = ", ".join(sorted(steps | finals))
        raise SearchSpecError(f"{where}: no trial reports '{search.metric}'; these do: {known}")
    if search.scheduler.kind == "asha" and search.scheduler.metric is None and search.metric not in steps:
        hint = (
            "set eval.diagnostics.every_steps for a diag/* curve"
            if search.metric.startswith("diag/")
            else f"per-step metrics here: {', '.join(sorted(steps))}"
        )
        raise SearchSpecError(
            f"{source}: search.scheduler: asha needs a metric reported at every step, and "
            f"'{search.metric}' is reported only at the end; {hint}, or use scheduler kind none"
        )
    if search.scheduler.kind == "asha" and search.scheduler.grace_period > search.scheduler.max_t:
        raise SearchSpecError(
            f"{source}: search.scheduler: grace_period {search.scheduler.grace_period} is above max_t "
            f"{search.scheduler.max_t}"
        )


def check_search(spec: Any, source: str, trials: Sequence[Any]) -> None:
    """The whole search block against every grid cell (`trials`, the spec expanded): paths,
    distributions, metric, scheduler."""
    search = spec.search
    grids = [p for p, raw in search.space.items() if "grid" in raw]
    if search.algorithm == "optuna" and grids:
        raise SearchSpecError(
            f"{source}: search.space.{grids[0]}: optuna samples its values itself; use choice, or "
            "algorithm random for a grid"
        )
    varied = set(spec.grid.axes) | {p for group in spec.grid.zip for p in group}
    for path in search.space:
        if path in varied:
            raise SearchSpecError(
                f"{source}: search.space.{path}: this path is a grid axis too; search it or vary it, not both"
            )
    for trial in trials:
        check_space(search, trial.config, source)
        check_metric(search, trial.config, source, cell=trial.id if spec.grid.axes else "")
        check_fair_search(search, trial.config, source, cell=trial.id if spec.grid.axes else "")


def rung_metric(search: SearchConfig) -> tuple[str, str]:
    """(metric, mode) ASHA's rungs compare: the scheduler's own, else the search's."""
    return search.scheduler.metric or search.metric, search.scheduler.mode or search.mode


def check_fair_search(search: SearchConfig, cfg: TrialConfig, source: str, cell: str = "") -> None:
    """The scheduler's own metric is per-step; no metric rewards a searched knob by construction (unless
    acknowledged); the base point, when it is the first trial, lies in the space."""
    from grid.search_guard import GameableMetricError, check_gameable

    steps, finals = per_step_metrics(cfg), final_metrics(cfg)
    where = f"{source}: search{f' (cell {cell})' if cell else ''}"
    rung, _ = rung_metric(search)
    if search.scheduler.metric is not None and search.scheduler.kind == "asha" and rung not in steps:
        raise SearchSpecError(
            f"{where}.scheduler.metric: '{rung}' is not reported at every step; per-step metrics here: "
            f"{', '.join(sorted(steps))} (a stage's heldout.every_steps adds <stage>/heldout/lm)"
        )
    for metric in dict.fromkeys([search.metric, rung]):
        try:
            check_gameable(
                search.model_copy(update={"metric": metric}), cfg, steps | finals, f"{where}.metric"
            )
        except GameableMetricError as err:
            raise SearchSpecError(str(err)) from None
    if search.start_from_base:
        base_point(search, cfg, where)


def base_point(search: SearchConfig, cfg: TrialConfig, where: str = "search") -> dict[str, Any]:
    """The base config's value at every searched path (the default trial), checked against the space."""
    from core.config.identity import flatten

    values = flatten(cfg.model_dump(mode="json"))
    point: dict[str, Any] = {}
    for path, raw in search.space.items():
        kind, args = next(iter(raw.items()))
        value = values.get(path)
        if kind == "grid":
            raise SearchSpecError(
                f"{where}.start_from_base: {path} is a grid (every value is tried anyway); use choice"
            )
        high_ok = value < args[1] if kind == "randint" else value <= args[1]
        inside = value in args if kind == "choice" else value is not None and args[0] <= value and high_ok
        if not inside:
            raise SearchSpecError(
                f"{where}.start_from_base: the base value of {path} ({value!r}) is outside {kind} {args}; "
                "widen the space or set the base to the paper's default"
            )
        point[path] = value
    return point

"""The one runner: a graph's steps in dependency order, each built by its own function under the protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.paths import using_cache_dir
from core.steps.context import StepContext, TrialRuntime
from core.steps.materialize import Materialized, materialize
from core.steps.status import is_success
from core.steps.step import Step, StepResources, upstream, walk


def dep_dirs(step: Step, root: Path) -> dict[str, Path]:
    """{name: finished directory} of every step `step` depends on, directly or through others."""
    return {d.name: d.path(root) for d in upstream(step)}


def build_here(step: Step, root: Path, runtime: TrialRuntime) -> Materialized:
    """Materialise `step` in this process: its lease, then `step.fn(config, deps, out_dir, ctx)`."""
    if step.fn is None:
        raise ValueError(f"step {step.name} has no function to build it")
    fn, root = step.fn, Path(root)
    deps, ctx = dep_dirs(step, root), StepContext(step.dirname, root, runtime)
    with using_cache_dir(runtime.cache_dir):
        return materialize(step, root, lambda out: fn(step.config, deps, out, ctx))


def task_options(resources: StepResources) -> dict[str, Any]:
    """A Ray task holding one worker's resources, outside the Tune trial's placement group (a token
    bundle for the driver): label and evaluation work runs while no training worker holds them."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "num_cpus": resources.cpus,
        "num_gpus": resources.gpus,
        "max_retries": 0,
        # None: outside any placement group, as Ray documents; its annotation says PlacementGroup only.
        "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=None),  # type: ignore[arg-type]
    }


def _build_in_task(step: Step, root: str, runtime: TrialRuntime) -> Materialized:
    return build_here(step, Path(root), runtime)


def run_step(step: Step, root: Path, runtime: TrialRuntime, *, local: bool = False) -> Materialized:
    """Reuse `step` if it is done, else build it: in a Ray task holding its resources (which then holds
    its lease) when `step.in_task` says so and not `local`, else here."""
    root = Path(root)
    if is_success(step.path(root)):
        return Materialized(step.path(root), True)
    if local or step.in_task is None or not step.in_task(step.config, runtime):
        return build_here(step, root, runtime)
    import ray

    task = ray.remote(_build_in_task).options(**task_options(step.resources))
    return ray.get(task.remote(step, str(root), runtime.for_task()))


def run_steps(
    steps: list[Step],
    root: Path,
    runtime: TrialRuntime,
    *,
    local: bool = False,
    on_start: Callable[[Step], None] | None = None,
) -> Iterator[tuple[Step, Materialized]]:
    """Every step reachable from `steps`, dependencies first, each run (or reused) once: yields each
    with its directory as it finishes. `on_start(step)` is told before a step that is not done starts
    (the console's "what is this trial doing")."""
    for step in walk(steps):
        if on_start is not None and not is_success(step.path(root)):
            on_start(step)
        yield step, run_step(step, root, runtime, local=local)

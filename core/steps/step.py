"""A step: a pure description of one piece of a trial's work, named by the hash of what defines it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.config import Strict
from core.config.identity import content_hash, identity_dict
from core.steps.context import StepContext, TrialRuntime
from core.steps.status import Materialized

# `fn(config, deps, out_dir, ctx)`: writes the step's output into `out_dir`; `deps` maps the name of every
# step it depends on (directly or through others) to that step's finished directory.
StepFn = Callable[[Any, Mapping[str, Path], Path, StepContext], object]  # what it returns is ignored
# Whether the runner hands the step to a Ray task holding its resources (else it runs in the caller).
InTask = Callable[[Any, TrialRuntime], bool]
# What a finished step adds to its trial's summary (its metrics, its directory).
Summary = Callable[[Any, Materialized], dict[str, Any]]

# Bumped when what a step's function writes changes in a way older outputs cannot serve.
STEP_FORMAT = 1


@dataclass(frozen=True)
class StepResources:
    """What materialising a step holds while it runs (per process; a training step has `workers` of them)."""

    cpus: float = 1.0
    gpus: float = 0.0
    workers: int = 1


@dataclass(frozen=True)
class Step:
    """`name` (its kind: labels, stage1, eval-stage1, ...), `config` (typed; its identity fields define the
    result), `deps` (steps whose outputs it reads) and `resources`. `fn` builds it (`StepFn`; the runner,
    `core.steps.runner`, calls it under the status protocol), `in_task` says where, `summary` what it
    reports. None of the three is part of the identity (code is not), `STEP_FORMAT` is.
    """

    name: str
    config: BaseModel
    deps: tuple[Step, ...] = ()
    resources: StepResources = field(default_factory=StepResources)
    fn: StepFn | None = field(default=None, compare=False, repr=False)
    in_task: InTask | None = field(default=None, compare=False, repr=False)
    summary: Summary | None = field(default=None, compare=False, repr=False)

    def identity(self) -> dict[str, Any]:
        """What the hash covers: name, the config's identity fields, the dependencies' hashes."""
        return {
            "name": self.name,
            "format": STEP_FORMAT,
            "config": identity_dict(self.config),
            "deps": {d.name: d.hash for d in self.deps},
        }

    @property
    def hash(self) -> str:
        return content_hash(self.identity())

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.hash}"

    def path(self, root: Path) -> Path:
        """Where its finished output lives: `<steps root>/<name>-<hash>/`."""
        return Path(root) / self.dirname

    def dep(self, name: str) -> Step:
        """The dependency called `name` (a KeyError names the ones there are)."""
        for d in self.deps:
            if d.name == name:
                return d
        raise KeyError(f"step {self.name} has no dependency {name!r}; it has {[d.name for d in self.deps]}")

    def describe(self) -> dict[str, Any]:
        """`step.json`: the identity plus the whole config (paths and resources included, for people)."""
        return {
            **self.identity(),
            "hash": self.hash,
            "config_full": self.config.model_dump(mode="json"),
            "deps_dirs": {d.name: d.dirname for d in self.deps},
        }

    def record(self) -> StepRecord:
        """What the status protocol needs of this step, as data a process of its own can receive."""
        return StepRecord(dirname=self.dirname, hash=self.hash, description=self.describe())


class StepRecord(Strict):
    """A step as plain data (its name, hash and `step.json`): enough to materialise it elsewhere (the
    evaluation a training worker runs with the model still in memory)."""

    dirname: str
    hash: str
    description: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return self.description


def upstream(step: Step) -> list[Step]:
    """Every step `step` depends on, directly or through others, dependencies first."""
    return list(walk(list(step.deps)))


def walk(steps: list[Step]) -> Iterator[Step]:
    """Every step reachable from `steps`, dependencies before dependants, each once."""
    seen: set[str] = set()

    def visit(step: Step) -> Iterator[Step]:
        for d in step.deps:
            yield from visit(d)
        if step.dirname not in seen:
            seen.add(step.dirname)
            yield step

    for s in steps:
        yield from visit(s)

"""A step: a pure description of one piece of a trial's work, named by the hash of what defines it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.config.identity import content_hash, identity_dict

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
    result), `deps` (steps whose outputs it reads) and `resources`. `run(step, out_dir, deps_dirs)` is the
    function that materialises it; it is not part of the identity (code is not), `STEP_FORMAT` is.
    """

    name: str
    config: BaseModel
    deps: tuple[Step, ...] = ()
    resources: StepResources = field(default_factory=StepResources)
    run: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

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

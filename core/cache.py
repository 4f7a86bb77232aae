"""Cached artefacts (tiny models, synthetic data) built once, by the steps' one directory protocol."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.steps.materialize import build_dir_once
from core.steps.status import is_success

# What a finished directory held before the steps' `.status` served caches too (and what a label store
# still writes when its extraction completes): such a directory stays finished.
DONE_MARKER = ".done"


def is_built(target: Path) -> bool:
    """True when `target` was completed by `build_once` (a half-written directory is not)."""
    target = Path(target)
    return is_success(target) or (target / DONE_MARKER).exists()


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(work_dir)` and move the result to `target` unless it is already there.

    The steps' protocol (core/steps/materialize.py): a lease lock beside `target` serialises concurrent
    builders (Ray workers starting together); each attempt builds afresh in `.<name>.partial` beside it,
    renamed only when complete, so an interrupted build never leaves a directory that looks finished.
    """
    target = Path(target)
    return build_dir_once(target.parent, target.name, build, fresh=True, done=is_built).path

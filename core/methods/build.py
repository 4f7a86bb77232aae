"""Which objective a method trains with in each stage: an explicit registry from method name to builder."""

from __future__ import annotations

from collections.abc import Callable

from core.config import METHOD_PARTS, PARTS, MethodConfig
from core.config.methods import BASIC, SEA
from core.methods.context import BuildContext
from core.methods.objective import CombinedObjective, Objective

Builder = Callable[[MethodConfig, BuildContext, str], Objective | None]


def _sea(method: MethodConfig, context: BuildContext, stage: str) -> Objective | None:
    # SEA aligns against label embeddings that are constants only while the LLM is frozen: stage 1.
    from core.stages import STAGES

    if not STAGES[stage].sea_applies:
        return None
    from core.methods.sea_objective import SeaObjective

    return SeaObjective(method.sea, **context["sea"])


def _basic(method: MethodConfig, context: BuildContext, stage: str) -> Objective | None:
    from core.stages import STAGES

    if not STAGES[stage].basic_applies(method):
        return None
    from core.methods.basic_objective import BasicObjective

    return BasicObjective(method.basic, context["vlm"])


# How each part of the method registry (core/config/methods.py) is built.
PART_BUILDERS: dict[str, Builder] = {SEA.name: _sea, BASIC.name: _basic}
assert set(PART_BUILDERS) == set(PARTS), "every part of core/config/methods.py has one builder"


def build_objective(method: MethodConfig, context: BuildContext, *, stage: str) -> Objective:
    """The objective of `method` in `stage`; `context` holds what parts need
    at build time (`vlm`; `sea`: label embeddings, grid, seed)."""
    if method.name not in METHOD_PARTS:
        raise ValueError(f"method.name: no objective for '{method.name}'; known: {', '.join(METHOD_PARTS)}")
    builders = [PART_BUILDERS[p] for p in METHOD_PARTS[method.name]]
    parts = [o for build in builders if (o := build(method, context, stage)) is not None]
    if not parts:
        return Objective()
    if len(parts) == 1:
        return parts[0]
    return CombinedObjective(parts)

"""GPU-hours of a whole search at its budget: every sample's stages, the rung stage cut by ASHA's rungs,
for `just plan` (grid.estimate's assumptions; evaluation steps are not counted)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from grid.estimate import estimate_stage


@dataclass(frozen=True)
class SearchBudget:
    """Of one cell's search: GPU-hours if every trial ran to its end, expected with ASHA, and wall hours."""

    full: float
    expected: float
    wall: float
    rungs: list[int]


def stage_hours(cfg: Any, stage: str) -> tuple[float, int] | None:
    """(GPU-hours, optimizer steps) of one stage of a trial, its max_steps and held-out share counted;
    None when the dataset's size is unknown."""
    from core.models.llm import get_llm_spec, resolve_gradient_checkpointing
    from core.models.vision import get_encoder_spec

    settings, data = getattr(cfg, stage), getattr(cfg.data, stage)
    samples = data.synthetic.num_samples if data.source == "synthetic" else data.expected_samples
    if samples is None:
        return None
    samples = int(samples * (1 - settings.heldout.fraction))
    seen = samples * settings.epochs
    steps = max(1, math.ceil(seen / settings.global_batch_size))
    if settings.max_steps is not None and settings.max_steps < steps:
        steps, seen = settings.max_steps, settings.max_steps * settings.global_batch_size
    llm = get_llm_spec(cfg.model.llm)
    checkpointing = resolve_gradient_checkpointing(settings.gradient_checkpointing, cfg.model.llm)
    hours = estimate_stage(
        stage,
        (llm.params_b or 0.0) * 1e9,
        seen,
        get_encoder_spec(cfg.model.encoder).num_patches,
        1.0,
        checkpointing=checkpointing,
    ).gpu_hours
    return hours, steps


def asha_fraction(steps: int, grace: int, max_t: int, factor: float) -> tuple[float, list[int]]:
    """The expected share of a stage's steps a trial runs under ASHA (1/factor of the trials pass each
    rung; those past the last rung finish), and the rungs."""
    rungs: list[int] = []
    r = grace
    while r < min(max_t, steps):
        rungs.append(int(r))
        r = math.ceil(r * factor)
    bounds = [0, *rungs, steps]
    run = sum((bounds[k + 1] - bounds[k]) / factor**k for k in range(len(bounds) - 1))
    return run / steps, rungs


def search_budget(search: Any, cfg: Any, trials: int) -> SearchBudget | None:
    """GPU-hours of `trials` trials of `cfg`'s search (None when a dataset's size is unknown)."""
    from grid.search_spec import metric_stage, rung_metric

    rung_stage = metric_stage(rung_metric(search)[0])
    full = expected = 0.0
    rungs: list[int] = []
    for stage in ("stage1", "stage2"):
        if not getattr(cfg, stage).enabled:
            continue
        est = stage_hours(cfg, stage)
        if est is None:
            return None
        hours, steps = est
        share = 1.0
        if search.scheduler.kind == "asha" and stage == rung_stage:
            s = search.scheduler
            share, rungs = asha_fraction(steps, s.grace_period, s.max_t, s.reduction_factor)
        full += hours * trials
        expected += hours * trials * share
    r = cfg.resources
    gpus = max(1.0, r.num_workers * r.gpus_per_worker) * (search.max_concurrent or 1)
    return SearchBudget(full, expected, expected / gpus, rungs)


def budget_line(search: Any, cells: list[Any], per_cell: int) -> str:
    """The plan's line: GPU-hours of the whole search (all cells)."""
    budgets = [search_budget(search, c.config, per_cell) for c in cells]
    known = [b for b in budgets if b is not None]
    if len(known) < len(budgets):
        return "GPU-hours: unknown (set data.<stage>.expected_samples)"
    full = sum(b.full for b in known)
    expected = sum(b.expected for b in known)
    wall = sum(b.wall for b in known)
    rungs = known[0].rungs if known else []
    concurrent = search.max_concurrent or 1
    asha = (
        f"; about {expected:.1f} with ASHA (rungs at steps {', '.join(map(str, rungs))}, "
        f"1/{search.scheduler.reduction_factor:g} of the trials pass each)"
        if rungs
        else ""
    )
    return (
        f"GPU-hours of the whole search: at most {full:.1f} (every trial to its end){asha}; about "
        f"{wall:.1f} h wall at {concurrent} trial(s) at once"
        + ("" if search.max_concurrent else " (max_concurrent: from the cluster)")
        + " (training only, grid.estimate's assumptions)"
    )

"""When a stage writes a checkpoint: every so many optimizer steps, or once enough time has passed."""

from __future__ import annotations


def checkpoint_due(
    step: int, total: int, *, every: int | None, minutes: float | None, elapsed_s: float
) -> bool:
    """Whether to checkpoint after optimizer step `step` of `total`.

    Due every `every` steps, or once `minutes` have passed since the last checkpoint (or the stage's
    start); never after the last step, where the stage saves its outputs instead. A checkpoint is a
    collective (every rank writes its shards, Ray's report is a barrier), so every rank must reach the same
    answer: pass an `elapsed_s` the ranks agree on, e.g. their mean through core.train.reduce, which the
    loop already runs at each optimizer step.
    """
    if step >= total:
        return False
    by_steps = every is not None and every != 0 and step % every == 0
    by_time = minutes is not None and elapsed_s >= 60 * minutes
    return by_steps or by_time

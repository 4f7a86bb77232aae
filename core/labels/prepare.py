"""Materialise a SEA trial's label steps in this process (the `seagrid labels` command, library use)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from core.config import TrialConfig
from core.pipeline import label_steps
from core.steps import TrialRuntime
from core.steps.runner import run_steps


def prepare_labels(
    cfg: TrialConfig,
    root: Path | None = None,
    *,
    progress: bool = False,
    parallel: int | str | None = None,
) -> Path:
    """Materialise a SEA trial's label steps here (in this process) under `root` (default: the cache's
    `steps/`); the directory of the store stage 1 reads. `parallel` is `extract_store`'s: None extracts
    in this process, K in K Ray tasks, "auto" by cluster and dataset size."""
    from core.paths import cache_dir

    root = Path(root) if root is not None else cache_dir() / "steps"
    steps = label_steps(cfg)
    if not steps:
        raise ValueError(f"method '{cfg.method.name}' has no SEA labels (or stage 1 is off)")
    last = steps[-1]
    if parallel != steps[0].config.parallel:  # not identity: the graph's hashes stay
        labels = replace(steps[0], config=steps[0].config.model_copy(update={"parallel": parallel}))
        last = labels if len(steps) == 1 else replace(steps[-1], deps=(labels,))
    runtime = TrialRuntime(trial=cfg, cache_dir=str(cache_dir()), progress=progress)
    for _ in run_steps([last], root, runtime, local=True):
        pass
    return last.path(root)

"""The extra loss terms of a method, as one module the training loop adds to L_lm."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from core.config.methods import BASE_METRICS

if TYPE_CHECKING:
    from core.models.vlm import VLM

_, LM = BASE_METRICS


class Objective(nn.Module):
    """The baseline (LLaVA): no extra terms. Methods override `extra_loss` (and `forward_context`).

    The training loop calls, per micro-batch::

        with objective.forward_context(vlm):
            out = model(batch)  # vlm, or vlm wrapped by DDP / DeepSpeed
        loss, terms = objective.total(batch, out)
    """

    needs_labels = False

    def forward_context(self, vlm: VLM) -> contextlib.AbstractContextManager[Any]:
        """Entered around the VLM forward of each micro-batch; methods that watch the forward override it."""
        return contextlib.nullcontext()

    def extra_loss(self, batch: dict[str, Any], out: Any) -> tuple[Tensor | None, dict[str, float]]:
        """(weighted sum of the extra terms or None, metrics to log under the stage's prefix)."""
        return None, {}

    def total(self, batch: dict[str, Any], out: Any) -> tuple[Tensor, dict[str, float]]:
        """L = L_lm + extra terms, with every term as a metric."""
        extra, metrics = self.extra_loss(batch, out)
        loss = out.loss if extra is None else out.loss + extra
        metrics = {LM: float(out.loss.detach()), **metrics}
        return loss, metrics


class CombinedObjective(Objective):
    """Several methods at once (e.g. `sea+basic`): their extra terms summed, metrics and forward contexts merged.

    Parameters are the parts' own (an nn.ModuleList); a part's `generator` (SEA's pair sampler) is
    exposed as `.generator` so the training loop checkpoints it.
    """

    def __init__(self, parts: Sequence[Objective]) -> None:
        super().__init__()
        if not parts:
            raise ValueError("CombinedObjective needs at least one part")
        self.parts = nn.ModuleList(parts)  # registers the parts' parameters and buffers
        # The same parts, typed: iterating the ModuleList yields plain nn.Modules. A tuple is not adopted
        # by nn.Module, so nothing is registered twice.
        self._objectives: tuple[Objective, ...] = tuple(parts)
        self.needs_labels = any(p.needs_labels for p in parts)
        generators = [p.generator for p in parts if hasattr(p, "generator")]
        if len(generators) > 1:
            raise ValueError(
                f"CombinedObjective: {len(generators)} parts have a random generator; the training loop "
                "checkpoints only one (objective.generator)"
            )
        if generators:
            self.generator = generators[0]

    @contextlib.contextmanager
    def forward_context(self, vlm: VLM) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for part in self._objectives:
                stack.enter_context(part.forward_context(vlm))
            yield

    def extra_loss(self, batch: dict[str, Any], out: Any) -> tuple[Tensor | None, dict[str, float]]:
        total: Tensor | None = None
        metrics: dict[str, float] = {}
        for part in self._objectives:
            extra, part_metrics = part.extra_loss(batch, out)
            clash = set(metrics) & set(part_metrics)
            if clash:
                raise ValueError(f"CombinedObjective: parts report the same metrics {sorted(clash)}")
            metrics.update(part_metrics)
            if extra is not None:
                total = extra if total is None else total + extra
        return total, metrics

"""The extra loss terms of a method, as one module the training loop adds to L_lm."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn


class Objective(nn.Module):
    """The baseline (LLaVA): no extra terms. Methods override `extra_loss`."""

    needs_labels = False

    def extra_loss(self, batch: dict[str, Any], out: Any) -> tuple[Tensor | None, dict[str, float]]:
        """(weighted sum of the extra terms or None, metrics to log under the stage's prefix)."""
        return None, {}

    def total(self, batch: dict[str, Any], out: Any) -> tuple[Tensor, dict[str, float]]:
        """L = L_lm + extra terms, with every term as a metric."""
        extra, metrics = self.extra_loss(batch, out)
        loss = out.loss if extra is None else out.loss + extra
        metrics = {"loss/lm": float(out.loss.detach()), **metrics}
        return loss, metrics


def build_objective(method: Any, context: dict[str, Any]) -> Objective:
    """The objective of `method` (a grid.spec.MethodConfig); `context` holds what methods need at build time."""
    if method.name == "llava":
        return Objective()
    if method.name == "sea":
        from core.methods.sea_objective import SeaObjective

        return SeaObjective(method.sea, **context["sea"])
    raise ValueError(f"method.name: no objective for '{method.name}'")

"""Adapters (projectors) from vision features to the LLM's input embedding space."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def mlp2x_gelu(d_vision: int, d_llm: int) -> nn.Module:
    """LLaVA-1.5's projector; a Sequential so its keys ("0.weight", "2.weight") match LLaVA's."""
    from torch import nn

    return nn.Sequential(nn.Linear(d_vision, d_llm), nn.GELU(), nn.Linear(d_llm, d_llm))


def linear(d_vision: int, d_llm: int) -> nn.Module:
    """The original LLaVA projector: one linear map."""
    from torch import nn

    return nn.Linear(d_vision, d_llm)


ADAPTERS: dict[str, Callable[[int, int], nn.Module]] = {
    "mlp2x_gelu": mlp2x_gelu,
    "linear": linear,
}


def build_adapter(name: str, d_vision: int, d_llm: int) -> nn.Module:
    """A freshly initialised adapter `name` mapping `d_vision` features to `d_llm` embeddings."""
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; allowed values: {sorted(ADAPTERS)}")
    for arg, value in (("d_vision", d_vision), ("d_llm", d_llm)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    return ADAPTERS[name](d_vision, d_llm)

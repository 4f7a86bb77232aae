"""The objectives' build context: what `core.methods.build.build_objective` hands each method's builder."""

from __future__ import annotations

from typing import TYPE_CHECKING, NotRequired, TypedDict

if TYPE_CHECKING:
    from torch import Tensor

    from core.models.vlm import VLM
    from core.sea import LabelRows


class SeaContext(TypedDict):
    """SEA's build-time inputs (`SeaObjective`'s keyword arguments): the label embeddings of the words the
    label store uses, the encoder's patch grid, and the seed of the pair sampler."""

    word_embeddings: Tensor | LabelRows
    grid: tuple[int, int]
    seed: int


class BuildContext(TypedDict):
    """Everything a method part may need at build time; `sea` is there when the stage's data carries
    SEA labels (core.train.setup_data builds it with the labelled dataset)."""

    vlm: VLM
    sea: NotRequired[SeaContext]

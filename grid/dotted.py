"""Walk a pydantic model class by a dotted path (`stage1.lr`): the one walker specs, grids and searches use."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel


class DottedPathError(LookupError):
    """`parts[len(walked)]` is not reachable: `below_value` when `walked` ends at a plain value, else the
    section reached (`model`) has no such field."""

    def __init__(self, walked: list[str], part: str, model: type[BaseModel] | None) -> None:
        super().__init__(".".join([*walked, part]))
        self.walked, self.part, self.model = walked, part, model

    @property
    def below_value(self) -> bool:
        return self.model is None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def annotation_at(root: type[BaseModel], parts: Sequence[Any]) -> Any:
    """The annotation of the field `parts` names below `root` (`root` itself for no parts)."""
    current: Any = root
    walked: list[str] = []
    for part in parts:
        if not _is_model(current):
            raise DottedPathError(walked, str(part), None)
        field = current.model_fields.get(str(part))
        if field is None:
            raise DottedPathError(walked, str(part), current)
        current = field.annotation
        walked.append(str(part))
    return current


def model_at(root: type[BaseModel], parts: Sequence[Any]) -> type[BaseModel] | None:
    """The section class `parts` leads to from `root`, or None when it leaves the models."""
    try:
        current = annotation_at(root, parts)
    except DottedPathError:
        return None
    return current if _is_model(current) else None

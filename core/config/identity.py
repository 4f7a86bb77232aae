"""What defines a result: the identity part of a config, its canonical JSON and its hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from core.config.base import IDENTITY_IF_SET, NOT_IDENTITY


def identity_dict(model: BaseModel, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The model as JSON-able data without the fields marked NOT_IDENTITY (paths, logging, resources),
    nor the dotted paths a model names in its own `identity_exclude()` (settings of a method or a stage
    that is not in use)."""
    own = model.identity_exclude() if hasattr(model, "identity_exclude") else set()
    exclude = frozenset(exclude) | frozenset(own)
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        if field.json_schema_extra == NOT_IDENTITY or name in exclude:
            continue
        value = getattr(model, name)
        if field.json_schema_extra == IDENTITY_IF_SET and value == field.get_default(
            call_default_factory=True
        ):
            continue
        if isinstance(value, BaseModel):
            below = frozenset(p.split(".", 1)[1] for p in exclude if p.startswith(name + "."))
            out[name] = identity_dict(value, below)
        else:
            out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return identity_dict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace: the same data gives the same bytes everywhere."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def content_hash(data: Any, length: int = 10) -> str:
    """A short sha256 of the canonical JSON of `data`."""
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()[:length]


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out

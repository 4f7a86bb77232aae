"""A spec's mistakes as one line each: the error type, pydantic errors as YAML paths, near-miss hints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from core.config import TrialConfig, did_you_mean
from grid.dotted import DottedPathError, annotation_at, model_at
from grid.yaml_strict import yaml_hint

__all__ = ["SpecError", "check_path", "describe_errors", "did_you_mean"]


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file, the YAML path and a fix."""


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def describe_errors(err: ValidationError, root: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per Pydantic error: the YAML path, the offending value and what is allowed."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _loc_to_path(loc)
        if prefix:
            path = f"{prefix}.{path}" if path != "(top level)" else prefix
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = model_at(root, loc[:-1])
            allowed = sorted(parent.model_fields) if parent else []
            msg = f"unknown key '{loc[-1]}'"
            if allowed:
                msg += f"; allowed here: {', '.join(allowed)}{did_you_mean(str(loc[-1]), allowed)}"
        elif e["type"] != "value_error" and "input" in e and not isinstance(e["input"], dict | list):
            msg += f" (got {e['input']!r})"
        lines.append(f"{path}: {msg}")
    return lines


def check_path(path: str, where: str) -> None:
    """Fail unless `path` names a field of TrialConfig, e.g. 'model.llm' or 'stage1.lr'."""
    try:
        annotation_at(TrialConfig, path.split("."))
    except DottedPathError as err:
        prefix = ".".join(err.walked)
        if err.model is None:
            raise SpecError(
                f"{where}: '{path}' goes below '{prefix}', which is a value, not a section"
            ) from None
        fields = sorted(err.model.model_fields)
        here = f"at '{prefix}'" if prefix else "at the top of a trial config"
        full = [f"{prefix}.{f}" if prefix else f for f in fields]
        guess = did_you_mean(path, full) or did_you_mean(err.part, fields)
        raise SpecError(
            f"{where}: unknown config path '{path}'; allowed {here}: {', '.join(fields)}{guess}"
        ) from None


def with_yaml_hints(lines: list[str], err: ValidationError) -> list[str]:
    """Each error line, plus the YAML rule when the refused value is a YAML 1.1 boolean word (`off`)."""
    return [line + yaml_hint(e.get("input")) for line, e in zip(lines, err.errors(), strict=True)]

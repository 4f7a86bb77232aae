"""Specs' YAML read strictly: YAML 1.2 core scalars (no YAML 1.1 `off`/`yes` booleans, `1e-3` is a number)
and duplicate keys refused, naming both lines."""

from __future__ import annotations

import re
from typing import Any

import yaml

# The YAML 1.2 core schema's scalars. PyYAML implements YAML 1.1, where `off`/`on`/`yes`/`no` are booleans
# (`deepspeed: {zero: off}` became False, accepted as ZeRO stage 0) and `1e-3` (no dot) is a *string*.
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
# Words YAML 1.1 reads as booleans; here they stay strings, and an error about one says why.
YAML11_BOOLEANS = frozenset(
    w for base in ("yes", "no", "on", "off", "y", "n") for w in (base, base.capitalize(), base.upper())
)
YAML_RULE = (
    "seagrid reads specs as YAML 1.2, where unquoted yes/no/on/off are strings, not booleans: write "
    "true or false for a switch"
)


class StrictYAMLError(ValueError):
    """A spec whose YAML cannot be read as written; the message names the line(s)."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars and duplicate keys refused."""

    yaml_implicit_resolvers: dict[str, list[tuple[str, re.Pattern[str]]]] = {}


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:bool", _BOOL, "tTfF"),
    ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
    ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789."),
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), "<"),
):
    StrictLoader.add_implicit_resolver(_tag, _pattern, list(_first))


def _int(loader: StrictLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    # 0o / 0x prefixes; a plain 010 is ten, as in YAML 1.2 (YAML 1.1 read it as octal eight)
    return int(text, 0) if text.startswith(("0o", "0x")) else int(text)


def _float(loader: StrictLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    return float(text.replace(".inf", "inf").replace(".nan", "nan"))


def _mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` keys may be overridden on purpose
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if isinstance(key, list | dict):
            raise StrictYAMLError(f"line {line}: a key must be a plain value, got {key!r}")
        if key in seen:
            raise StrictYAMLError(
                f"key {key!r} is given twice, on line {seen[key]} and line {line}; YAML would silently keep "
                "the last one: keep one (merge the two if both hold values you want)"
            )
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


StrictLoader.add_constructor("tag:yaml.org,2002:int", _int)
StrictLoader.add_constructor("tag:yaml.org,2002:float", _float)
StrictLoader.construct_mapping = _mapping


def load_strict(text: str) -> Any:
    """The data of a YAML document, read with StrictLoader (data only: no tags that build objects)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506  (a SafeLoader subclass)


def yaml_hint(value: Any) -> str:
    """Why a refused value may not be what the user wrote: a YAML 1.1 boolean word read as a string."""
    if isinstance(value, str) and value in YAML11_BOOLEANS:
        return f" ({YAML_RULE})"
    return ""

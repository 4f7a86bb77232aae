"""The base of every config section: strict pydantic, the identity marker, registry checks."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict
from pydantic.config import JsonDict

# Fields that say where or how a trial runs but not what its result is carry this marker: they are
# left out of trial ids and step hashes (core.config.identity) and recorded as tags/params only.
NOT_IDENTITY: JsonDict = {"identity": False}
# A setting added after trials were run: part of the identity only when it differs from its default, so
# adding it renames no existing trial or step.
IDENTITY_IF_SET: JsonDict = {"identity": "if_set"}


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """A ' did you mean ...?' suffix for a near-miss, or ''."""
    close = difflib.get_close_matches(str(value), list(allowed), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def check_registry(kind: str, value: str, known: Iterable[str]) -> str:
    """`value` if it is a known id, else a ValueError listing the ids (with a "did you mean")."""
    allowed = sorted(known)
    if value not in allowed:
        raise ValueError(
            f"unknown {kind} '{value}'; allowed: {', '.join(allowed)}{did_you_mean(value, allowed)}"
        )
    return value

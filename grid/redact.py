"""Keeps secrets (tokens, keys, passwords) out of everything seagrid writes: MLflow, config.yaml, logs."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
# A setting or variable is secret by its name: HF_TOKEN, WANDB_API_KEY, aws_secret, db.password, ...
SECRET_NAME = re.compile(r"(^|[._-])(token|key|secret|password|passwd|credentials?)$", re.IGNORECASE)
# Shorter values are too likely to occur by chance in a path or a number to be scrubbed from text.
MIN_SCRUBBED_LENGTH = 6


def is_secret_name(name: str) -> bool:
    """True for names ending in TOKEN / KEY / SECRET / PASSWORD (any case, after '_', '.', '-' or alone)."""
    return bool(SECRET_NAME.search(name.rsplit(".", 1)[-1]))


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of secret-named environment variables, longest first (so a prefix never wins)."""
    env = os.environ if environ is None else environ
    found = {v for k, v in env.items() if is_secret_name(k) and len(v) >= MIN_SCRUBBED_LENGTH}
    return sorted(found, key=len, reverse=True)


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """`text` with every secret environment value replaced by the mask."""
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, MASK)
    return text


def redact(data: Any, secrets: list[str] | None = None) -> Any:
    """A copy of nested dicts / lists with secret-named keys masked and secret values scrubbed from text."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(data, Mapping):
        return {
            k: MASK if is_secret_name(str(k)) and data[k] not in (None, "") else redact(data[k], secrets)
            for k in data
        }
    if isinstance(data, list | tuple):
        return type(data)(redact(v, secrets) for v in data)
    if isinstance(data, str):
        return scrub(data, secrets)
    return data


def redact_flat(values: Mapping[str, Any], secrets: list[str] | None = None) -> dict[str, str]:
    """Flat {dotted.name: value} (params, tags) as text, secret names masked, secret values scrubbed."""
    secrets = secret_values() if secrets is None else secrets
    return {
        k: MASK if is_secret_name(k) and v not in (None, "") else scrub(str(v), secrets)
        for k, v in values.items()
    }

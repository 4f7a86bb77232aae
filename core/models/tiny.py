"""Build tiny checkpoints once, deterministically, into the on-disk cache, keyed by their config hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.cache import build_once
from core.paths import cache_dir


def config_hash(config: Mapping[str, Any], length: int = 10) -> str:
    """Short sha256 of the canonical JSON of `config` (sorted keys, no whitespace)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


@dataclass(frozen=True, eq=False)
class TinyBuilder:
    """Writes a tiny checkpoint directory from a JSON-able config under a fixed seed.

    The build function's code is not hashed, only `config` and `seed`: give the config a
    `version` entry and bump it whenever the build code changes what it writes.
    """

    build: Callable[[Path, dict[str, Any]], None]
    config: Mapping[str, Any]
    seed: int = 0

    @property
    def fingerprint(self) -> str:
        return config_hash({"config": dict(self.config), "seed": self.seed})

    def __call__(self, out_dir: Path) -> None:
        import torch

        # fork_rng keeps the caller's global RNG stream untouched by the build.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.build(Path(out_dir), json.loads(json.dumps(dict(self.config))))


def tiny_checkpoint_dir(model_id: str, builder: TinyBuilder) -> Path:
    """The cache directory holding `model_id`'s tiny checkpoint, built on first use."""
    target = cache_dir() / "models" / f"{model_id}-{builder.fingerprint}"
    return build_once(target, builder)


class HasSource(Protocol):
    """What a registry entry needs for `checkpoint_source`: an id, a hub id and maybe a tiny builder."""

    id: str
    hub_id: str | None
    builder: TinyBuilder | None


def checkpoint_source(spec: HasSource, path: str | Path | None, kind: str) -> str:
    """Where a checkpoint is read from: `path`, else the hub id, else the tiny build in the cache."""
    if path is not None:
        return str(path)
    if spec.hub_id is not None:
        return spec.hub_id
    if spec.builder is not None:
        return str(tiny_checkpoint_dir(spec.id, spec.builder))
    raise ValueError(
        f"{kind} {spec.id!r} has neither a hub_id nor a builder; pass path= to a local checkpoint"
    )

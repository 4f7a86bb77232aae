"""Build tiny checkpoints once, deterministically, into the on-disk cache, keyed by their config hash."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.cache import build_once, is_built
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


def tiny_checkpoint_dir(model_id: str, builder: TinyBuilder, *, wait_s: float = 900) -> Path:
    """The cache directory holding `model_id`'s tiny checkpoint, built on first use.

    Inside a process group only rank 0 builds: transformers' `save_pretrained` silently writes nothing on
    any other rank, which would leave a checkpoint with a tokenizer and no model.
    """
    target = cache_dir() / "models" / f"{model_id}-{builder.fingerprint}"
    if is_built(target):
        return target
    if _distributed_rank() > 0:
        deadline = time.monotonic() + wait_s
        while not is_built(target):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{target}: rank 0 did not build the tiny checkpoint within {wait_s:.0f} s"
                )
            time.sleep(0.2)
        return target
    return build_once(target, builder)


def _distributed_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class HasSource(Protocol):
    """What a registry entry needs for `checkpoint_source`: an id, a hub id and maybe a tiny builder."""

    # Read-only (properties), so that frozen dataclasses (LLMSpec, EncoderSpec) match.
    @property
    def id(self) -> str: ...
    @property
    def hub_id(self) -> str | None: ...
    @property
    def builder(self) -> TinyBuilder | None: ...


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

"""Sharded evaluation: which batches a shard runs, and the shards' recorded model outputs gathered."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUTPUTS_DIR = "outputs"


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: it runs batch b of every model call when b mod count == index."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} outside 0..{self.count - 1}")

    def owns(self, batch: int) -> bool:
        return batch % self.count == self.index

    def dirname(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def replayed(replay: dict[str, list[Any]], key: str, n: int) -> list[Any]:
    """The gathered outputs of model call `key` (n rows); every row must have been computed."""
    outputs = replay.get(key)
    if outputs is None or len(outputs) != n:
        got = "none" if outputs is None else f"{len(outputs)} rows"
        raise ValueError(f"gathered outputs of model call {key}: expected {n} rows, got {got}")
    missing = [i for i, o in enumerate(outputs) if o is None]
    if missing:
        raise ValueError(f"gathered outputs of model call {key}: rows {missing[:5]} computed by no shard")
    return outputs


def write_outputs(path: Path, recorded: dict[str, list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded))


def gather_outputs(paths: list[Path]) -> dict[str, list[Any]]:
    """One benchmark's outputs from every shard's file, row by row (each row from the one shard that ran it).

    JSON keeps floats exactly (repr round-trips), so the scores are those the shards computed."""
    merged: dict[str, list[Any]] = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: a shard's benchmark outputs are missing; rerun the evaluation")
        for key, rows in json.loads(path.read_text()).items():
            into = merged.setdefault(key, [None] * len(rows))
            if len(into) != len(rows):
                raise ValueError(f"{path}: model call {key} has {len(rows)} rows, other shards {len(into)}")
            for i, row in enumerate(rows):
                if row is not None:
                    if into[i] is not None:
                        raise ValueError(f"{path}: row {i} of model call {key} computed by two shards")
                    into[i] = row
    return merged

"""A seeded subset of a LLaVA-format dataset (`fraction`): the same samples for every trial of the dataset."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from core.cache import build_once

SUBSET_FILE = "subset.json"


def subset_indices(count: int, fraction: float, seed: int) -> list[int]:
    """round(count * fraction) record positions (at least 1), drawn with `seed`, in the file's order.

    The draw depends only on (count, fraction, seed): every trial, stage and label step that reads the
    dataset with these settings trains on the same samples (BASIC's ablations: 10% of the 665K mix)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r}: must be in (0, 1]")
    keep = max(1, round(count * fraction))
    return sorted(random.Random(seed).sample(range(count), keep))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def subset_json(json_path: Path, fraction: float, seed: int, cache: Path) -> Path:
    """The JSON list of `json_path` cut to its seeded `fraction`, written once under `cache/subsets/`
    (keyed by the file's content, the fraction and the seed); `json_path` itself when fraction is 1."""
    if fraction == 1:
        return json_path
    key = f"{_file_digest(json_path)}-{fraction!r}-{seed}"

    def build(out: Path) -> None:
        records = json.loads(json_path.read_text())
        if not isinstance(records, list):
            raise ValueError(f"json_path={json_path}: expected a JSON list, got {type(records).__name__}")
        kept = [records[i] for i in subset_indices(len(records), fraction, seed)]
        (out / SUBSET_FILE).write_text(json.dumps(kept))

    return build_once(cache / "subsets" / key, build) / SUBSET_FILE

"""Where a label store lives and what names it: the labelling encoder, the dataset's and the store's identity."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.config.identity import content_hash
from core.labels.words import word_list_hash
from core.models.vision import ENCODERS, get_encoder_spec
from core.paths import cache_dir


def _text_encoders() -> list[str]:
    return sorted(k for k, v in ENCODERS.items() if v.has_text_tower)


def resolve_label_encoder(encoder_id: str, labels_from: str | None = None) -> str:
    """The encoder whose text tower labels ``encoder_id``'s patches (``sea.labels_from``, REFERENCE 2.2).

    ``labels_from=None`` means the encoder labels itself, which needs a text tower; an encoder without
    one (DINOv2) must name a CLIP-like ``labels_from``, whose labels are then moved to its grid.
    """
    spec = get_encoder_spec(encoder_id)
    if labels_from is None:
        if not spec.has_text_tower:
            raise ValueError(
                f"encoder {encoder_id!r} has no text tower, so it cannot label its own patches; set "
                f"sea.labels_from to an encoder with one ({', '.join(_text_encoders())}) and its labels "
                "are transferred onto this encoder's grid"
            )
        return encoder_id
    if not get_encoder_spec(labels_from).has_text_tower:
        raise ValueError(
            f"sea.labels_from={labels_from!r} has no text tower; choose one of {', '.join(_text_encoders())}"
        )
    return labels_from


def image_records(json_path: str | Path) -> tuple[list[str], list[str]]:
    """(sample ids, relative image paths) of the records of a LLaVA JSON that have an image, in order."""
    from core.data.llava_json import load_llava_records  # the one reader and check (core.data)

    ids, images = [], []
    for record in load_llava_records(json_path, "json_path"):
        image = record.get("image")
        if image is None:
            continue
        ids.append(str(record["id"]))
        images.append(image)
    return ids, images


def dataset_identity(json_path: str | Path) -> dict[str, Any]:
    """Default dataset identity: the sha256 of the JSON file, so a changed file gets a new store.

    Image files are not hashed (too slow for 558K images); they are taken to be immutable per path.
    """
    digest = hashlib.sha256()
    with open(json_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"json_sha256": digest.hexdigest()}


def store_identity(
    encoder_id: str,
    words: Sequence[str],
    dataset: Mapping[str, Any],
    *,
    top_n: int = 10,
    negate: bool = True,
    score_dtype: str = "float32",
) -> dict[str, Any]:
    """What defines a label store's content (paths, devices and batch sizes do not)."""
    return {
        "step": "labels",
        "encoder": encoder_id,
        "word_list_hash": word_list_hash(words),
        "dataset": dict(dataset),
        "top_n": int(top_n),
        "sign": "negated" if negate else "plain",
        "score_dtype": score_dtype,
    }


def store_dir(root: str | Path | None, identity: Mapping[str, Any]) -> Path:
    """``root/labels-<encoder>-<hash of identity>``; root defaults to ``cache_dir()/"labels"``."""
    base = Path(root) if root is not None else cache_dir() / "labels"
    return base / f"labels-{identity['encoder']}-{content_hash(dict(identity))}"

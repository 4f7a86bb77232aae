"""Captioned image sets for the alignment diagnostics, read from a file in one of three layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# (sample id, image path relative to the image root, caption)
CaptionRecord = tuple[str, str, str]


def _llava(records: list[Any], path: Path) -> list[CaptionRecord]:
    """LLaVA-format records (caption = first gpt turn) or plain {"image", "caption"} objects (id optional)."""
    out = []
    for k, record in enumerate(records):
        if not isinstance(record, dict) or not record.get("image"):
            continue
        caption = record.get("caption")
        if caption is None:
            turns = record.get("conversations") or []
            caption = next(
                (t.get("value") for t in turns if isinstance(t, dict) and t.get("from") == "gpt"), None
            )
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(
                f"{path} record #{k} (id {record.get('id')!r}): no caption (a 'caption' field or a gpt turn)"
            )
        out.append((str(record.get("id", k)), str(record["image"]), caption.replace("<image>", "").strip()))
    return out


def _coco(data: dict[str, Any], path: Path) -> list[CaptionRecord]:
    """COCO captions (captions_val2014.json): each image with its first caption in the file's order."""
    try:
        files = {img["id"]: img["file_name"] for img in data["images"]}
        first: dict[Any, str] = {}
        for ann in data["annotations"]:
            first.setdefault(ann["image_id"], ann["caption"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: a COCO captions file needs images[id, file_name] and annotations"
                         f"[image_id, caption] ({err!r} missing)") from None  # fmt: skip
    return [(str(i), files[i], first[i].strip()) for i in files if i in first]


def read_caption_set(path: str | Path, samples: int) -> list[CaptionRecord]:
    """The first `samples` captioned images of `path`: a LLaVA-format JSON list, a JSON list or JSON Lines
    of {"image", "caption"} objects, or a COCO captions file (images + annotations)."""
    path = Path(path)
    try:
        text = path.read_text()
        data: Any = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if path.suffix == ".jsonl"
            else json.loads(text)
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"diagnostics.json_path={path}: cannot read it ({err})") from err
    if isinstance(data, dict) and "annotations" in data:
        records = _coco(data, path)
    elif isinstance(data, list):
        records = _llava(data, path)
    else:
        raise ValueError(
            f"diagnostics.json_path={path}: expected a JSON list (LLaVA records or image/caption objects) "
            f"or a COCO captions file, got {type(data).__name__}"
        )
    if not records:
        raise ValueError(f"diagnostics.json_path={path}: no record with an image")
    return records[:samples]

"""LLaVA-format JSON read and checked in one place: the training loader, the label and word builders, the
diagnostics and `seagrid data` all call it, so they accept and refuse the same files with the same words."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

from core.data.llava_cache import is_validated, mark_validated, parse_json_list
from core.data.templates import DEFAULT_IMAGE_TOKEN

ROLES = ("human", "gpt")


def read_llava_json(path: str | Path, field: str = "json_path") -> list[Any]:
    """The JSON list of a LLaVA-format file (parsed once per process; never mutate it). Errors name the
    spec field and the file: a missing file or a directory, JSON Lines, invalid JSON, not a list."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{field}={path}: is a directory; point {field} at the LLaVA-format JSON file")
    if not path.is_file():
        raise ValueError(f"{field}={path}: no such file; point {field} at a LLaVA-format JSON list")
    try:
        raw = parse_json_list(path)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and (path.suffix == ".jsonl" or _is_json_lines(path)):
            raise ValueError(
                f"{field}={path}: JSON Lines (one object per line), but a LLaVA dataset is one JSON list; "
                'convert it (e.g. python -c "import json,sys; print(json.dumps([json.loads(l) for l in '
                'open(sys.argv[1]) if l.strip()]))" FILE > FILE.json)'
            ) from None
        raise ValueError(
            f"{field}={path}: not valid JSON at line {err.lineno} column {err.colno} ({err.msg}); fix the "
            "file or regenerate it"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{field}={path}: cannot read a JSON list ({err})") from None
    if not isinstance(raw, list):
        raise ValueError(f"{field}={path}: expected a JSON list, got {type(raw).__name__}")
    return raw


def _is_json_lines(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as f:
            first = f.readline()
        return isinstance(json.loads(first), dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def record_where(record: Any, index: int, json_path: Path) -> str:
    """How an error names a record: the file, its index and its id when it has one."""
    if isinstance(record, dict) and "id" in record:
        return f"{json_path} record #{index} (id {str(record['id'])!r})"
    return f"{json_path} record #{index}"


def check_image_ref(record: dict[str, Any], where: str) -> str | None:
    """A record's image: None, or a non-empty relative path that stays inside image_root."""
    image = record.get("image")
    if image is None:
        return None
    if isinstance(image, list):
        raise ValueError(
            f"{where}: 'image' is a list ({len(image)} entries); a LLaVA-1.5 sample has one image: split "
            "the record into one record per image"
        )
    if not (isinstance(image, str) and image):
        raise ValueError(f"{where}: 'image' must be a non-empty relative path, got {image!r}")
    normal = posixpath.normpath(image.replace("\\", "/"))
    if (
        image.startswith(("/", "~"))
        or normal == ".."
        or normal.startswith("../")
        or Path(image).is_absolute()
    ):
        raise ValueError(
            f"{where}: image {image!r} is not inside image_root; write it relative to image_root (without "
            "'..'), or move the image under image_root"
        )
    return image


def check_record(record: Any, index: int, json_path: Path) -> dict[str, Any]:
    """Check one record's structure as training needs it; errors name the record's index, its id and the
    file."""
    where = f"{json_path} record #{index}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    if "id" not in record:
        raise ValueError(f"{where}: missing 'id'")
    where = record_where(record, index, json_path)
    image = check_image_ref(record, where)
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: 'conversations' must be a non-empty list, got {turns!r}")
    image_tokens = 0
    for turn_index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: turn {turn_index} must be an object with a string 'value'")
        expected = ROLES[turn_index % 2]
        if turn.get("from") != expected:
            raise ValueError(
                f"{where}: turn {turn_index} has from={turn.get('from')!r}; expected {expected!r} "
                f"(turns alternate {' / '.join(ROLES)}, starting with {ROLES[0]!r})"
            )
        count = turn["value"].count(DEFAULT_IMAGE_TOKEN)
        if count and turn_index != 0:
            raise ValueError(f"{where}: {DEFAULT_IMAGE_TOKEN!r} may appear only in the first human turn")
        image_tokens += count
    if len(turns) < 2:
        raise ValueError(f"{where}: has no {ROLES[1]!r} turn to supervise")
    if image is not None and image_tokens != 1:
        raise ValueError(
            f"{where}: has an image, so the first human turn needs exactly one {DEFAULT_IMAGE_TOKEN!r}; "
            f"found {image_tokens}"
        )
    if image is None and image_tokens:
        raise ValueError(f"{where}: text-only sample (no 'image') contains {DEFAULT_IMAGE_TOKEN!r}")
    return record


def load_llava_records(path: str | Path, field: str = "json_path") -> list[dict[str, Any]]:
    """The records of a LLaVA-format JSON, every one checked (once per process while the file is
    unchanged): what training, labelling, diagnostics and `seagrid data` all accept."""
    path = Path(path).expanduser()
    raw = read_llava_json(path, field)
    if not is_validated(raw):
        for index, item in enumerate(raw):
            check_record(item, index, path)
        mark_validated(raw)
    return raw


def first_answer(record: dict[str, Any]) -> str:
    """The first gpt turn without the image token: an image's caption (labels, diagnostics)."""
    turn = next(t for t in record["conversations"] if t.get("from") == ROLES[1])
    return turn["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()

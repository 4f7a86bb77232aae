"""What every benchmark reader shares: the error type, image references, JSON lines, checked fields."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from core.data.text_files import open_text_file


class BenchmarkFileError(ValueError):
    """A benchmark file that cannot be read; the message names the file, the line and the field."""


def at(path: Path, line: int | None) -> str:
    """`file:line` (or the file) for a message."""
    return f"{path}:{line}" if line is not None else str(path)


@dataclass(frozen=True)
class ImageRef:
    """An image: a path relative to an image root, or the encoded bytes (MMBench's base64 column)."""

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def open(self, image_root: Path | None, where: str) -> Image.Image:
        try:
            if self.data is not None:
                image = Image.open(io.BytesIO(self.data))
            else:
                # An absolute path (the official readers resolve their images) needs no root.
                if image_root is None and not Path(str(self.path)).is_absolute():
                    raise BenchmarkFileError(
                        f"{where}: item names image {self.path!r} but no image_root is set"
                    )
                image = Image.open(
                    Path(str(self.path)) if image_root is None else image_root / str(self.path)
                )
            image.load()
            return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            shown = (
                f"{image_root / str(self.path)}" if self.path is not None and image_root else "embedded image"
            )
            raise BenchmarkFileError(f"{where}: cannot read {shown} ({err})") from err


@dataclass(frozen=True)
class BenchFiles:
    """The files a benchmark reads (which ones depends on its kind)."""

    question_file: Path | None = None
    annotation_file: Path | None = None
    annotation_dir: Path | None = None
    image_root: Path | None = None
    context_file: Path | None = None  # LLaVA-Bench-in-the-Wild's context.jsonl


def require(path: Path, what: str) -> Path:
    """`path`, or a BenchmarkFileError saying which file is missing."""
    if not path.exists():
        raise BenchmarkFileError(f"{path}: {what} not found")
    return path


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; a line that is not a JSON object names file:line."""
    path = require(Path(path), "jsonl file")
    rows: list[tuple[int, dict[str, Any]]] = []
    with open_text_file(path, "jsonl file") as f:  # a directory or non-UTF-8 file: one sentence
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkFileError(f"{path}:{number}: not valid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise BenchmarkFileError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
            rows.append((number, obj))
    return rows


def field_of(obj: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """`obj[key]`, checked to be of `kind`; the message names `where`, the field and what was found."""
    if key not in obj:
        raise BenchmarkFileError(f"{where}: missing field {key!r} (fields present: {', '.join(sorted(obj))})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchmarkFileError(f"{where}: field {key!r} must be {names}, got {value!r}")
    return value


def question_id_of(obj: dict[str, Any], where: str) -> str:
    """The record's `question_id` (int or string) as a string."""
    return str(field_of(obj, "question_id", where, (int, str)))

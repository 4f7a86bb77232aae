"""User text files (benchmark questions, word lists) read with one sentence for every way they can be wrong."""

from __future__ import annotations

import io
from pathlib import Path


class TextFileError(ValueError):
    """A text file that cannot be read as UTF-8 text; the message names the file and the fix."""


def read_text_file(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of `path` (a byte-order mark dropped: it would glue itself to the first word or
    key); a missing path, a directory or a file that is not UTF-8 is a TextFileError naming it."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise TextFileError(f"{path}: is a directory, but the {what} is a file; name the file itself")
    if not path.exists():
        raise TextFileError(f"{path}: {what} not found")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TextFileError(f"{path}: cannot read the {what} ({err.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TextFileError(
            f"{path}:{line}: the {what} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start});"
            " save it as UTF-8"
        ) from None


def open_text_file(path: str | Path, what: str = "file") -> io.StringIO:
    """read_text_file as a file object (for csv and line-by-line readers); newlines as in the file."""
    return io.StringIO(read_text_file(path, what), newline="")

"""The justfile's recipes as text, for the tests that check what a recipe runs."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def recipe(name: str) -> tuple[str, list[str]]:
    """A justfile recipe's header line and body lines."""
    lines = (REPO / "justfile").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(rf"^{re.escape(name)}\b[^:]*:", ln))
    body = []
    for ln in lines[start + 1 :]:
        if not ln.startswith("    "):
            break
        body.append(ln.strip())
    return lines[start], body

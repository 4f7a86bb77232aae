"""The type checker in the lint gate: `just lint` runs mypy with pyproject's settings, CI lints before it tests."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from justfile_recipes import recipe

REPO = Path(__file__).resolve().parents[1]


def test_lint_recipe_runs_ruff_then_mypy() -> None:
    _, body = recipe("lint")
    tools = [
        next(t for t in ("ruff check", "ruff format", "mypy") if t in ln) for ln in body if "uv run" in ln
    ]
    assert tools == ["ruff check", "ruff format", "mypy"]
    # mypy without paths: it checks what [tool.mypy] names, core/ and grid/.
    assert body[-1].endswith("mypy")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["files"] == ["core", "grid"] and "pydantic.mypy" in config["plugins"]


def test_ci_lints_before_the_readme_test_command() -> None:
    steps = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln.startswith("just ")]
    assert steps == ["just lint", "just test"]  # set -e: a lint failure stops CI before the tests


@pytest.mark.slow  # one mypy run: about 15 s warm, a minute cold
def test_mypy_with_the_project_settings_fails_on_a_type_error(tmp_path: Path) -> None:
    (tmp_path / "returns.py").write_text("def f(n: int) -> str:\n    return n\n")
    # pydantic's plugin: a model's constructor takes what pydantic coerces (n="1" for an int field; plain
    # mypy would refuse it) and still needs the required fields.
    model = "from pydantic import BaseModel\n\nclass M(BaseModel):\n    n: int\n\nM(n='1')\nM()\n"
    (tmp_path / "model.py").write_text(model)
    found = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [ln for ln in found.stdout.splitlines() if ": error:" in ln]
    assert found.returncode == 1, found.stdout + found.stderr
    assert len(errors) == 2, errors
    assert "returns.py:2: error" in errors[0] or "returns.py:2: error" in errors[1]
    assert any('model.py:7: error: Missing named argument "n"' in e for e in errors), errors

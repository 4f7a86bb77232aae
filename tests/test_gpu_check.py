"""bench/gpu_check.py in its --tiny mode: every part runs through the real trainer on a CPU; the budget stops parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import gpu_check  # noqa: E402

PARTS = ["stage1 llava", "labels (SEA)", "stage1 sea", "stage1 basic", "stage2 llava"]


@pytest.mark.slow
def test_tiny_check_runs_every_part(tmp_path: Path) -> None:
    # In a process of its own, as `just gpu-check` runs it: the check initialises a torch.distributed
    # group and DeepSpeed's globals, which must not leak into the tests that run after it.
    out = tmp_path / "check.json"
    env = {
        k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
    }
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    done = subprocess.run(
        [sys.executable, str(script), "--tiny", "--out", str(out), "--work-dir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        cwd=script.parents[1],
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["part"] for r in rows] == PARTS
    assert all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        if r["part"].startswith("stage"):
            assert (
                r["step_s"] > 0 and r["samples_per_s"] > 0 and 0 < r["mfu"] < 1 and r["tokens_per_step"] > 0
            )
    labels = rows[1]
    assert labels["images_per_s"] > 0 and labels["bound_images_per_s"] > 0
    # Stage 2 trained from stage 1's adapter and saved its LLM; the printed table has one row per part.
    assert (tmp_path / "work" / "stage2" / "llm").is_dir()
    printed = done.stdout
    assert "Rows for BENCHMARKS.md" in printed and all(f"| {p} |" in printed for p in PARTS)


def test_budget_stops_parts_before_they_start(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    assert gpu_check.main(["--tiny", "--budget-s", "0", "--out", str(out)]) == 1
    rows = json.loads(out.read_text())["rows"]
    assert [r["part"] for r in rows] == ["stage1 llava", "labels (SEA)", "stage1 basic"]
    assert all(r["status"].startswith("skipped") for r in rows)

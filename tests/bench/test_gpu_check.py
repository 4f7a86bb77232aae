"""bench/gpu_check.py in its --tiny mode: every part runs through the real trainer on a CPU; the budget stops parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.rendezvous import without_rendezvous

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import gpu_check  # noqa: E402

PARTS = ["stage1 llava", "labels (SEA)", "stage1 sea", "stage1 basic", "stage2 llava"]


def _run_check(mode: str, out: Path, work: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    """`bench/gpu_check.py MODE` in a process of its own, as `just gpu-check` runs it: the check initialises a
    torch.distributed group and DeepSpeed's globals, which must not leak into the tests that run after it."""
    script = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"
    return subprocess.run(
        [sys.executable, str(script), mode, "--out", str(out), "--work-dir", str(work)],
        capture_output=True,
        text=True,
        env=without_rendezvous(os.environ),
        cwd=script.parents[1],
        timeout=timeout,
    )


@pytest.mark.slow
def test_tiny_check_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    done = _run_check("--tiny", out, tmp_path / "work", timeout=900)
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


@pytest.mark.slow
def test_cpu_mode_runs_the_real_path(tmp_path: Path) -> None:
    """--cpu: the GPU run's own path (vicuna-7b + clip-l-336 registry configs, random weights built by the
    check's loaders, ZeRO-2 then ZeRO-3) cut to one LLM layer, on this CPU, in a process of its own."""
    out = tmp_path / "check.json"
    done = _run_check("--cpu", out, tmp_path / "work", timeout=1500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    cut = " (1/32 LLM layers)"
    assert [r["part"] for r in rows] == [p + cut if p.startswith("stage") else p for p in PARTS]
    assert all(r["status"] == "ok" for r in rows), rows
    assert "vicuna-7b + clip-l-336" in report["device"] and "no GPU figures" in report["device"]
    for r in rows:
        if r["part"].startswith("stage"):
            assert r["peak_gib"] is None and r["step_s"] > 0 and r["estimate_gib"] > 0
    # Stage 2 saved an LLM of the registry's width, one layer deep.
    config = json.loads((tmp_path / "work" / "stage2" / "llm" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (4096, 1, 32000)


def test_one_gpu_parts_fit_80_gb() -> None:
    """Every part the GPU run starts fits one 80 GB GPU by the plan's own estimate: stage 2 at 7B only
    with --stage2-layers (16 of 32 by default), which its row names."""
    from grid.memory import GIB, model_facts, stage_memory, stage_settings

    args = gpu_check.parse_args([])
    assert args.stage2_layers == 16
    usable = 0.9 * 80 * 1e9 / GIB
    for stage, method in (("stage1", m) for m in gpu_check.METHODS):
        depth = gpu_check.part_depth(args, stage)
        cfg = gpu_check.trial(args, method)
        facts = gpu_check.at_depth(model_facts(cfg.model.llm, cfg.model.encoder, cfg.model.adapter), depth)
        assert stage_memory(facts, stage_settings(cfg, stage), tokens=facts.max_length).total / GIB < usable
    cfg, depth = gpu_check.trial(args, "llava"), gpu_check.part_depth(args, "stage2")
    full = model_facts(cfg.model.llm, cfg.model.encoder, cfg.model.adapter)
    cut = gpu_check.at_depth(full, depth)
    settings = stage_settings(cfg, "stage2")
    assert stage_memory(full, settings, tokens=full.max_length).total / GIB > usable  # why it is cut
    assert stage_memory(cut, settings, tokens=cut.max_length).total / GIB < usable
    assert depth.label("vicuna-7b") == " (16/32 LLM layers)"

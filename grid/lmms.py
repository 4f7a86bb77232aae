"""`seagrid lmms`: lmms-eval's `llava_hf` model on every finished trial's export, metrics into the trial's MLflow run."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from core.rendezvous import without_rendezvous
from grid.export_cmd import Finished, finished_stages
from grid.spec import SpecError

PREFIX = "lmms"
OUT_DIR = "lmms"
INSTALL = "uv sync --extra lmms"


def add_lmms_parser(sub: Any, command: Any) -> None:
    p = command(
        sub,
        "lmms",
        help="run lmms-eval benchmarks on the exports of a spec's finished trials; metrics go to MLflow",
        description="Export each finished trial of SPEC (reusing an export already there), run lmms-eval's "
        "llava_hf model on it for --tasks (sharded over the GPUs the trial used, with accelerate), log every "
        f"metric to the trial's MLflow run as {PREFIX}/<task>/<metric> and the per-sample file as an "
        f"artifact. Needs the optional install: {INSTALL}.",
    )
    p.add_argument("--tasks", required=True, help="lmms-eval task names, comma-separated (e.g. pope,mme)")
    p.add_argument("--trial", metavar="ID", help="only this trial (its full id or its hash)")
    p.add_argument("--stage", choices=("stage1", "stage2"), help="the stage to evaluate (default: the last)")
    p.add_argument("--include-path", metavar="DIR", help="a folder of extra lmms-eval task YAMLs")
    p.add_argument("--limit", type=int, help="at most this many samples per task (a quick look)")
    p.add_argument(
        "--model-args", default="", help="extra llava_hf model_args, e.g. attn_implementation=sdpa"
    )


def metric_key(task: str, name: str, suffix: str) -> str:
    """`lmms/<task>/<metric>` (+ `/<filter>` unless lmms-eval's default `none`) + the stage suffix."""
    metric, _, filt = name.partition(",")
    return f"{PREFIX}/{task}/{metric}" + (f"/{filt}" if filt and filt != "none" else "") + suffix


def read_results(out: Path, suffix: str) -> tuple[dict[str, float], list[Path]]:
    """The numeric metrics of lmms-eval's results file under `out`, and its per-sample files."""
    files = sorted(out.rglob("*_results.json"))
    if len(files) != 1:
        raise RuntimeError(f"lmms-eval wrote {len(files)} results files under {out}; expected one")
    results = json.loads(files[0].read_text())["results"]
    metrics = {
        metric_key(task, name, suffix): float(value)
        for task, values in results.items()
        for name, value in values.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    return metrics, sorted(out.rglob("*_samples_*.jsonl"))


def lmms_command(export: Path, out: Path, args: argparse.Namespace, gpus: int) -> list[str]:
    """The lmms-eval command line: one process on the CPU or one GPU, `accelerate launch` over several."""
    device = "cuda" if gpus else "cpu"
    model_args = f"pretrained={export},device={device}"
    # One process: everything on that device; several: llava_hf puts each rank on its own GPU itself.
    model_args += f",device_map={device}" if gpus <= 1 else ""
    model_args += ",dtype=bfloat16" if gpus else ",dtype=float32"
    model_args += f",{args.model_args}" if args.model_args else ""
    tail = ["--model", "llava_hf", "--model_args", model_args, "--tasks", args.tasks, "--batch_size", "1"]
    tail += ["--output_path", str(out), "--log_samples"]
    tail += ["--include_path", str(Path(args.include_path).resolve())] if args.include_path else []
    tail += ["--limit", str(args.limit)] if args.limit else []
    if gpus > 1:
        launch = ["-m", "accelerate.commands.launch", f"--num_processes={gpus}", "-m", "lmms_eval"]
        return [sys.executable, *launch, "eval", *tail]
    return [sys.executable, "-m", "lmms_eval", "eval", *tail]


def _gpus(item: Finished) -> int:
    import torch

    res = item.config.trial.resources
    wanted = int(res.num_workers * res.gpus_per_worker)
    return min(wanted, torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _ensure_export(item: Finished, exports_root: Path) -> Path:
    """The trial stage's export, written unless a complete one is there (exports appear only whole)."""
    from core.export.step import write_export

    target = exports_root / item.trial_id / item.stage
    if (target / "config.json").is_file():
        return target
    return write_export(item.config, item.deps, target)


def run_lmms(args: argparse.Namespace, console: Console) -> int:
    """0 every trial evaluated, 1 an lmms-eval run failed, 2 a user mistake (or lmms-eval not installed)."""
    import importlib.util

    from core.stages import enabled_stages
    from grid.spec import load_spec
    from grid.tracking import Tracker

    if importlib.util.find_spec("lmms_eval") is None:
        raise SpecError(f"lmms-eval is not installed; install the optional extra: {INSTALL}")
    spec = load_spec(args.spec)
    found, exports_root = finished_stages(args.spec, args.trial, args.stage)
    if not found:
        raise SpecError(f"{args.spec}: no finished trial to evaluate; run the grid first")
    tracker = Tracker(spec.name, spec.output.tracking_uri)
    runs = tracker.trial_runs()
    failed = 0
    for item in found:
        last = enabled_stages(item.config.trial)[-1].name
        suffix = "" if item.stage == last else f"/after_{item.stage}"
        export = _ensure_export(item, exports_root)
        out = Path(spec.output.root) / OUT_DIR / item.trial_id / item.stage
        shutil.rmtree(out, ignore_errors=True)
        command = lmms_command(export, out, args, _gpus(item))
        console.print(f"lmms-eval on {item.trial_id} after {item.stage}: {args.tasks}", highlight=False)
        if subprocess.run(command, env=without_rendezvous(os.environ)).returncode != 0:
            print(f"error: lmms-eval failed on {item.trial_id} ({' '.join(command)})", file=sys.stderr)
            failed += 1
            continue
        metrics, samples = read_results(out, suffix)
        _log(tracker, runs.get(item.trial_id), item, metrics, samples, console)
    return 1 if failed else 0


def _log(
    tracker: Any, run: Any, item: Finished, metrics: dict[str, float], samples: list[Path], console: Console
) -> None:
    for key, value in sorted(metrics.items()):
        console.print(f"  {key} = {value:.4g}", highlight=False)
    if run is None:
        console.print(f"  (no MLflow run for {item.trial_id}: nothing logged)", highlight=False)
        return
    tracker.log_metrics(run.run_id, metrics, step=0)
    for path in samples:
        tracker.client.log_artifact(run.run_id, str(path), f"{PREFIX}/{item.stage}")

"""The evaluation step of a trial: configured benchmarks, final diagnostics and pictures, written to a directory."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.evaluation.config import EvalConfig, synthetic_spec
from core.evaluation.names import diag_name, metric_prefix
from core.evaluation.shard import OUTPUTS_DIR, Shard, gather_outputs, write_outputs
from core.stages import STAGES

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM

METRICS_FILE = "metrics.json"
PREDICTIONS_DIR = "predictions"
SUBMISSIONS_DIR = "submissions"  # evaluation servers' answer files (benchmarks with `submission: true`)
DIAGNOSTICS_FILE = "diagnostics.json"
SHARD_DONE = "shard_done.json"


def evaluate(
    vlm: VLM,
    tokenizer: Tokenizer,
    eval_cfg: EvalConfig,
    *,
    llm_id: str,
    stage: str,
    out_dir: str | Path,
    heldout: Any = None,
    words: Sequence[str] | None = None,
    final: bool = True,
    template: str | None = None,
    tacs_curve: Sequence[tuple[int, float]] | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, float]:
    """Run the benchmarks due after `stage`, the diagnostics and pictures; write files; return metrics.

    `stage` is the stage that just finished ("stage1" or "stage2"); `final` says whether it is the
    trial's last one (stage 1 with stage 2 disabled, or stage 2). Benchmarks run per their `when`
    (default: text_mc after every stage, the others after the final one). `template` is the chat
    template for prompts (default: the LLM's own; pass stage 2's override when it has one).
    `heldout` (a diagnostics.Heldout) and `words` default to the configured held-out set and its words.
    `tacs_curve` (step, TACS) points of stage 1 add `tacs_curve.png`.

    Writes into `out_dir`: `metrics.json` ({"stage", "final", "llm_id", "template", "metrics",
    "counts", "seconds"}), `predictions/<bench>.jsonl` per benchmark run, and with
    diagnostics.pictures `patch_words.png`, `pca.png` (and `tacs_curve.png`). Returns {} without
    writing anything when `eval_cfg.enabled` is false.
    """
    setup = _setup(eval_cfg, stage, final, llm_id, template, log)
    if setup is None:
        return {}
    template, synthetic_dir, due = setup
    out = Path(out_dir)
    (out / PREDICTIONS_DIR).mkdir(parents=True, exist_ok=True)
    results = {
        b.name: _run_benchmark(vlm, tokenizer, b, eval_cfg, template, synthetic_dir, final, out, log)
        for b in due
    }
    diag = _run_diagnostics(
        vlm, tokenizer, eval_cfg, stage, out, heldout, words, synthetic_dir, tacs_curve, log or _quiet
    )
    return _write_summary(out, stage, final, llm_id, template, results, diag)


def _quiet(_: str) -> None:
    pass


def _setup(
    eval_cfg: EvalConfig,
    stage: str,
    final: bool,
    llm_id: str,
    template: str | None,
    log: Callable[[str], None] | None,
) -> tuple[str, Path | None, list[Any]] | None:
    """(template, synthetic eval directory, benchmarks due), or None when evaluation is off."""
    from core.models.llm import get_llm_spec

    if stage not in STAGES:
        raise ValueError(
            f"stage={stage!r}: must be one of {', '.join(STAGES)} (the stage that just finished)"
        )
    if not eval_cfg.enabled:
        return None
    template = template or get_llm_spec(llm_id).chat_template
    synthetic_dir = None
    if eval_cfg.needs_synthetic():
        from core.data.synthetic_eval import ensure_synthetic_eval

        synthetic_dir = ensure_synthetic_eval(synthetic_spec(eval_cfg))
    due = [b for b in eval_cfg.benchmarks if b.runs_after(stage, final)]
    (log or _quiet)(
        f"[eval] after {stage} ({'final' if final else 'not final'}): {len(due)} benchmark(s), template {template}"
    )
    return template, synthetic_dir, due


def _write_summary(
    out: Path,
    stage: str,
    final: bool,
    llm_id: str,
    template: str,
    results: dict[str, tuple[dict[str, float], int, float]],
    diag: tuple[dict[str, float], int, float],
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    counts: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for name, (found, n, secs) in [*results.items(), ("diagnostics", diag)]:
        metrics.update(found)
        counts[name], seconds[name] = n, secs
    summary = {
        "stage": stage,
        "final": final,
        "llm_id": llm_id,
        "template": template,
        "metrics": metrics,
        "counts": counts,
        "seconds": seconds,
    }
    (out / METRICS_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return metrics


def evaluate_shard(
    vlm: VLM,
    tokenizer: Tokenizer,
    eval_cfg: EvalConfig,
    shard: Shard,
    *,
    llm_id: str,
    stage: str,
    out_dir: str | Path,
    final: bool = True,
    template: str | None = None,
    tacs_curve: Sequence[tuple[int, float]] | None = None,
    log: Callable[[str], None] | None = print,
) -> None:
    """One shard of `evaluate` into `out_dir`: its batches of every due benchmark's model calls
    (`outputs/<bench>.json`); shard 0 also runs the diagnostics and pictures (`diagnostics.json`).
    `gather_shards` scores the gathered outputs once every shard is done."""
    from core.evaluation.benchmarks import benchmark_outputs

    setup = _setup(eval_cfg, stage, final, llm_id, template, log)
    if setup is None:
        return
    template, synthetic_dir, due = setup
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for bench in due:
        recorded = benchmark_outputs(
            vlm,
            tokenizer,
            bench,
            template,
            shard,
            synthetic_dir=synthetic_dir,
            image_mode=eval_cfg.image_mode,
            batch_size=eval_cfg.batch_size,
            max_new_tokens=eval_cfg.max_new_tokens,
        )
        write_outputs(out / OUTPUTS_DIR / f"{bench.name}.json", recorded)
    if shard.index == 0:
        found, n, secs = _run_diagnostics(
            vlm, tokenizer, eval_cfg, stage, out, None, None, synthetic_dir, tacs_curve, log or _quiet
        )
        (out / DIAGNOSTICS_FILE).write_text(json.dumps({"metrics": found, "count": n, "seconds": secs}))
    (out / SHARD_DONE).write_text(json.dumps({"shard": shard.index, "count": shard.count}))


def gather_shards(
    eval_cfg: EvalConfig,
    shard_dirs: Sequence[str | Path],
    *,
    llm_id: str,
    stage: str,
    out_dir: str | Path,
    final: bool = True,
    template: str | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, float]:
    """`evaluate`'s files and metrics from the shards' outputs (`shard_dirs`, shard 0 first): every
    benchmark scored once on the gathered outputs, the diagnostics and pictures shard 0 made. Needs
    no model."""
    setup = _setup(eval_cfg, stage, final, llm_id, template, log)
    if setup is None:
        return {}
    template, synthetic_dir, due = setup
    out = Path(out_dir)
    (out / PREDICTIONS_DIR).mkdir(parents=True, exist_ok=True)
    dirs = [Path(d) for d in shard_dirs]
    for d in dirs:
        if not (d / SHARD_DONE).is_file():
            raise FileNotFoundError(f"{d}: evaluation shard did not finish ({SHARD_DONE} missing)")
    results = {}
    for bench in due:
        replay = gather_outputs([d / OUTPUTS_DIR / f"{bench.name}.json" for d in dirs])
        results[bench.name] = _run_benchmark(
            None, None, bench, eval_cfg, template, synthetic_dir, final, out, log, replay
        )
    diag = json.loads((dirs[0] / DIAGNOSTICS_FILE).read_text())
    for picture in dirs[0].glob("*.png"):
        shutil.copy2(picture, out / picture.name)
    return _write_summary(
        out, stage, final, llm_id, template, results, (diag["metrics"], diag["count"], diag["seconds"])
    )


def _run_benchmark(
    vlm: VLM | None,
    tokenizer: Tokenizer | None,
    bench: Any,
    eval_cfg: EvalConfig,
    template: str,
    synthetic_dir: Path | None,
    final: bool,
    out: Path,
    log: Callable[[str], None] | None,
    replay: dict[str, list[Any]] | None = None,
) -> tuple[dict[str, float], int, float]:
    """One benchmark: its metrics, item count and seconds; predictions to `predictions/<name>.jsonl`."""
    from core.evaluation.benchmarks import run_benchmark

    t0 = time.perf_counter()
    found, preds = run_benchmark(
        vlm,
        tokenizer,
        bench,
        template,
        synthetic_dir=synthetic_dir,
        prefix=metric_prefix(bench.name, final),
        image_mode=eval_cfg.image_mode,
        batch_size=eval_cfg.batch_size,
        max_new_tokens=eval_cfg.max_new_tokens,
        log=log,
        replay=replay,
        submission_dir=out / SUBMISSIONS_DIR,
    )
    with (out / PREDICTIONS_DIR / f"{bench.name}.jsonl").open("w") as f:
        for p in preds:
            f.write(json.dumps(p) + "\n")
    return found, len(preds), time.perf_counter() - t0


def _run_diagnostics(
    vlm: VLM,
    tokenizer: Tokenizer,
    eval_cfg: EvalConfig,
    stage: str,
    out: Path,
    heldout: Any,
    words: Sequence[str] | None,
    synthetic_dir: Path | None,
    tacs_curve: Sequence[tuple[int, float]] | None,
    say: Callable[[str], None],
) -> tuple[dict[str, float], int, float]:
    """TACS, modality gap and label recall on the held-out set (named for `stage`), and the pictures."""
    from core.evaluation.diagnostics import compute_diagnostics
    from core.evaluation.heldout import load_heldout
    from core.evaluation.pictures import curve_picture, diagnostics_pictures

    t0 = time.perf_counter()
    if heldout is None:
        heldout = load_heldout(eval_cfg, vlm, tokenizer, synthetic_dir=synthetic_dir)
    result = compute_diagnostics(
        vlm, tokenizer, heldout, words, k=eval_cfg.diagnostics.tacs_k, batch_size=eval_cfg.batch_size
    )
    if eval_cfg.diagnostics.pictures:
        diagnostics_pictures(result, heldout, vlm, out)
        if tacs_curve:
            curve_picture(tacs_curve, out / "tacs_curve.png")
    seconds = time.perf_counter() - t0
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    say(f"[eval] diagnostics on {len(heldout)} held-out images in {seconds:.1f}s: {shown}")
    return {diag_name(k, stage): v for k, v in result.metrics.items()}, len(heldout), seconds

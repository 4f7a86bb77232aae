"""The evaluation step of a trial, in a worker: load the model a training stage left, run `evaluate`."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.cache import DONE_MARKER, is_built

METRICS_FILE = "metrics.json"


def load_trained(cfg: Any, stage: str, stage_dirs: dict[str, str], device: Any = None) -> tuple[Any, Any]:
    """The VLM as `stage` left it: stage 1's adapter on the original LLM, or stage 2's LLM, adapter and
    (when it trained) vision tower weights."""
    import torch

    from core.models import build_vlm, load_adapter

    step_dir = Path(stage_dirs[stage])
    llm_path = str(step_dir / "llm") if stage == "stage2" else cfg.model.llm_path
    vlm, tokenizer = build_vlm(
        cfg.model.llm,
        cfg.model.encoder,
        cfg.model.adapter,
        llm_path=llm_path,
        encoder_path=cfg.model.encoder_path,
    )
    load_adapter(vlm, step_dir / "adapter")
    vision = step_dir / "vision_trainable.pt"
    if vision.is_file():
        state = torch.load(vision, map_location="cpu")
        missing = set(state) - {n for n, _ in vlm.vision.named_parameters()}
        if missing:
            raise ValueError(f"{vision}: weights not in the vision tower: {sorted(missing)[:5]}")
        vlm.vision.load_state_dict(state, strict=False)
    vlm.eval()
    if device is not None:
        vlm.to(device)
    return vlm, tokenizer


def evaluate_loaded(vlm: Any, tokenizer: Any, cfg: Any, payload: dict[str, Any]) -> dict[str, float]:
    """`evaluate` on a model already in memory (the training worker's, or one `load_trained` built)."""
    import torch

    from core.evaluation.diagnostics import CURVE_FILE, read_curve
    from core.evaluation.run import evaluate

    device = next(vlm.parameters()).device
    curve: list[tuple[int, float]] = []
    if "stage1" in payload["stage_dirs"]:
        curve = read_curve(Path(payload["stage_dirs"]["stage1"]) / CURVE_FILE)
    was_training = vlm.training
    vlm.eval()
    try:
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"),
        ):
            return evaluate(
                vlm,
                tokenizer,
                cfg.eval,
                llm_id=cfg.model.llm,
                stage=payload["stage"],
                out_dir=payload["out_dir"],
                final=payload["final"],
                template=cfg.stage2.template,
                tacs_curve=curve or None,
            )
    finally:
        vlm.train(was_training)


def evaluate_step(payload: dict[str, Any]) -> dict[str, float]:
    """Evaluate after `payload["stage"]` in a process of its own (a Ray task): load what the stage left.

    payload: trial (config), stage, final, stage_dirs {stage: step dir}, out_dir, cache_dir, threads.
    """
    import torch

    from core.config import TrialConfig

    os.environ["SEAGRID_CACHE"] = payload["cache_dir"]
    torch.set_num_threads(max(1, int(payload.get("threads", 1))))
    cfg = TrialConfig.model_validate(payload["trial"])
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    vlm, tokenizer = load_trained(cfg, payload["stage"], payload["stage_dirs"], device)
    return evaluate_loaded(vlm, tokenizer, cfg, payload)


def build_eval_dir(out_dir: Path, ident: dict[str, Any], run: Callable[[], Any]) -> bool:
    """Run `run()` (which writes the evaluation into `out_dir`) unless a finished evaluation is there;
    a lock beside the directory makes concurrent trials wait for one another. True if it ran."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(out_dir):
            return False
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        (out_dir / "step.json").write_text(json.dumps(ident, indent=2, sort_keys=True))
        run()
        (out_dir / DONE_MARKER).write_text("ok\n")
    return True


def read_metrics(out_dir: str | Path) -> dict[str, float]:
    """The metrics an earlier evaluation step wrote (a finished step is reused, not rerun)."""
    return dict(json.loads((Path(out_dir) / METRICS_FILE).read_text())["metrics"])

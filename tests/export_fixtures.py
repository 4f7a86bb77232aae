"""Finished stage outputs of tiny trials, written with the functions the stages save with, and their exports."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.config import TrialConfig

LLM = "tiny-llama"
HF_ENCODERS = ("tiny-hf-clip", "tiny-siglip", "tiny-dinov2")
STAGES = ("stage1", "stage2")
METRICS = {"eval/pope": 0.625, "diag/tacs": 0.125}


def trial_config(encoder: str, **extra: object) -> TrialConfig:
    return TrialConfig.model_validate({"model": {"llm": LLM, "encoder": encoder}, **extra})


def _perturb(module: torch.nn.Module, scale: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def write_stage_outputs(root: Path, encoder: str, seed: int = 0) -> dict[str, Path]:
    """{stage: step dir} as finished stages leave them: stage 1 an adapter; stage 2 another adapter, the
    trained LLM and tokenizer (`llm/`, saved by stage code's own `save_llm`), trained tower weights; each
    with its `result.json` and an evaluation's `metrics.json` beside it (`eval-<stage>`)."""
    from core.models import build_vlm, save_adapter
    from core.train.save import save_llm

    torch.manual_seed(seed)
    vlm, tokenizer = build_vlm(LLM, encoder)
    dirs = {"stage1": root / "stage1", "stage2": root / "stage2"}
    save_adapter(vlm, dirs["stage1"] / "adapter")
    _perturb(vlm.adapter, 0.05)
    _perturb(vlm.llm, 0.02)
    _perturb(vlm.vision, 0.02)
    save_adapter(vlm, dirs["stage2"] / "adapter")
    save_llm(vlm.llm, None, dirs["stage2"] / "llm", torch.float32)
    tokenizer.save_pretrained(dirs["stage2"] / "llm")
    torch.save(
        {n: p.detach().clone() for n, p in vlm.vision.named_parameters()},
        dirs["stage2"] / "vision_trainable.pt",
    )
    for stage, directory in dirs.items():
        (directory / "result.json").write_text(json.dumps({"final_loss": 1.5, "steps": 3}))
        ev = root / f"eval-{stage}"
        ev.mkdir(parents=True, exist_ok=True)
        (ev / "metrics.json").write_text(json.dumps({"metrics": METRICS}))
    return dirs


def deps_of(stage_dirs: dict[str, Path], stage: str) -> dict[str, Path]:
    directory = stage_dirs[stage]
    return {stage: directory, f"eval-{stage}": directory.parent / f"eval-{stage}"}

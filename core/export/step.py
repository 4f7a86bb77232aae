"""The export step: a finished stage's outputs -> a directory transformers' LLaVA classes load as it is."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from core.export.config import ExportStepConfig

# The checkpoint's folder inside the step directory (beside the step's own bookkeeping files).
HF_DIR = "hf"
# transformers' default shard size is larger than the Hub's and vLLM's habit; llava-hf uses 5 GB.
MAX_SHARD_SIZE = "5GB"
STAGE_RESULT = "result.json"
EVAL_METRICS = "metrics.json"


def export_step(config: ExportStepConfig, deps: dict[str, Path], out_dir: Path) -> Path:
    """The graph step: write the export of `config.stage` into `out_dir/hf`. `deps` names the stage's step
    directory (key: the stage's name) and, when the trial evaluates, its evaluation's (`eval-<stage>`)."""
    return write_export(config, deps, Path(out_dir) / HF_DIR)


def write_export(config: ExportStepConfig, deps: dict[str, Path], target: Path) -> Path:
    """Build the export beside `target` and rename it into place: a failure leaves no `target`, only
    nothing (the partial directory is removed). An existing `target` is replaced only once the new one
    is complete."""
    import torch

    if config.stage not in deps:
        raise ValueError(f"export of {config.stage}: deps must name its step directory, got {sorted(deps)}")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        llava, processor = build_export(config, {k: Path(v) for k, v in deps.items()}, torch.bfloat16)
        llava.save_pretrained(partial, max_shard_size=MAX_SHARD_SIZE)
        processor.save_pretrained(partial)
        (partial / "README.md").write_text(_card(config, deps))
        _replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def _replace(partial: Path, target: Path) -> None:
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, old)
        os.rename(partial, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(partial, target)


def build_export(config: ExportStepConfig, deps: dict[str, Path], dtype: Any) -> tuple[Any, Any]:
    """The LlavaForConditionalGeneration and LlavaProcessor of the stage's model, in `dtype`, in memory.
    Refused (ExportRefused) before any weight is read when the model has no LLaVA form."""
    from core.evaluation.step import load_trained
    from core.export.model import llava_from_vlm
    from core.export.processor import build_processor
    from core.export.support import check_exportable
    from core.models.vision import get_encoder_spec

    encoder = get_encoder_spec(config.model.encoder)
    facts = check_exportable(encoder, config.model.adapter)
    vlm, tokenizer = load_trained(
        config.model, config.stage, {config.stage: str(deps[config.stage])}, dtype=dtype
    )
    llava = llava_from_vlm(vlm, tokenizer, facts, dtype)
    processor = build_processor(encoder, config.image_mode, tokenizer, config.template, facts)
    return llava, processor


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _card(config: ExportStepConfig, deps: dict[str, Path]) -> str:
    from core.export.card import model_card

    eval_dir = deps.get(f"eval-{config.stage}")
    metrics = _read_json(Path(eval_dir) / EVAL_METRICS).get("metrics", {}) if eval_dir else {}
    training = _read_json(Path(deps[config.stage]) / STAGE_RESULT)
    return model_card(
        config.trial,
        config.stage,
        template=config.template,
        image_mode=config.image_mode,
        metrics=metrics,
        training=training,
    )

"""The export's model card (README.md): what was trained, how, on what, how it scored, by which seagrid."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from core.config import TrialConfig


def seagrid_version() -> str:
    """The installed package version and, in a git checkout, its commit."""
    try:
        version = metadata.version("seagrid")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version} ({commit})" if commit else version


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    if not metrics:
        return "No evaluation ran for this stage (eval.enabled was false).\n"
    lines = ["| metric | value |", "| --- | --- |"]
    lines += [
        f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(metrics.items())
    ]
    return "\n".join(lines) + "\n"


def model_card(
    cfg: TrialConfig,
    stage: str,
    *,
    template: str,
    image_mode: str,
    metrics: Mapping[str, Any],
    training: Mapping[str, Any],
) -> str:
    """README.md text: front matter for the Hub, then spec, method, data, metrics and version."""
    front = {
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text",
        "tags": ["llava", "seagrid", cfg.method.name, stage],
    }
    data = cfg.data.model_dump(mode="json")
    spec = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=True)
    return (
        f"---\n{yaml.safe_dump(front, sort_keys=True)}---\n\n"
        f"# {cfg.method.name} · {cfg.model.llm} + {cfg.model.encoder} · after {stage}\n\n"
        "A LLaVA-style model trained by seagrid, exported as a transformers `LlavaForConditionalGeneration` "
        "checkpoint (bf16 safetensors) with its `AutoProcessor`.\n\n"
        "## Method\n\n"
        f"- method: `{cfg.method.name}`\n- stage: `{stage}`\n- LLM: `{cfg.model.llm}`\n"
        f"- vision encoder: `{cfg.model.encoder}`\n- adapter: `{cfg.model.adapter}`\n"
        f"- chat template: `{template}`\n- image preprocessing: `{image_mode}`\n- seed: {cfg.seed}\n\n"
        "## Data\n\n```json\n" + json.dumps(data, indent=2, sort_keys=True) + "\n```\n\n"
        "## Final metrics\n\n" + _metrics_table(metrics) + "\n"
        "## Training\n\n```json\n" + json.dumps(dict(training), indent=2, sort_keys=True) + "\n```\n\n"
        "## Usage\n\n```python\nfrom transformers import AutoProcessor, LlavaForConditionalGeneration\n"
        'model = LlavaForConditionalGeneration.from_pretrained("PATH")\n'
        'processor = AutoProcessor.from_pretrained("PATH")  # backend="pil": bit-exact seagrid pixels\n```\n\n'
        f"## Spec\n\n```yaml\n{spec}```\n\n"
        f"seagrid version: {seagrid_version()}\n"
    )

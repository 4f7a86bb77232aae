"""Model registries (LLMs, vision encoders), adapters and the composed VLM.

Names are imported on first use, so that reading a registry (spec validation, planning) does not
pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ADAPTERS": "adapter",
    "build_adapter": "adapter",
    "load_adapter": "adapter_io",
    "save_adapter": "adapter_io",
    "IGNORE_INDEX": "constants",
    "IMAGE_TOKEN_INDEX": "constants",
    "LLMS": "llm",
    "LLMSpec": "llm",
    "get_llm_spec": "llm",
    "load_llm": "llm",
    "llm_config": "llm",
    "build_meta_llm": "llm",
    "TinyBuilder": "tiny",
    "tiny_checkpoint_dir": "tiny",
    "ENCODERS": "vision",
    "EncoderSpec": "vision",
    "get_encoder_spec": "vision",
    "encoder_config": "vision",
    "VisionTower": "towers",
    "load_encoder": "towers",
    "build_meta_encoder": "towers",
    "VLM": "vlm",
    "SplicedInputs": "vlm",
    "VLMOutput": "vlm",
    "build_vlm": "vlm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'core.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"core.models.{_EXPORTS[name]}"), name)

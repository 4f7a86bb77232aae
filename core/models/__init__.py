"""Model registries (LLMs, vision encoders), adapters and the composed VLM.

Names are imported on first use, so that reading a registry (spec validation, planning) does not
pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # The lazy __getattr__ below hides these names' types from a checker; name them for it
    # (the `X as X` form marks a re-export).
    from core.models.adapter import ADAPTERS as ADAPTERS
    from core.models.adapter import build_adapter as build_adapter
    from core.models.adapter_io import load_adapter as load_adapter
    from core.models.adapter_io import save_adapter as save_adapter
    from core.models.constants import IGNORE_INDEX as IGNORE_INDEX
    from core.models.constants import IMAGE_TOKEN_INDEX as IMAGE_TOKEN_INDEX
    from core.models.encoder_loading import build_meta_encoder as build_meta_encoder
    from core.models.encoder_loading import load_encoder as load_encoder
    from core.models.llm import LLMS as LLMS
    from core.models.llm import LLMSpec as LLMSpec
    from core.models.llm import build_meta_llm as build_meta_llm
    from core.models.llm import get_llm_spec as get_llm_spec
    from core.models.llm import llm_config as llm_config
    from core.models.llm import load_llm as load_llm
    from core.models.tiny import TinyBuilder as TinyBuilder
    from core.models.tiny import tiny_checkpoint_dir as tiny_checkpoint_dir
    from core.models.towers import VisionTower as VisionTower
    from core.models.vision import ENCODERS as ENCODERS
    from core.models.vision import EncoderSpec as EncoderSpec
    from core.models.vision import encoder_config as encoder_config
    from core.models.vision import get_encoder_spec as get_encoder_spec
    from core.models.vlm import VLM as VLM
    from core.models.vlm import SplicedInputs as SplicedInputs
    from core.models.vlm import VLMOutput as VLMOutput
    from core.models.vlm import build_vlm as build_vlm

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
    "load_encoder": "encoder_loading",
    "build_meta_encoder": "encoder_loading",
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

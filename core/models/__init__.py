"""Model registries (LLMs, vision encoders), adapters and the composed VLM."""

from core.models.adapter import ADAPTERS, build_adapter
from core.models.adapter_io import load_adapter, save_adapter
from core.models.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from core.models.llm import LLMS, LLMSpec, get_llm_spec, load_llm
from core.models.tiny import TinyBuilder, tiny_checkpoint_dir
from core.models.vision import ENCODERS, EncoderSpec, VisionTower, get_encoder_spec, load_encoder
from core.models.vlm import VLM, SplicedInputs, VLMOutput, build_vlm

__all__ = [
    "ADAPTERS",
    "ENCODERS",
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
    "LLMS",
    "VLM",
    "EncoderSpec",
    "LLMSpec",
    "SplicedInputs",
    "TinyBuilder",
    "VLMOutput",
    "VisionTower",
    "build_adapter",
    "build_vlm",
    "get_encoder_spec",
    "get_llm_spec",
    "load_adapter",
    "load_encoder",
    "load_llm",
    "save_adapter",
    "tiny_checkpoint_dir",
]

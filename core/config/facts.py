"""Facts about the registries' ids that validating a config needs, without importing the models.

core.models' registries are the source of truth for everything else; `tests/core/config/test_config.py` checks that
these ids agree with them, so adding a model means adding its id here too.
"""

from __future__ import annotations

LLM_IDS = ("tiny-llama", "vicuna-7b", "vicuna-13b", "llama3-8b", "mistral-7b", "phi3-mini", "gemma-2b")
CHAT_TEMPLATES = ("vicuna_v1", "llama3", "gemma", "phi3", "mistral")
ADAPTER_IDS = ("mlp2x_gelu", "linear")


# encoder id -> (has a text tower, patch grid rows x columns)
ENCODER_FACTS: dict[str, tuple[bool, tuple[int, int]]] = {
    "tiny-clip": (True, (8, 8)),
    "tiny-dinov2": (False, (4, 4)),
    "tiny-hf-clip": (True, (8, 8)),
    "tiny-siglip": (True, (8, 8)),
    "clip-l-336": (True, (24, 24)),
    "clip-l-224": (True, (16, 16)),
    "siglip-so400m-384": (True, (27, 27)),
    "dinov2-l-224": (False, (16, 16)),
}


def encoders_with_text_tower() -> list[str]:
    """Encoder ids that can label patches (SEA's label step needs a text tower)."""
    return sorted(k for k, (text, _) in ENCODER_FACTS.items() if text)

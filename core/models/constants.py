"""Sentinel ids shared by the data pipeline and the VLM (LLaVA's conventions)."""

from __future__ import annotations

# Placeholder in `input_ids` where the visual tokens are spliced in; negative so it can never be a vocab id.
IMAGE_TOKEN_INDEX = -200
# Label value that the causal-LM loss skips (PyTorch's cross-entropy default ignore_index).
IGNORE_INDEX = -100

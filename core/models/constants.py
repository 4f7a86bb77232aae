"""Sentinel ids shared by the data pipeline and the VLM (LLaVA's conventions)."""

from __future__ import annotations

# Placeholder in `input_ids` where the visual tokens are spliced in; negative so it can never be a vocab id.
IMAGE_TOKEN_INDEX = -200
# Label value that the causal-LM loss skips (PyTorch's cross-entropy default ignore_index).
IGNORE_INDEX = -100

# Logit bytes one chunk of the supervised LM loss may take (fp32), before log-softmax and gradient.
LM_LOSS_CHUNK_BYTES = 512 * 1024**2


def default_chunk(vocab_size: int) -> int:
    """Rows per chunk of core.models.lm_loss so that one chunk's fp32 logits stay near
    LM_LOSS_CHUNK_BYTES (at least 128 rows)."""
    return max(128, LM_LOSS_CHUNK_BYTES // (4 * vocab_size))

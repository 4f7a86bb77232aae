"""The tokenizer type every seam takes: a Hugging Face tokenizer, as `load_llm` returns it."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Every tokenizer seagrid handles is built by transformers: `AutoTokenizer.from_pretrained` in
# `core.models.llm.load_llm` (a tokenizers-backed fast tokenizer for every registry LLM, the tiny ones
# included: core.models.tiny_tokenizer), so the base class is the honest type; a Protocol would only
# restate the part of its API we call. Only the annotation needs transformers, hence the string: import
# `Tokenizer` under `if TYPE_CHECKING:` (at run time it is that string, not a class).
Tokenizer: TypeAlias = "PreTrainedTokenizerBase"

"""Language-model registry: facts about each LLM id and loading it (hub id, local path or tiny build)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.models.tiny import TinyBuilder, tiny_checkpoint_dir
from core.models.tiny_tokenizer import train_tiny_tokenizer


@dataclass(frozen=True)
class LLMSpec:
    """What the rest of seagrid needs to know about an LLM without loading it."""

    id: str
    hub_id: str | None
    hidden_size: int
    num_layers: int
    vocab_size: int
    max_length: int
    chat_template: str
    params_b: float | None
    builder: TinyBuilder | None = None


def _build_tiny_llama(out_dir: Path, config: dict[str, Any]) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tiny_tokenizer(config["vocab_size"], config["max_length"])
    tokenizer.save_pretrained(out_dir)
    llama = LlamaConfig(
        **config["llama"],
        vocab_size=config["vocab_size"],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(llama)
    model.save_pretrained(out_dir)


_TINY_LLAMA_CONFIG: dict[str, Any] = {
    "version": 1,
    "vocab_size": 1024,
    "max_length": 512,
    "llama": {
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 176,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    },
}

LLMS: dict[str, LLMSpec] = {
    "tiny-llama": LLMSpec(
        id="tiny-llama",
        hub_id=None,
        hidden_size=64,
        num_layers=4,
        vocab_size=1024,
        max_length=512,
        chat_template="vicuna_v1",
        params_b=0.000316,  # 315,968 parameters
        builder=TinyBuilder(_build_tiny_llama, _TINY_LLAMA_CONFIG, seed=0),
    ),
}


def get_llm_spec(llm_id: str) -> LLMSpec:
    """The registry entry for `llm_id`, or a ValueError listing the known ids."""
    try:
        return LLMS[llm_id]
    except KeyError:
        raise ValueError(f"unknown llm_id {llm_id!r}; known ids: {sorted(LLMS)}") from None


def llm_source(llm_id: str, path: str | Path | None = None) -> str:
    """Where `load_llm` reads from: `path`, else the hub id, else the tiny build in the cache."""
    spec = get_llm_spec(llm_id)
    if path is not None:
        return str(path)
    if spec.hub_id is not None:
        return spec.hub_id
    if spec.builder is not None:
        return str(tiny_checkpoint_dir(spec.id, spec.builder))
    raise ValueError(f"llm {llm_id!r} has neither a hub_id nor a builder; pass path= to a local checkpoint")


def load_llm(
    llm_id: str, *, path: str | Path | None = None, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the causal LM and its tokenizer through `from_pretrained`, whatever the source.

    The tokenizer pads on the right, has the spec's `max_length` as `model_max_length`, and gets a
    pad token (unk, else eos) when the checkpoint has none, as LLaVA does for Llama tokenizers.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = get_llm_spec(llm_id)
    source = llm_source(llm_id, path)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source, padding_side="right", model_max_length=spec.max_length)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        raise ValueError(
            f"llm {llm_id!r} from {source}: tokenizer has {len(tokenizer)} tokens but the embedding table "
            f"only {model.get_input_embeddings().num_embeddings}; the checkpoint and tokenizer do not match"
        )
    return model, tokenizer

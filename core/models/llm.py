"""Language-model registry: facts about each LLM id and loading it (hub id, local path or tiny build)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

    from core.models.tokenizer import Tokenizer

from core.config.facts import CHAT_TEMPLATES  # noqa: E402  (re-exported)
from core.models.tiny import TinyBuilder, checkpoint_source
from core.models.tiny_tokenizer import train_tiny_tokenizer


@dataclass(frozen=True)
class LLMSpec:
    """What the rest of seagrid needs to know about an LLM without loading it.

    `hub_id` is where `load_llm` reads from unless given a local `path`. `deepspeed_stage` is the
    ZeRO stage for stage 2 (instruction tuning, LLM trained): 3 at 7B and above, else 2; stage 1
    trains only the adapter and always uses ZeRO-2. `arch` is the checkpoint's `config.json`
    architecture (with its `model_type`), enough to build the model on the meta device without
    downloading anything; `params_b` is the published size in billions.
    """

    id: str
    hub_id: str | None
    hidden_size: int
    num_layers: int
    vocab_size: int
    max_length: int
    chat_template: str
    params_b: float | None
    builder: TinyBuilder | None = None
    deepspeed_stage: int = 2
    arch: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        where = f"llm {self.id!r}"
        if self.chat_template not in CHAT_TEMPLATES:
            raise ValueError(f"{where}: chat_template={self.chat_template!r}; known: {list(CHAT_TEMPLATES)}")
        if self.deepspeed_stage not in (0, 1, 2, 3):
            raise ValueError(f"{where}: deepspeed_stage={self.deepspeed_stage} must be a ZeRO stage 0..3")
        facts = (
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("vocab_size", self.vocab_size),
        )
        for key, value in facts if self.arch else ():
            if self.arch.get(key) != value:
                raise ValueError(f"{where}: arch has {key}={self.arch.get(key)!r}, spec says {value}")


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

# config.json of the hub checkpoints, architecture keys only (ids and dtypes left out).
_VICUNA_7B_ARCH: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
_VICUNA_13B_ARCH: dict[str, Any] = {
    **_VICUNA_7B_ARCH,
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
}
_LLAMA3_8B_ARCH: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
_MISTRAL_7B_ARCH: dict[str, Any] = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "sliding_window": None,  # v0.2 dropped v0.1's 4096-token sliding window
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
_PHI3_MINI_ARCH: dict[str, Any] = {
    "model_type": "phi3",
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32064,
    "max_position_embeddings": 4096,
    "original_max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "sliding_window": 2047,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}
_GEMMA_2B_ARCH: dict[str, Any] = {
    "model_type": "gemma",
    "hidden_size": 2048,
    "intermediate_size": 16384,
    "num_hidden_layers": 18,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "vocab_size": 256000,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    # config.json says "gelu", a legacy value for the tanh approximation Gemma was trained with
    # (GemmaConfig rewrites it to this).
    "hidden_act": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
}

# LLaVA-1.5 trains with model_max_length 2048 whatever the LLM's own context length.
_MAX_LENGTH = 2048


def _real(
    llm_id: str,
    hub_id: str,
    arch: dict[str, Any],
    chat_template: str,
    params_b: float,
    deepspeed_stage: int,
) -> LLMSpec:
    return LLMSpec(
        id=llm_id,
        hub_id=hub_id,
        hidden_size=arch["hidden_size"],
        num_layers=arch["num_hidden_layers"],
        vocab_size=arch["vocab_size"],
        max_length=_MAX_LENGTH,
        chat_template=chat_template,
        params_b=params_b,
        deepspeed_stage=deepspeed_stage,
        arch=arch,
    )


# ZeRO-3 for stage 2 "at 7B and above" goes by the model's size class: vicuna-7b (6.74B) is a 7B.
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
        arch={
            "model_type": "llama",
            **_TINY_LLAMA_CONFIG["llama"],
            "vocab_size": _TINY_LLAMA_CONFIG["vocab_size"],
        },
    ),
    "vicuna-7b": _real("vicuna-7b", "lmsys/vicuna-7b-v1.5", _VICUNA_7B_ARCH, "vicuna_v1", 6.74, 3),
    "vicuna-13b": _real("vicuna-13b", "lmsys/vicuna-13b-v1.5", _VICUNA_13B_ARCH, "vicuna_v1", 13.0, 3),
    "llama3-8b": _real(
        "llama3-8b", "meta-llama/Meta-Llama-3-8B-Instruct", _LLAMA3_8B_ARCH, "llama3", 8.03, 3
    ),
    "mistral-7b": _real(
        "mistral-7b", "mistralai/Mistral-7B-Instruct-v0.2", _MISTRAL_7B_ARCH, "mistral", 7.24, 3
    ),
    "phi3-mini": _real("phi3-mini", "microsoft/Phi-3-mini-4k-instruct", _PHI3_MINI_ARCH, "phi3", 3.82, 2),
    # The instruction-tuned Gemma: its chat format is the "gemma" template stage 2 trains with.
    "gemma-2b": _real("gemma-2b", "google/gemma-2b-it", _GEMMA_2B_ARCH, "gemma", 2.51, 2),
}


def get_llm_spec(llm_id: str) -> LLMSpec:
    """The registry entry for `llm_id`, or a ValueError listing the known ids."""
    try:
        return LLMS[llm_id]
    except KeyError:
        raise ValueError(f"unknown llm_id {llm_id!r}; known ids: {sorted(LLMS)}") from None


def llm_config(llm_id: str) -> PretrainedConfig:
    """The transformers config object built from the registry's `arch` facts (nothing is downloaded)."""
    from transformers import AutoConfig

    spec = get_llm_spec(llm_id)
    if not spec.arch:
        raise ValueError(
            f"llm {llm_id!r} has no arch facts in the registry; those that do: "
            f"{sorted(k for k, v in LLMS.items() if v.arch)}"
        )
    kwargs = copy.deepcopy(dict(spec.arch))
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def build_meta_llm(llm_id: str) -> PreTrainedModel:
    """The causal LM's architecture on the meta device: shapes and parameter counts, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = llm_config(llm_id)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def llm_source(llm_id: str, path: str | Path | None = None) -> str:
    """Where `load_llm` reads from: `path`, else the hub id, else the tiny build in the cache."""
    return checkpoint_source(get_llm_spec(llm_id), path, "llm")


def input_embeddings(model: PreTrainedModel) -> nn.Embedding:
    """The LLM's token embedding table. transformers types `get_input_embeddings` as any `nn.Module`, but
    every causal LM in the registry returns an `nn.Embedding` (or a subclass: Gemma's scaled embedding)."""
    return cast("nn.Embedding", model.get_input_embeddings())


def load_llm(
    llm_id: str,
    *,
    path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    zero3_config: Mapping[str, Any] | None = None,
) -> tuple[PreTrainedModel, Tokenizer]:
    """Load the causal LM and its tokenizer through `from_pretrained`, whatever the source.

    The weights load straight into `dtype` (default float32; bf16 where the stage computes in it). With
    `zero3_config` (the stage's DeepSpeed config) they are partitioned across the ranks as they are
    created: see `_load_causal_lm`.

    The tokenizer pads on the right, has the spec's `max_length` as `model_max_length`, and gets a
    pad token (unk, else eos) when the checkpoint has none, as LLaVA does for Llama tokenizers.
    """
    import torch
    from transformers import AutoTokenizer

    spec = get_llm_spec(llm_id)
    source = llm_source(llm_id, path)
    model = _load_causal_lm(source, dtype or torch.float32, zero3_config)
    tokenizer = AutoTokenizer.from_pretrained(source, padding_side="right", model_max_length=spec.max_length)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    table_size = input_embeddings(model).num_embeddings
    if table_size < len(tokenizer):
        raise ValueError(
            f"llm {llm_id!r} from {source}: tokenizer has {len(tokenizer)} tokens but the embedding table "
            f"only {table_size}; the checkpoint and tokenizer do not match"
        )
    return model, tokenizer


def _load_causal_lm(
    source: str, dtype: torch.dtype, zero3_config: Mapping[str, Any] | None
) -> PreTrainedModel:
    """`from_pretrained` in `dtype`; under ZeRO-3 inside transformers' DeepSpeed integration.

    While an `HfDeepSpeedConfig` is alive, `from_pretrained` builds the model under
    `deepspeed.zero.Init` (transformers `PreTrainedModel.get_init_context`) and loads the checkpoint into
    the partitions one tensor at a time (`integrations.deepspeed._load_state_dict_into_zero3_model`): no
    rank ever holds the whole model, in host or device memory. zero.Init takes its dtype from the config
    (bf16 when the `bf16` section is on, else fp32), so `dtype` must agree. The integration is switched
    off again on return, so that other models loaded later in the process (the vision tower) are not
    partitioned by it; the process group must exist already (core.train.deepspeed_engine.init_distributed).
    """
    import torch
    from transformers import AutoModelForCausalLM

    if zero3_config is None:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    stage = zero3_config.get("zero_optimization", {}).get("stage")
    if stage != 3:
        raise ValueError(
            f"zero3_config must configure ZeRO stage 3 (partitioned construction), got {stage!r}"
        )
    config_dtype = torch.bfloat16 if zero3_config.get("bf16", {}).get("enabled") else torch.float32
    if dtype != config_dtype:
        raise ValueError(
            f"dtype {dtype} disagrees with the DeepSpeed config, whose zero.Init builds in {config_dtype}: "
            "load in the stage's compute dtype (core.train.precision.module_dtypes)"
        )
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    integration = HfDeepSpeedConfig(copy.deepcopy(dict(zero3_config)))  # transformers keeps a weak reference
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    finally:
        unset_hf_deepspeed_config()
        del integration


# Registry LLMs from this size on recompute their layers' activations in backward unless told otherwise.
CHECKPOINTING_FROM_PARAMS_B = 1.0


def resolve_gradient_checkpointing(setting: bool | str, llm_id: str) -> bool:
    """A stage's `gradient_checkpointing`: true/false as given; `auto` on for LLMs of 1B parameters and more
    (at 7B and micro-batch 16 the activations alone exceed an 80 GB GPU without it; grid.memory)."""
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"gradient_checkpointing must be true, false or auto, got {setting!r}")
    params_b = get_llm_spec(llm_id).params_b
    return params_b is not None and params_b >= CHECKPOINTING_FROM_PARAMS_B

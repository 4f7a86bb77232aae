"""Numeric precision of a stage, as LLaVA-1.5 trains: bf16 compute, fp32 master weights and optimizer states.

Two mechanisms give it, one per training path:

* DeepSpeed (every GPU run by default): its own `bf16` section. The engine casts the module's parameters
  to bf16 (`_cast_module_mixed_precision`, deepspeed/runtime/engine.py) and its ZeRO optimizer keeps fp32
  master partitions and fp32 Adam states (stage3.py `_create_fp32_partitions`; stage_1_and_2.py
  `single_partition_of_fp32_groups`). This is LLaVA-1.5's own set-up (scripts/zero3.json has
  `"bf16": {"enabled": "auto"}` and it trains with `--bf16 True`, which HF's Trainer hands to DeepSpeed
  instead of autocasting).
* Plain PyTorch (DDP): fp32 trainable weights (they are the master copy), frozen weights in bf16, and
  `torch.autocast(bf16)` around the forward: the same bf16 compute with fp32 masters.

Why not DeepSpeed's `torch_autocast` section (fp32 parameters, forward under autocast inside the engine,
`autocast_if_enabled` in deepspeed/runtime/torch_autocast.py): autocast casts each fp32 weight that
requires grad to a fresh bf16 tensor, and autograd keeps that copy until the layer's backward (measured in
tests/core/train/test_precision.py: under autocast the tensors saved for backward hold a bf16 copy of every trained
weight; with bf16 parameters they hold the parameters themselves). ZeRO-3 frees a gathered parameter after
its module's forward and gathers it again for the backward, but cannot free those copies: at 13B they are
26 GB per GPU, the whole model in bf16, which is what ZeRO-3 partitions away. The autocast cache keeps
them alive to the end of the forward even under gradient checkpointing. With the `bf16` section the
saved weights are the parameters, which ZeRO-3 does release. The same gathered layer also travels and
sits in bf16 (half the fp32 bytes). Without a `torch_autocast` section the engine switches the loop's
own CUDA autocast off inside its forward (`autocast_if_enabled`), so the loop does not autocast under
DeepSpeed (`loop_autocast`): the bf16 parameters are the precision.

Cost of the choice: parameters of the objective (SEA's log_tau) also compute in bf16 (their master stays
fp32), and gradients accumulate across micro-batches in bf16, both as in LLaVA-1.5.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch

Precision = Literal["bf16", "fp32"]
PRECISION_SETTINGS = ("auto", "bf16", "fp32")
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_precision(setting: str, *, use_gpu: bool) -> Precision:
    """`auto`: bf16 on GPUs, fp32 on CPUs (exact, and CPU bf16 matmuls are no faster); else the setting."""
    if setting not in PRECISION_SETTINGS:
        raise ValueError(f"precision must be one of {PRECISION_SETTINGS}, got {setting!r}")
    if setting == "auto":
        return "bf16" if use_gpu else "fp32"
    return setting  # type: ignore[return-value]


@dataclass(frozen=True)
class ModuleDtypes:
    """The dtype each part of the VLM is built in (loaded straight into it: no fp32 copy first)."""

    llm: torch.dtype
    vision: torch.dtype
    adapter: torch.dtype


def module_dtypes(
    precision: Precision, *, deepspeed: bool, train_llm: bool, train_vision: bool
) -> ModuleDtypes:
    """Under DeepSpeed bf16 everything is bf16 (the engine holds the fp32 masters); on the plain path what
    trains stays fp32 (it is the master; autocast computes in bf16) and what is frozen is bf16."""
    low = DTYPES[precision]
    if precision == "fp32" or deepspeed:
        return ModuleDtypes(low, low, low)
    return ModuleDtypes(
        llm=torch.float32 if train_llm else low,
        vision=torch.float32 if train_vision else low,
        adapter=torch.float32,
    )


def deepspeed_precision(precision: Precision) -> dict[str, Any]:
    """The config sections that say DeepSpeed's precision (see the module docstring for why `bf16`)."""
    return {"fp16": {"enabled": False}, "bf16": {"enabled": precision == "bf16"}}


def loop_autocast(
    precision: Precision, device: torch.device, *, deepspeed: bool
) -> contextlib.AbstractContextManager[Any]:
    """The context the training loop runs each forward in: autocast to bf16 on the plain path; nothing
    under DeepSpeed, whose engine owns precision (on CUDA it would switch an outer autocast off anyway)."""
    if precision == "fp32" or deepspeed:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])

"""DeepSpeed ZeRO inside the training loop: the config generated from the spec, the engine, its checkpoints."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.train.precision import Precision, deepspeed_precision

# Where a Ray Train checkpoint keeps DeepSpeed's own files (each rank writes its shards; Ray merges them).
DS_DIR = "deepspeed"
DS_TAG = "state"
OFFLOAD_CHOICES = ("none", "optimizer", "optimizer+params")


def resolve_zero(zero: str | int, stage: str, llm_id: str, *, use_gpu: bool) -> int | None:
    """The ZeRO stage a training stage runs with, or None for plain PyTorch (DDP).

    `auto` keeps CPU runs on plain PyTorch (nothing to shard on a laptop, no op to compile) and on GPUs
    follows LLaVA-1.5: ZeRO-2 for stage 1 (only the adapter trains), the LLM's registry stage for stage 2.
    """
    if zero == "off":
        return None
    if zero == "auto":
        if not use_gpu:
            return None
        from core.stages import STAGES

        if STAGES[stage].zero_auto is not None:
            return STAGES[stage].zero_auto
        from core.models.llm import get_llm_spec

        return get_llm_spec(llm_id).deepspeed_stage
    return int(zero)


def deepspeed_config(
    *,
    zero: int,
    micro_batch_size: int,
    accumulation: int,
    hidden_size: int,
    offload: str = "none",
    gradient_clipping: float = 1.0,
    precision: Precision = "fp32",
) -> dict[str, Any]:
    """The DeepSpeed config of a stage: LLaVA-1.5's zero2/zero3(_offload).json with HF's `auto` resolved.

    `precision` bf16 is DeepSpeed's own `bf16` section, as LLaVA-1.5 trains (bf16 parameters and compute,
    fp32 master weights and optimizer states; core.train.precision says why not `torch_autocast`); fp32
    turns both fp16 and bf16 off. The optimizer and scheduler are the loop's (client) ones.
    Bucket sizes follow transformers' resolution of `auto`: hidden^2 to reduce, 0.9 hidden^2 to prefetch,
    10 hidden as the persistence threshold.
    """
    _check_zero(zero, offload)
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": gradient_clipping,
        "zero_optimization": _zero_section(zero, hidden_size, offload),
        **deepspeed_precision(precision),
        # The loop's own AdamW (param groups with the vision tower's learning rate) is a client optimizer.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _check_zero(zero: int, offload: str) -> None:
    """The ZeRO stage and offload a config can have together."""
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"deepspeed.zero must be 0, 1, 2 or 3, got {zero!r}")
    if offload not in OFFLOAD_CHOICES:
        raise ValueError(f"deepspeed.offload must be one of {OFFLOAD_CHOICES}, got {offload!r}")
    if offload == "optimizer+params" and zero != 3:
        raise ValueError(f"deepspeed.offload 'optimizer+params' needs ZeRO-3, this stage runs ZeRO-{zero}")
    if offload != "none" and zero == 0:
        raise ValueError("deepspeed.offload needs ZeRO >= 1: ZeRO-0 keeps no optimizer partition to offload")


def _zero_section(zero: int, hidden_size: int, offload: str) -> dict[str, Any]:
    """`zero_optimization`: LLaVA-1.5's zero2/zero3 files, buckets sized from the hidden size."""
    zero_cfg: dict[str, Any] = {"stage": zero}
    if zero >= 2:
        zero_cfg.update(
            overlap_comm=True,
            contiguous_gradients=True,
            sub_group_size=int(1e9),
            reduce_bucket_size=hidden_size * hidden_size,
        )
    if zero == 3:
        zero_cfg.update(
            stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size),
            stage3_param_persistence_threshold=10 * hidden_size,
            stage3_max_live_parameters=int(1e9),
            stage3_max_reuse_distance=int(1e9),
            stage3_gather_16bit_weights_on_model_save=True,
            # Its "memory efficient linear" replaces torch.nn.functional.linear for the whole process and
            # never puts it back: everything run later in the process (the in-worker evaluation, other
            # stages in a notebook) would compute with it.
            memory_efficient_linear=False,
        )
    if offload != "none":
        zero_cfg["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload == "optimizer+params":
        zero_cfg["offload_param"] = {"device": "cpu", "pin_memory": True}
    return zero_cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: torch.device) -> None:
    """Join the process group Ray Train made, or make a one-process one (tests, notebooks)."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    # DeepSpeed's engine reads these even when it joins an existing group.
    local = str(torch.cuda.current_device()) if device.type == "cuda" else "0"
    for key, value in (("RANK", str(rank)), ("WORLD_SIZE", str(world)), ("LOCAL_RANK", local)):
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def make_optimizer(
    groups: list[dict[str, Any]], lr: float, weight_decay: float, offload: str
) -> torch.optim.Optimizer:
    """AdamW over the parameter groups; DeepSpeed's CPU Adam (AdamW mode) when optimizer states live on CPU."""
    if offload != "none":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=lr, weight_decay=weight_decay, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


class DeepSpeedStepper:
    """Micro-steps through a DeepSpeed engine: it scales by accumulation, clips, steps and zeroes itself."""

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        config: dict[str, Any],
    ) -> None:
        import deepspeed

        self.zero = config["zero_optimization"]["stage"]
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config
        )

    @property
    def module(self) -> nn.Module:
        return self.engine

    def micro_step(self, loss: torch.Tensor) -> float | None:
        """Backward of one micro-batch; at the accumulation boundary also the optimizer step (its lr)."""
        self.engine.backward(loss)
        boundary = self.engine.is_gradient_accumulation_boundary()
        lr = self.scheduler.get_last_lr()[0] if boundary else None
        self.engine.step()
        return lr

    def save(self, directory: Path) -> None:
        """Every rank writes its own shards (optimizer partitions; trainable weights)."""
        self.engine.save_checkpoint(str(Path(directory) / DS_DIR), tag=DS_TAG, exclude_frozen_parameters=True)

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(
            str(Path(directory) / DS_DIR),
            tag=DS_TAG,
            load_module_strict=False,  # frozen weights are not in the checkpoint
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint under {DS_DIR}/{DS_TAG}")

    @contextlib.contextmanager
    def gathered(self, params: Sequence[nn.Parameter]) -> Iterator[None]:
        """Full values of `params` on every rank for the duration (ZeRO-3 partitions them); a collective."""
        if self.zero != 3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
            yield

    def full_state_dict(self, prefix: str) -> dict[str, torch.Tensor] | None:
        """The consolidated weights under `prefix` (rank 0; None elsewhere), gathered layer by layer."""
        if self.zero != 3:
            return None
        state = self.engine._zero3_consolidated_16bit_state_dict()
        if state is None:
            return None
        return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}

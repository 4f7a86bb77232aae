"""How a stage's process group is set up: Ray Train's TorchConfig with the trial's collective timeout."""

from __future__ import annotations

from typing import Any

from core.config import ResourcesConfig


def torch_config(resources: ResourcesConfig) -> Any:
    """Ray Train's TorchConfig: its `timeout_s` is the process group's, the time a rank waits in a
    collective (NCCL or gloo) before the stage fails; `resources.nccl_timeout_minutes` sets it, so a
    rank 0 writing a large model to slow storage while the others wait at the barrier is not killed."""
    from ray.train.torch import TorchConfig

    return TorchConfig(timeout_s=int(resources.nccl_timeout_minutes * 60))

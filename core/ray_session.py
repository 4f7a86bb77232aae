"""The Ray session seagrid's steps run in: a local one started on demand, or $RAY_ADDRESS joined."""

from __future__ import annotations

import os
from typing import Any


def ensure_ray(num_cpus: int | None = None) -> None:
    """Start a local Ray session (or join $RAY_ADDRESS) unless one is already up in this process."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": os.environ.get("SEAGRID_RAY_LOGS") == "1",
    }
    if not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
        # Locally the workers share this virtualenv; Ray's `uv run` hook would copy the working tree
        # and build a second environment for every worker process (many seconds per trial).
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        from ray._private import ray_constants

        # Ray reads the variable once, at import; honour it even when ray was imported before us.
        ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] not in (
            "0",
            "false",
        )
    env = {
        k: os.environ[k]
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "SEAGRID_CACHE")
        if k in os.environ
    }
    ray.init(runtime_env={"env_vars": env} if env else None, **kwargs)

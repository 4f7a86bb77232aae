"""The Ray session seagrid's steps run in: a new local one, or an existing cluster joined ($SEAGRID_RAY)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, Literal, get_args

RayMode = Literal["auto", "local", "existing"]
MODE_ENV = "SEAGRID_RAY"
MODES: dict[str, str] = {
    "auto": "join $RAY_ADDRESS or the live cluster `ray start` left on this machine, else start a local one",
    "local": "always start a new local session (ignores $RAY_ADDRESS and any running cluster)",
    "existing": "join $RAY_ADDRESS or the live cluster `ray start` left on this machine; fail if there is none",
}
assert set(MODES) == set(get_args(RayMode))

# What every worker needs from the driver's environment: offline switches, the cache, and the Hub's
# credentials and locations (gated models: Llama-3, Mistral, Gemma). Values are never logged.
FORWARDED_ENV = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "SEAGRID_CACHE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HOME",
    "HF_ENDPOINT",
    "HF_HUB_CACHE",
    "TRANSFORMERS_CACHE",
    "SEAGRID_TEST_STALL",  # core/train/stall_hook.py: a test holds a stage's reports back once
)
# Set by `ray job submit`: the job's runtime_env, which Ray refuses to merge with ours on equal keys.
_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_PROBE_TIMEOUT_S = 1.0


def resolve_mode(mode: str | None = None) -> RayMode:
    """``mode``, else $SEAGRID_RAY, else ``auto``; an unknown value names the choices."""
    value = (mode or os.environ.get(MODE_ENV) or "auto").strip().lower()
    if value not in MODES:
        choices = "; ".join(f"{k}: {v}" for k, v in MODES.items())
        raise ValueError(f"{MODE_ENV}={value!r} is not a Ray mode; use one of: {choices}")
    return value  # type: ignore[return-value]


def address_file() -> Path:
    """Where `ray start` records the cluster that a bare ``ray.init()`` joins (honours $RAY_TMPDIR)."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def live_local_address() -> str | None:
    """The address in `ray start`'s address file if a GCS answers there; ``None`` if absent or stale."""
    try:
        address = address_file().read_text().strip()
    except OSError:
        return None
    return address if address and _reachable(address) else None


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def join_target(mode: RayMode) -> str | None:
    """What ``ensure_ray`` would do in ``mode``: an address to join, or ``None`` for a new local session."""
    env_address = os.environ.get("RAY_ADDRESS", "").strip()
    if mode == "local" or env_address == "local":
        return None
    if env_address:
        return env_address
    live = live_local_address()
    if live is None and mode == "existing":
        raise ConnectionError(
            f"{MODE_ENV}=existing but no Ray cluster to join: $RAY_ADDRESS is unset and "
            f"{address_file()} names no live cluster. Start one (`ray start --head`), set RAY_ADDRESS, "
            f"or use {MODE_ENV}=local (or auto) for a new local session."
        )
    return live


def ensure_ray(num_cpus: int | None = None, mode: str | None = None) -> None:
    """Start or join a Ray session (see ``MODES``) unless one is already up in this process.

    ``num_cpus`` sizes a new local session only; a joined cluster keeps its own resources.
    """
    import ray

    if ray.is_initialized():
        return
    target = join_target(resolve_mode(mode))
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": os.environ.get("SEAGRID_RAY_LOGS") == "1",
        "runtime_env": _runtime_env(),
    }
    if target is None:
        _disable_uv_run_hook()
        # "local" rather than None: a bare ray.init() would follow $RAY_ADDRESS or a stale address file.
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kwargs)
    else:
        if _same_cluster(target, live_local_address()):
            _token_auth_as_for_local_cluster()
        # "auto" rather than the address itself: Ray then reads $RAY_ADDRESS or the address file as a
        # bare `ray.init()` would (and a Ray Client "ray://" address works too).
        ray.init(address="auto", **kwargs)


def _same_cluster(address: str, local: str | None) -> bool:
    if local is None:
        return False
    host, _, port = address.rpartition(":")
    local_host, _, local_port = local.rpartition(":")
    return port == local_port and host in (local_host, "127.0.0.1", "localhost")


def _token_auth_as_for_local_cluster() -> None:
    # `ray start --head` turns token authentication on when ~/.ray/auth_token exists, which any earlier
    # local `ray.init()` creates. Ray's driver then sends the token only to a cluster it found itself,
    # never to an explicit address ($RAY_ADDRESS), so joining this machine's cluster by its address would
    # fail "InvalidAuthToken". Apply Ray's own rule for a found local cluster: token mode if a token exists
    # and $RAY_AUTH_MODE is unset. Clusters elsewhere keep Ray's rule (set RAY_AUTH_MODE=token there).
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _runtime_env() -> dict[str, Any] | None:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    for key in _job_env_vars():
        env.pop(key, None)  # the submitted job already sets it for every worker
    return {"env_vars": env} if env else None


def _job_env_vars() -> set[str]:
    raw = os.environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return set()
    runtime_env = json.loads(raw).get("runtime_env") or {}
    return set((runtime_env.get("env_vars") or {}).keys())


def _disable_uv_run_hook() -> None:
    # Locally the workers share this virtualenv; Ray's `uv run` hook would copy the working tree and
    # build a second environment for every worker process (many seconds per trial).
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    from ray._private import ray_constants

    # Ray reads the variable once, at import; honour it even when ray was imported before us.
    ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] not in (
        "0",
        "false",
    )

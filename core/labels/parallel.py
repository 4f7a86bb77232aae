"""How many Ray shards a label extraction uses, and which rows each takes."""

from __future__ import annotations

import sys

import torch

# parallel="auto" shards only datasets this large: below it Ray's start-up and one encoder load per
# worker (tens of seconds) eat most of what the extra GPUs save.
AUTO_MIN_IMAGES = 50_000


def shard_bounds(start: int, stop: int, shards: int, batch_size: int) -> list[tuple[int, int]]:
    """Rows ``start:stop`` cut into at most ``shards`` contiguous ranges of whole batches, as even as can be.

    Cuts fall on ``start + j * batch_size``, so every image is encoded in the same batch as in one
    process (results do not depend on the split); fewer ranges when there are fewer batches than
    ``shards``, none when ``start == stop``.
    """
    for name, value, low in (("start", start, 0), ("shards", shards, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: must be an int >= {low}")
    if isinstance(stop, bool) or not isinstance(stop, int) or stop < start:
        raise ValueError(f"stop={stop!r}: must be an int >= start={start}")
    batches = -(-(stop - start) // batch_size)
    k = min(shards, batches)
    return [
        (start + (j * batches // k) * batch_size, min(stop, start + ((j + 1) * batches // k) * batch_size))
        for j in range(k)
    ]


def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")  # a Ray worker has always imported ray
    return (
        ray is not None and ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    )


def _cluster_gpus() -> int:
    import ray

    from core.ray_session import ensure_ray, join_target, resolve_mode

    # A cluster this process would join (RAY_ADDRESS, or a live local `ray start`) has its own GPUs.
    if ray.is_initialized() or join_target(resolve_mode()) is not None:
        ensure_ray()
        return int(ray.cluster_resources().get("GPU", 0))
    return torch.cuda.device_count()  # what a local session started by ensure_ray would have


def resolve_parallel(parallel: int | str | None, num_images: int) -> int:
    """How many shards ``parallel`` asks for: ``None`` -> 1 (in process), an int ``K >= 1`` -> K.

    ``"auto"``: the number of GPUs of the Ray cluster (of this machine when Ray is not running and
    $RAY_ADDRESS is unset) when there are at least 2 and ``num_images >= AUTO_MIN_IMAGES``, else 1;
    always 1 inside a Ray worker (a trial), whose GPUs the shards would wait for.
    """
    if parallel is None:
        return 1
    if parallel == "auto":
        if num_images < AUTO_MIN_IMAGES or _in_ray_worker():
            return 1
        gpus = _cluster_gpus()
        return gpus if gpus > 1 else 1
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"parallel={parallel!r}: must be None (in process), 'auto' or an int >= 1")
    return parallel

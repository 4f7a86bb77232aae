"""Offline SEA label extraction into a resumable label store, in process or over Ray tasks (REFERENCE 2.1).

The orchestration: addressing is core/labels/address.py, scoring core/labels/scoring.py, the job and
its inputs core/labels/extract_job.py, how many shards core/labels/parallel.py.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from core.cache import is_built
from core.labels.address import (
    dataset_identity,
    image_records,
    resolve_label_encoder,
    store_dir,
    store_identity,
)
from core.labels.extract_job import ExtractJob, ImageRows, collate_images, encode_words
from core.labels.parallel import resolve_parallel, shard_bounds
from core.labels.scoring import select_labels, to_rows
from core.labels.shard_writer import ShardWriter
from core.labels.store import LabelStore
from core.labels.store_format import CHECKABLE, locked, make_meta, read_shards
from core.labels.store_writer import StoreWriter
from core.models.vision import get_encoder_spec
from core.paths import cache_dir, using_cache_dir
from core.steps.materialize import build_dir_once

__all__ = [
    "ExtractJob",
    "dataset_identity",
    "ensure_store",
    "extract_store",
    "image_records",
    "resolve_label_encoder",
    "resolve_parallel",
    "select_labels",
    "shard_bounds",
    "store_dir",
    "store_identity",
]

# The driver's word features for the shards of a sharded extraction (removed when the store is finished).
WORD_FEATURES_FILE = "word_features.npy"
POLL_S = 0.5  # how often the driver refreshes the progress bar of a sharded extraction


def extract_store(
    job: ExtractJob,
    out_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    dataset: Mapping[str, Any] | None = None,
    max_batches: int | None = None,
    parallel: int | str | None = None,
) -> LabelStore | None:
    """Extract SEA labels of every image of a LLaVA JSON into the store at ``out_dir``.

    The encoder's final-layer patch tokens go through its post-norm and projection into the joint
    space (``joint_patch_features``), the words through its text tower (once), and
    :func:`core.sea_labels.extract_labels` keeps the top ``top_n`` per patch. Images are preprocessed with the
    encoder's size, mean and std (``square``: resize the short side, centre-crop).

    Runs under a lock beside ``out_dir``; a finished store is returned as is, an unfinished one resumes
    from its ``progress.json`` (committed after every batch). ``device`` defaults to CUDA when there is
    one. ``on_missing_image="skip"`` leaves a missing image's row empty and lists its id in the store's
    ``missing_ids``. ``max_batches`` stops after that many batches without finishing (returns None): a
    hook for tests and time-boxed jobs. ``dataset`` is the dataset identity recorded in ``meta.json``
    (default: :func:`dataset_identity` of ``json_path``).

    ``parallel`` (see :func:`resolve_parallel`) > 1 cuts the rows still to do into that many shards of
    whole batches (:func:`shard_bounds`) and extracts each in a Ray task (Ray is started or joined by
    ``core.ray_session.ensure_ray`` if needed): one GPU per task when the cluster has GPUs (``device=None``;
    ``"cpu"`` forces CPU tasks, each then gets the cluster's CPUs / shards), else CPU. Each task
    loads the encoder and encodes the words once, writes its rows into the store's arrays and commits
    its own ``progress-<k>.json``; this process holds the lock, shows one progress bar over all
    shards, and folds the shards into ``progress.json`` when all are complete, so the finished store
    is byte-identical to a single-process one. ``max_batches`` then applies to each shard. An
    interrupted sharded extraction resumes its unfinished shards, with the same cuts whatever
    ``parallel`` is now (in this process when it is 1). The store directory must be on a filesystem
    every Ray node sees.
    """
    out_dir = Path(out_dir)
    ids, images = image_records(job.json_path)
    if not ids:
        raise ValueError(f"json_path={job.json_path}: no record has an image, so there is nothing to label")
    shards_wanted = resolve_parallel(parallel, len(ids))
    meta = _store_meta(job, len(ids), dataset)
    with locked(out_dir):
        if is_built(out_dir):
            return LabelStore.open(out_dir, {k: meta[k] for k in CHECKABLE})
        writer = StoreWriter.create_or_resume(out_dir, meta, job.words, ids, images)
        shards = _resumed_or_planned_shards(writer, shards_wanted, job.batch_size)
        _extract_rows(writer, shards, shards_wanted > 1, job, ids, images, device, max_batches, progress)
        if not _finish(writer, bool(shards)):
            return None
    return LabelStore.open(out_dir)


def _store_meta(job: ExtractJob, num_images: int, dataset: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``meta.json`` of the store ``job`` fills (``dataset``: its identity, default the JSON's hash)."""
    return make_meta(
        encoder=job.encoder_id,
        words=job.words,
        dataset=dict(dataset) if dataset is not None else dataset_identity(job.json_path),
        top_n=job.top_n,
        sign="negated" if job.negate else "plain",
        grid=get_encoder_spec(job.encoder_id).grid,
        num_images=num_images,
        score_dtype=job.score_dtype,
    )


def _resumed_or_planned_shards(writer: StoreWriter, wanted: int, batch_size: int) -> list[dict[str, Any]]:
    """An interrupted extraction's shards, else new ones when ``wanted`` > 1 and the rows left allow."""
    shards = writer.shards()
    if not shards and wanted > 1:
        bounds = shard_bounds(writer.done, writer.stop, wanted, batch_size)
        if len(bounds) > 1:  # one shard would be this process's work with Ray's start-up on top
            writer.plan_shards(bounds)
            shards = writer.shards()
    return shards


def _extract_rows(
    writer: StoreWriter,
    shards: list[dict[str, Any]],
    over_ray: bool,
    job: ExtractJob,
    ids: list[str],
    images: list[str],
    device: str | torch.device | None,
    max_batches: int | None,
    progress: bool,
) -> None:
    """The rows still to do: the unfinished shards over Ray (`over_ray`), else here, shard by shard."""
    out_dir = writer.path
    with _progress_bar(job.encoder_id, len(ids), progress) as bar:
        task = bar.add_task("extract", total=len(ids), completed=writer.done + _shard_rows(shards))
        todo = [s["shard"] for s in shards if s["done"] < s["stop"]]
        if todo and over_ray:
            _write_word_features(job, out_dir, device)
            _run_shards_ray(
                out_dir,
                todo,
                job,
                ids,
                images,
                device=device,
                max_batches=max_batches,
                on_poll=lambda: bar.update(
                    task, completed=writer.done + _shard_rows(_read_shards_quietly(out_dir))
                ),
            )
        elif todo or writer.done < writer.stop:
            _run_here(
                writer,
                todo if shards else None,
                job,
                ids,
                images,
                device=device,
                max_batches=max_batches,
                on_rows=lambda n: bar.advance(task, n),
            )


def _finish(writer: StoreWriter, sharded: bool) -> bool:
    """Fold complete shards in and mark the store finished; False while rows are left."""
    if sharded:
        if any(s["done"] < s["stop"] for s in writer.shards()):
            return False
        writer.merge_shards()
    if writer.done < writer.stop:
        return False
    writer.finish()
    # Only the extraction reads them; a finished store is the same with or without shards.
    (writer.path / WORD_FEATURES_FILE).unlink(missing_ok=True)
    return True


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _progress_bar(encoder_id: str, total: int, progress: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(f"labels {encoder_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    )


def _shard_rows(shards: Sequence[Mapping[str, Any]]) -> int:
    return sum(int(s["done"]) - int(s["start"]) for s in shards)


def _read_shards_quietly(out_dir: Path) -> list[dict[str, Any]]:
    try:
        return read_shards(out_dir)
    except ValueError:  # only for the progress display; the merge reads them strictly
        return []


def _load(job: ExtractJob, device: torch.device, out_dir: Path | None = None) -> tuple[Any, torch.Tensor]:
    """The encoder (with its text tower) on ``device`` and the unit word features in its joint space:
    read from ``out_dir``'s ``word_features.npy`` when the driver wrote it, else encoded here."""
    from core.models.encoder_loading import load_encoder

    tower = load_encoder(job.encoder_id, path=job.encoder_path, text_tower=True).to(device)
    stored = _read_word_features(out_dir, len(job.words)) if out_dir is not None else None
    if stored is not None:
        return tower, stored.to(device)
    with torch.inference_mode():
        return tower, encode_words(tower, job.words)


def _read_word_features(out_dir: Path, count: int) -> torch.Tensor | None:
    path = out_dir / WORD_FEATURES_FILE
    if not path.is_file():
        return None
    features = np.load(path)
    if features.ndim != 2 or features.shape[0] != count:
        raise ValueError(
            f"{path}: shape {features.shape}, expected ({count}, dim) for this store's word list; delete it "
            "(it is rebuilt from the encoder) and run again"
        )
    return torch.from_numpy(features)


def _write_word_features(job: ExtractJob, out_dir: Path, device: str | torch.device | None) -> None:
    """Encode the word list once for every shard (a 4M-word list costs each shard minutes otherwise)."""
    if (out_dir / WORD_FEATURES_FILE).is_file():
        return
    from core.models.encoder_loading import load_encoder

    here = torch.device(device if device is not None else _default_device())
    tower = load_encoder(job.encoder_id, path=job.encoder_path, text_tower=True).to(here)
    with torch.inference_mode():
        features = encode_words(tower, job.words).cpu().numpy()
    partial = out_dir / f"{WORD_FEATURES_FILE}.tmp"
    with partial.open("wb") as handle:
        np.save(handle, features)
    partial.replace(out_dir / WORD_FEATURES_FILE)


def _fill(
    writer: StoreWriter | ShardWriter,
    tower: Any,
    word_features: torch.Tensor,
    device: torch.device,
    job: ExtractJob,
    ids: Sequence[str],
    images: Sequence[str],
    *,
    max_batches: int | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> int:
    """Encode rows ``writer.done:writer.stop``, committing each batch; returns the number of batches run."""
    spec = get_encoder_spec(job.encoder_id)
    rows = ImageRows(ids, images, job.image_root, writer.done, writer.stop, spec, job.skip_missing)
    loader = DataLoader(
        rows, batch_size=job.batch_size, num_workers=job.num_workers, collate_fn=collate_images
    )
    m, top_n = spec.num_patches, job.top_n
    scorer = job.scorer(device)
    ran = 0
    with torch.inference_mode():
        for pixels, present in itertools.islice(loader, max_batches):
            count = pixels.shape[0]
            index = torch.full((count, m, top_n), -1, dtype=torch.int64)
            score = torch.zeros((count, m, top_n), dtype=torch.float32)
            if present.any():
                feats = tower.joint_patch_features(pixels[present].to(device))
                if feats.shape[1] != m:
                    raise RuntimeError(
                        f"encoder {job.encoder_id!r} gave {feats.shape[1]} patch tokens, its spec grid "
                        f"{spec.grid} says {m}"
                    )
                got_index, got_score = scorer(feats.float(), word_features)
                index[present], score[present] = got_index.cpu(), got_score.cpu()
            start = writer.done
            writer.write(start, *to_rows(index, score, job.score_dtype))
            missing = [ids[start + k] for k in range(count) if not present[k]]
            writer.commit(start + count, missing)
            ran += 1
            if on_rows is not None:
                on_rows(count)
    return ran


def _run_here(
    writer: StoreWriter,
    shards: Sequence[int] | None,
    job: ExtractJob,
    ids: Sequence[str],
    images: Sequence[str],
    *,
    device: str | torch.device | None,
    max_batches: int | None,
    on_rows: Callable[[int], None],
) -> None:
    """Extract here: the rows after ``writer.done`` (``shards=None``), else those shards in turn."""
    here = torch.device(device if device is not None else _default_device())
    tower, word_features = _load(job, here)
    budget = max_batches
    for k in shards if shards is not None else [None]:
        if budget is not None and budget <= 0:
            break
        part = contextlib.nullcontext(writer) if k is None else ShardWriter.open(writer.path, k)
        with part as w:
            ran = _fill(w, tower, word_features, here, job, ids, images, max_batches=budget, on_rows=on_rows)
        budget = None if budget is None else budget - ran


def _extract_shard(
    out_dir: str,
    shard: int,
    job: ExtractJob,
    ids: list[str],
    images: list[str],
    cache: str,
    device: str,
    cpus: int,
    max_batches: int | None,
) -> int:
    """Ray task: extract shard ``shard`` of the store at ``out_dir`` from where it stopped; rows done."""
    if device == "cpu":
        torch.set_num_threads(cpus)
    here = torch.device(device)
    # Tiny encoders are built in, and read from, the driver's cache.
    with using_cache_dir(cache), ShardWriter.open(out_dir, shard) as writer:
        tower, word_features = _load(job, here, Path(out_dir))
        _fill(writer, tower, word_features, here, job, ids, images, max_batches=max_batches)
        return writer.done - writer.start


def _run_shards_ray(
    out_dir: Path,
    todo: Sequence[int],
    job: ExtractJob,
    ids: list[str],
    images: list[str],
    *,
    device: str | torch.device | None,
    max_batches: int | None,
    on_poll: Callable[[], None],
) -> None:
    """Extract shards ``todo`` in Ray tasks, calling ``on_poll`` every ``POLL_S``; a failure raises now."""
    import ray

    from core.ray_session import ensure_ray

    ensure_ray()
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 if device is None else torch.device(device).type == "cuda"
    if use_gpu and not gpus:
        raise ValueError(f"device={device!r}: the Ray cluster has no GPU; use device=None or 'cpu'")
    # A GPU task needs a CPU for itself and one per data-loading worker; CPU tasks share the CPUs.
    cpus = 1 + job.num_workers if use_gpu else max(1, int(resources.get("CPU", 1)) // len(todo))
    remote = ray.remote(_extract_shard)
    ids_ref, images_ref = ray.put(ids), ray.put(images)
    pending = [
        remote.options(name=f"labels-{job.encoder_id}-shard{k}", num_cpus=cpus, num_gpus=int(use_gpu)).remote(
            str(out_dir),
            k,
            job,
            ids_ref,
            images_ref,
            str(cache_dir()),
            "cuda" if use_gpu else "cpu",
            cpus,
            max_batches,
        )
        for k in todo
    ]
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            ray.get(ready)  # a failed shard fails the extraction now; the others' progress is kept
            on_poll()
    finally:
        for ref in pending:
            ray.cancel(ref)


def ensure_store(
    job: ExtractJob,
    *,
    root: str | Path | None = None,
    dataset: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    parallel: int | str | None = None,
) -> LabelStore:
    """The finished store for (encoder, words, dataset, top_n, sign, score dtype), built or resumed if needed.

    Content-addressed under ``root`` (default ``cache_dir()/"labels"``) by :func:`store_identity` and
    built once there by the steps' directory protocol (``core.steps.materialize.build_dir_once``), for
    library use outside a grid; a grid's trials get theirs from their label step (core.pipeline), which
    calls :func:`extract_store` in the step's directory. ``parallel``: ``None`` (the default) extracts in
    this process, ``K`` in K Ray tasks, ``"auto"`` decides by cluster and dataset size
    (:func:`resolve_parallel`); the store is the same either way.
    """
    dataset = dict(dataset) if dataset is not None else dataset_identity(job.json_path)
    identity = store_identity(
        job.encoder_id, job.words, dataset, top_n=job.top_n, negate=job.negate, score_dtype=job.score_dtype
    )
    path = store_dir(root, identity)
    expected = {
        "encoder": job.encoder_id,
        "word_list_hash": identity["word_list_hash"],
        "dataset": dataset,
        "top_n": job.top_n,
        "sign": identity["sign"],
        "grid": get_encoder_spec(job.encoder_id).grid,
        "score_dtype": job.score_dtype,
    }

    def build(out: Path) -> None:
        store = extract_store(job, out, device=device, progress=progress, dataset=dataset, parallel=parallel)
        assert store is not None  # no max_batches: extraction runs to the end or raises

    # The steps' one directory protocol (a store finished before it served here has its `.done`).
    build_dir_once(path.parent, path.name, build, info={"identity": identity}, done=is_built)
    return LabelStore.open(path, expected)

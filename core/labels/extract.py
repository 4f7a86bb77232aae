"""Offline SEA label extraction into a resumable label store, in process or over Ray tasks (REFERENCE 2.1)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from core.cache import is_built
from core.config.identity import content_hash
from core.data.images import preprocess_for
from core.labels.store import (
    CHECKABLE,
    LabelStore,
    ShardWriter,
    StoreWriter,
    locked,
    make_meta,
    read_shards,
)
from core.labels.words import check_words, word_list_hash
from core.models.vision import ENCODERS, get_encoder_spec
from core.paths import cache_dir, using_cache_dir
from core.sea import _acc_dtype, _decode_keys, _ranking_keys, extract_labels

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

TEXT_BATCH = 1024  # words per text-tower forward pass when encoding the word list
# parallel="auto" shards only datasets this large: below it Ray's start-up and one encoder load per
# worker (tens of seconds) eat most of what the extra GPUs save.
AUTO_MIN_IMAGES = 50_000
# The driver's word features for the shards of a sharded extraction (removed when the store is finished).
WORD_FEATURES_FILE = "word_features.npy"
POLL_S = 0.5  # how often the driver refreshes the progress bar of a sharded extraction


def _text_encoders() -> list[str]:
    return sorted(k for k, v in ENCODERS.items() if v.has_text_tower)


def resolve_label_encoder(encoder_id: str, labels_from: str | None = None) -> str:
    """The encoder whose text tower labels ``encoder_id``'s patches (``sea.labels_from``, REFERENCE 2.2).

    ``labels_from=None`` means the encoder labels itself, which needs a text tower; an encoder without
    one (DINOv2) must name a CLIP-like ``labels_from``, whose labels are then moved to its grid.
    """
    spec = get_encoder_spec(encoder_id)
    if labels_from is None:
        if not spec.has_text_tower:
            raise ValueError(
                f"encoder {encoder_id!r} has no text tower, so it cannot label its own patches; set "
                f"sea.labels_from to an encoder with one ({', '.join(_text_encoders())}) and its labels "
                "are transferred onto this encoder's grid"
            )
        return encoder_id
    if not get_encoder_spec(labels_from).has_text_tower:
        raise ValueError(
            f"sea.labels_from={labels_from!r} has no text tower; choose one of {', '.join(_text_encoders())}"
        )
    return labels_from


def image_records(json_path: str | Path) -> tuple[list[str], list[str]]:
    """(sample ids, relative image paths) of the records of a LLaVA JSON that have an image, in order."""
    from core.data.llava_json import load_llava_records  # the one reader and check (core.data)

    ids, images = [], []
    for record in load_llava_records(json_path, "json_path"):
        image = record.get("image")
        if image is None:
            continue
        ids.append(str(record["id"]))
        images.append(image)
    return ids, images


def dataset_identity(json_path: str | Path) -> dict[str, Any]:
    """Default dataset identity: the sha256 of the JSON file, so a changed file gets a new store.

    Image files are not hashed (too slow for 558K images); they are taken to be immutable per path.
    """
    digest = hashlib.sha256()
    with open(json_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"json_sha256": digest.hexdigest()}


def store_identity(
    encoder_id: str,
    words: Sequence[str],
    dataset: Mapping[str, Any],
    *,
    top_n: int = 10,
    negate: bool = True,
    score_dtype: str = "float32",
) -> dict[str, Any]:
    """What defines a label store's content (paths, devices and batch sizes do not)."""
    return {
        "step": "labels",
        "encoder": encoder_id,
        "word_list_hash": word_list_hash(words),
        "dataset": dict(dataset),
        "top_n": int(top_n),
        "sign": "negated" if negate else "plain",
        "score_dtype": score_dtype,
    }


def store_dir(root: str | Path | None, identity: Mapping[str, Any]) -> Path:
    """``root/labels-<encoder>-<hash of identity>``; root defaults to ``cache_dir()/"labels"``."""
    base = Path(root) if root is not None else cache_dir() / "labels"
    return base / f"labels-{identity['encoder']}-{content_hash(dict(identity))}"


@dataclass(frozen=True)
class ExtractJob:
    """One extraction: what labels are computed from and how (shipped to the Ray workers as is).

    ``encoder_id`` labels the images of the LLaVA JSON ``json_path`` (files under ``image_root``) with
    the top ``top_n`` of ``words`` per patch (``negate``: SEA's -cos sign); ``batch_size`` images per
    forward pass, ``chunk_size`` words scored at once, ``num_workers`` image-decoding processes;
    ``on_missing_image="skip"`` leaves a missing image's row empty (listed in ``missing_ids``).
    """

    encoder_id: str
    words: tuple[str, ...]
    json_path: Path
    image_root: Path
    top_n: int = 10
    negate: bool = True
    batch_size: int = 32
    encoder_path: str | None = None
    chunk_size: int | None = None
    # Scoring memory per batch: an exact chunk of words is cut to fit (a 4M-word list against 32 x 576
    # patches in one chunk would be 300 GB of float32 scores alone).
    budget_bytes: int = 1 << 30
    score_dtype: str = "float32"
    num_workers: int = 0
    on_missing_image: str = "fail"
    # "exact": every word scored in float64 (`extract_labels`); a fast dtype picks candidates with that
    # matmul and rescores them exactly (`select_labels`, equal results); "auto": bfloat16 on CUDA, else exact.
    scoring: str = "auto"

    def __post_init__(self) -> None:
        if not get_encoder_spec(self.encoder_id).has_text_tower:
            resolve_label_encoder(self.encoder_id)  # raises, pointing at sea.labels_from
        object.__setattr__(self, "words", tuple(check_words(self.words)))
        object.__setattr__(self, "json_path", Path(self.json_path))
        object.__setattr__(self, "image_root", Path(self.image_root))
        if self.encoder_path is not None:
            object.__setattr__(self, "encoder_path", str(self.encoder_path))
        bs = self.batch_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise ValueError(f"batch_size={bs!r}: must be an int >= 1")
        if self.on_missing_image not in ("fail", "skip"):
            raise ValueError(f"on_missing_image={self.on_missing_image!r}: must be 'fail' or 'skip'")
        if self.scoring not in ("auto", "exact", *_FAST_DTYPES):
            allowed = ", ".join(("auto", "exact", *_FAST_DTYPES))
            raise ValueError(f"scoring={self.scoring!r}: unknown; allowed: {allowed}")

    def scorer(
        self, device: torch.device
    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The function scoring a batch of patch features against the word features on `device`."""
        fast = self.scoring
        if fast == "auto":
            fast = "bfloat16" if device.type == "cuda" else "exact"
        if fast == "exact":
            return lambda feats, words: extract_labels(
                feats,
                words,
                top_n=self.top_n,
                negate=self.negate,
                chunk_size=exact_chunk(feats.shape[0] * feats.shape[1], self.chunk_size, self.budget_bytes),
            )
        return lambda feats, words: select_labels(feats, words, self.top_n, negate=self.negate, fast=fast)

    @property
    def skip_missing(self) -> bool:
        return self.on_missing_image == "skip"


class _Images(Dataset):
    """Preprocessed images of rows ``start:stop``; a missing file may give zeros and ``present=False``."""

    def __init__(
        self,
        ids: Sequence[str],
        images: Sequence[str],
        root: Path,
        start: int,
        stop: int,
        spec: Any,
        skip_missing: bool,
    ) -> None:
        self.ids, self.images, self.root, self.start, self.stop = ids, images, root, start, stop
        self.size, self.spec = spec.image_size, spec
        self.skip_missing = skip_missing

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int) -> tuple[torch.Tensor, bool]:
        row = self.start + k
        path = self.root / self.images[row]
        if not path.is_file():
            if self.skip_missing:
                return torch.zeros(3, self.size, self.size), False
            raise FileNotFoundError(
                f"sample {self.ids[row]!r}: image not found at {path} (on_missing_image='skip' leaves its row empty)"
            )
        try:
            with Image.open(path) as image:
                image.load()
                return preprocess_for(image, self.spec, "square"), True
        except (OSError, UnidentifiedImageError) as err:
            raise OSError(f"sample {self.ids[row]!r}: cannot read image {path} ({err})") from err


def _collate_images(items: list[tuple[torch.Tensor, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([p for p, _ in items]), torch.tensor([ok for _, ok in items], dtype=torch.bool)


def _word_features(tower: Any, words: Sequence[str]) -> torch.Tensor:
    """`[q, e]` float32 text features of `words`, written into one preallocated table.

    Why not a list of batches and `torch.cat`: each kept batch (128 KiB) pinned the heap above the freed
    activations of its forward pass, and the process grew by about 5.7 KB per word (23 GB at 4M words
    before the machine ran out; measured with `bench/label_words_bench.py`).
    """
    out: torch.Tensor | None = None
    for i in range(0, len(words), TEXT_BATCH):
        feats = tower.text_features(list(words[i : i + TEXT_BATCH]), normalize=True)
        if out is None:
            out = torch.empty((len(words), feats.shape[1]), dtype=torch.float32, device=feats.device)
        out[i : i + feats.shape[0]] = feats
        del feats
    assert out is not None, "no words"
    return out


# Unit roundoff of the inputs of a fast matmul ("tf32": float32 inputs on CUDA with TF32 matmuls allowed).
FAST_UNIT_ROUNDOFF: dict[str, float] = {
    "bfloat16": 2.0**-8,
    "float16": 2.0**-11,
    "tf32": 2.0**-11,
    "float32": 2.0**-24,
}
# Candidates per label kept by each fast matmul: enough that almost every patch is certified (bfloat16's
# error bound is ~0.02 at d=768, wider than the gap between the 10th and 40th best of 50K random words).
FAST_CANDIDATES_PER_LABEL: dict[str, int] = {"bfloat16": 16, "float16": 4, "tf32": 4, "float32": 4}
_FAST_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "tf32": torch.float32,
    "float32": torch.float32,
}


def fast_score_error(fast: str, dim: int) -> float:
    """A bound on |fast score - exact score| for unit vectors of `dim` elements.

    Rounding both inputs to the fast dtype changes each product by at most (2u + u^2)|p_i w_i|, which
    sums to at most 2u + u^2 for unit vectors (Cauchy-Schwarz); rounding the output to that dtype adds
    u, and float32 accumulation at most dim * 2^-24. Doubled for safety.
    """
    u = FAST_UNIT_ROUNDOFF[fast]
    return 2 * (3 * u + u * u + dim * 2.0**-24)


# What one (patch, word) entry of an exact chunk holds at once: its float32 score, its int64 ranking key
# and the key arithmetic's temporaries (about 32 bytes: `_chunk_words` doubles this; a 1 GiB budget peaked
# at 1.2 GB in `bench/label_words_bench.py`).
EXACT_BYTES_PER_SCORE = 16


def exact_chunk(rows: int, chunk_size: int | None, budget_bytes: int) -> int:
    """Words per exact-scoring chunk for `rows` patches: `chunk_size` (None: all) cut to the memory budget."""
    bound = _chunk_words(rows, budget_bytes, EXACT_BYTES_PER_SCORE)
    return bound if chunk_size is None else min(chunk_size, bound)


def _chunk_words(rows: int, budget_bytes: int, bytes_per_score: int) -> int:
    # The chunk's score matrix plus topk's working copy of it.
    return max(1, budget_bytes // (2 * rows * bytes_per_score))


def _fast_candidates(
    patches: torch.Tensor, words: torch.Tensor, k: int, fast: str, budget_bytes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fast scores float32 [R, k], word ids int64 [R, k]) of the k best words per row by the fast matmul."""
    dtype = _FAST_DTYPES[fast]
    rows, q = patches.shape[0], words.shape[0]
    step = _chunk_words(rows, budget_bytes, torch.finfo(dtype).bits // 8)
    device = patches.device
    low = patches.to(dtype)
    best_val = torch.empty((rows, 0), dtype=torch.float32, device=device)
    best_idx = torch.empty((rows, 0), dtype=torch.int64, device=device)
    for start in range(0, q, step):
        chunk = words[start : start + step].to(device=device, dtype=dtype)
        values, index = (low @ chunk.T).topk(min(k, chunk.shape[0]), dim=1)
        merged_val = torch.cat([best_val, values.float()], dim=1)
        merged_idx = torch.cat([best_idx, index + start], dim=1)
        best_val, keep = merged_val.topk(min(k, merged_val.shape[1]), dim=1)
        best_idx = merged_idx.gather(1, keep)
    return best_val, best_idx


def _rescore(
    patches: torch.Tensor, words: torch.Tensor, ids: torch.Tensor, budget_bytes: int
) -> torch.Tensor:
    """Exact scores float32 [R, k] of words `ids` [R, k]: one float64 dot per pair, in row blocks."""
    acc = _acc_dtype(patches.device)
    rows, k = ids.shape
    block = max(1, budget_bytes // (k * words.shape[1] * 8))
    out = torch.empty((rows, k), dtype=torch.float32, device=patches.device)
    for start in range(0, rows, block):
        chosen = words[ids[start : start + block].to(words.device)].to(device=patches.device, dtype=acc)
        out[start : start + block] = (
            (patches[start : start + block].to(acc)[:, None, :] * chosen).sum(-1).float()
        )
    return out


def select_labels(
    patch_features: torch.Tensor,
    word_features: torch.Tensor,
    top_n: int,
    *,
    negate: bool = True,
    fast: str = "bfloat16",
    candidates: int | None = None,
    budget_bytes: int = 1 << 30,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`extract_labels` with a fast matmul picking candidates and an exact rescoring of them.

    The `fast` matmul ("bfloat16", "float16", "tf32", "float32") picks `candidates` words per patch
    (default `FAST_CANDIDATES_PER_LABEL[fast] * top_n`), each word chunk's scores bounded by
    `budget_bytes`; the candidates are scored exactly (the float64 dot `extract_labels` re-scores
    with) and ranked by that (ties: lower word index). A patch's result is certified exact when no
    other word can reach its n-th exact score: the candidates' lowest fast score plus
    `fast_score_error` stays below it (or below 0, where nothing is kept). The patches that fail the
    certificate go through `extract_labels` over all words, so the result always equals
    `extract_labels`'s. Same arguments and `(index, score)` as `extract_labels`.
    """
    b, m, d = patch_features.shape
    if fast not in _FAST_DTYPES:
        raise ValueError(f"fast={fast!r}: unknown; allowed: {', '.join(_FAST_DTYPES)}")
    k = min(candidates or FAST_CANDIDATES_PER_LABEL[fast] * top_n, word_features.shape[0])
    if k < top_n and k < word_features.shape[0]:
        raise ValueError(f"candidates={candidates} must be >= top_n={top_n}")
    patches = torch.nn.functional.normalize(patch_features.reshape(b * m, d).float(), dim=-1)
    if negate:
        patches = -patches
    words = torch.nn.functional.normalize(word_features.float(), dim=-1)
    fast_val, ids = _fast_candidates(patches, words, k, fast, budget_bytes)
    exact = _rescore(patches, words, ids, budget_bytes)
    ranked = _ranking_keys(exact, ids).sort(dim=1, descending=True).values[:, :top_n]
    ids, values = _decode_keys(ranked)
    n = ids.shape[1]
    index = torch.full((b * m, top_n), -1, dtype=torch.int64, device=patches.device)
    score = torch.zeros((b * m, top_n), dtype=torch.float32, device=patches.device)
    keep = values > 0
    index[:, :n] = torch.where(keep, ids, -1)
    score[:, :n] = torch.where(keep, values, 0.0)
    if k < words.shape[0]:
        reach = fast_val[:, -1] + fast_score_error(fast, d)  # the most a non-candidate word can score
        doubtful = ~((reach < values[:, -1]) | (reach <= 0))
        if doubtful.any():
            rows = doubtful.nonzero().flatten()
            again = patch_features.reshape(b * m, 1, d)[rows].transpose(0, 1)
            redo_index, redo_score = extract_labels(
                again,
                word_features,
                top_n=top_n,
                negate=negate,
                chunk_size=_chunk_words(len(rows), budget_bytes, 8),
            )
            index[rows], score[rows] = redo_index[0], redo_score[0]
    return index.view(b, m, top_n), score.view(b, m, top_n)


def _to_rows(index: torch.Tensor, score: torch.Tensor, score_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    idx = index.cpu().numpy().astype(np.int32)
    val = score.cpu().numpy().astype(score_dtype)
    # float16 can round a tiny positive score to 0; keep the convention "a label has score > 0".
    empty = val <= 0
    idx[empty] = -1
    val[empty] = 0
    return idx, val


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
    :func:`core.sea.extract_labels` keeps the top ``top_n`` per patch. Images are preprocessed with the
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
    spec = get_encoder_spec(job.encoder_id)
    out_dir = Path(out_dir)
    ids, images = image_records(job.json_path)
    if not ids:
        raise ValueError(f"json_path={job.json_path}: no record has an image, so there is nothing to label")
    shards_wanted = resolve_parallel(parallel, len(ids))
    meta = make_meta(
        encoder=job.encoder_id,
        words=job.words,
        dataset=dict(dataset) if dataset is not None else dataset_identity(job.json_path),
        top_n=job.top_n,
        sign="negated" if job.negate else "plain",
        grid=spec.grid,
        num_images=len(ids),
        score_dtype=job.score_dtype,
    )
    with locked(out_dir):
        if is_built(out_dir):
            return LabelStore.open(out_dir, {k: meta[k] for k in CHECKABLE})
        writer = StoreWriter.create_or_resume(out_dir, meta, job.words, ids, images)
        shards = writer.shards()
        if not shards and shards_wanted > 1:
            bounds = shard_bounds(writer.done, writer.stop, shards_wanted, job.batch_size)
            if len(bounds) > 1:  # one shard would be this process's work with Ray's start-up on top
                writer.plan_shards(bounds)
                shards = writer.shards()
        with _progress_bar(job.encoder_id, len(ids), progress) as bar:
            task = bar.add_task("extract", total=len(ids), completed=writer.done + _shard_rows(shards))
            todo = [s["shard"] for s in shards if s["done"] < s["stop"]]
            if todo and shards_wanted > 1:
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
        if shards:
            if any(s["done"] < s["stop"] for s in writer.shards()):
                return None
            writer.merge_shards()
        if writer.done < writer.stop:
            return None
        writer.finish()
        # Only the extraction reads them; a finished store is the same with or without shards.
        (out_dir / WORD_FEATURES_FILE).unlink(missing_ok=True)
    return LabelStore.open(out_dir)


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
    from core.models.towers import load_encoder

    tower = load_encoder(job.encoder_id, path=job.encoder_path, text_tower=True).to(device)
    stored = _read_word_features(out_dir, len(job.words)) if out_dir is not None else None
    if stored is not None:
        return tower, stored.to(device)
    with torch.inference_mode():
        return tower, _word_features(tower, job.words)


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
    from core.models.towers import load_encoder

    here = torch.device(device if device is not None else _default_device())
    tower = load_encoder(job.encoder_id, path=job.encoder_path, text_tower=True).to(here)
    with torch.inference_mode():
        features = _word_features(tower, job.words).cpu().numpy()
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
    rows = _Images(ids, images, job.image_root, writer.done, writer.stop, spec, job.skip_missing)
    loader = DataLoader(
        rows, batch_size=job.batch_size, num_workers=job.num_workers, collate_fn=_collate_images
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
            writer.write(start, *_to_rows(index, score, job.score_dtype))
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

    Content-addressed under ``root`` (default ``cache_dir()/"labels"``) by :func:`store_identity`, for
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
    if not is_built(path):
        store = extract_store(job, path, device=device, progress=progress, dataset=dataset, parallel=parallel)
        assert store is not None  # no max_batches: extraction runs to the end or raises
    return LabelStore.open(path, expected)

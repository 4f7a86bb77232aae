"""Offline SEA label extraction into a content-addressed, resumable label store (REFERENCE.md 2.1)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from core.cache import is_built
from core.data.images import preprocess
from core.labels.store import CHECKABLE, LabelStore, StoreWriter, locked, make_meta
from core.labels.words import check_words, word_list_hash
from core.models.vision import ENCODERS, get_encoder_spec
from core.paths import cache_dir
from core.sea import extract_labels
from grid.identity import content_hash

__all__ = [
    "dataset_identity",
    "ensure_store",
    "extract_store",
    "image_records",
    "resolve_label_encoder",
    "store_dir",
    "store_identity",
]

TEXT_BATCH = 1024  # words per text-tower forward pass when encoding the word list


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
    json_path = Path(json_path)
    try:
        records = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"json_path={json_path}: cannot read a JSON list ({err})") from err
    if not isinstance(records, list):
        raise ValueError(f"json_path={json_path}: expected a JSON list, got {type(records).__name__}")
    ids, images = [], []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{json_path} record #{i}: expected an object with an 'id'")
        image = record.get("image")
        if image is None:
            continue
        if not isinstance(image, str) or not image:
            raise ValueError(
                f"{json_path} record #{i}: 'image' must be a non-empty relative path, got {image!r}"
            )
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


class _Images(Dataset):
    """Preprocessed images of rows ``start..``; a missing file gives zeros and ``present=False`` if allowed."""

    def __init__(
        self, ids: list[str], images: list[str], root: Path, start: int, spec: Any, skip_missing: bool
    ) -> None:
        self.ids, self.images, self.root, self.start = ids, images, root, start
        self.size, self.mean, self.std = spec.image_size, spec.mean, spec.std
        self.skip_missing = skip_missing

    def __len__(self) -> int:
        return len(self.images) - self.start

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
                return preprocess(image, self.size, self.mean, self.std, "square"), True
        except (OSError, UnidentifiedImageError) as err:
            raise OSError(f"sample {self.ids[row]!r}: cannot read image {path} ({err})") from err


def _collate_images(items: list[tuple[torch.Tensor, bool]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([p for p, _ in items]), torch.tensor([ok for _, ok in items], dtype=torch.bool)


def _word_features(tower: Any, words: list[str]) -> torch.Tensor:
    parts = [
        tower.text_features(words[i : i + TEXT_BATCH], normalize=True)
        for i in range(0, len(words), TEXT_BATCH)
    ]
    return torch.cat(parts).float()


def _to_rows(index: torch.Tensor, score: torch.Tensor, score_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    idx = index.cpu().numpy().astype(np.int32)
    val = score.cpu().numpy().astype(score_dtype)
    # float16 can round a tiny positive score to 0; keep the convention "a label has score > 0".
    empty = val <= 0
    idx[empty] = -1
    val[empty] = 0
    return idx, val


def extract_store(
    encoder_id: str,
    words: Sequence[str],
    json_path: str | Path,
    image_root: str | Path,
    out_dir: str | Path,
    *,
    top_n: int = 10,
    negate: bool = True,
    batch_size: int = 32,
    encoder_path: str | Path | None = None,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    score_dtype: str = "float32",
    dataset: Mapping[str, Any] | None = None,
    num_workers: int = 0,
    on_missing_image: str = "fail",
    max_batches: int | None = None,
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
    """
    spec = get_encoder_spec(encoder_id)
    if not spec.has_text_tower:
        resolve_label_encoder(encoder_id)  # raises, pointing at sea.labels_from
    words = check_words(words)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
    if on_missing_image not in ("fail", "skip"):
        raise ValueError(f"on_missing_image={on_missing_image!r}: must be 'fail' or 'skip'")
    out_dir, image_root = Path(out_dir), Path(image_root)
    ids, images = image_records(json_path)
    if not ids:
        raise ValueError(f"json_path={json_path}: no record has an image, so there is nothing to label")
    meta = make_meta(
        encoder=encoder_id,
        words=words,
        dataset=dict(dataset) if dataset is not None else dataset_identity(json_path),
        top_n=top_n,
        sign="negated" if negate else "plain",
        grid=spec.grid,
        num_images=len(ids),
        score_dtype=score_dtype,
    )
    with locked(out_dir):
        if is_built(out_dir):
            return LabelStore.open(out_dir, {k: meta[k] for k in CHECKABLE})
        writer = StoreWriter.create_or_resume(out_dir, meta, words, ids, images)
        if writer.done < len(ids):
            _fill(
                writer,
                spec,
                encoder_id,
                words,
                ids,
                images,
                image_root,
                top_n=top_n,
                negate=negate,
                batch_size=batch_size,
                encoder_path=encoder_path,
                device=device,
                chunk_size=chunk_size,
                progress=progress,
                score_dtype=score_dtype,
                num_workers=num_workers,
                skip_missing=on_missing_image == "skip",
                max_batches=max_batches,
            )
        if writer.done < len(ids):
            return None
        writer.finish()
    return LabelStore.open(out_dir)


def _fill(
    writer: StoreWriter,
    spec: Any,
    encoder_id: str,
    words: list[str],
    ids: list[str],
    images: list[str],
    image_root: Path,
    *,
    top_n: int,
    negate: bool,
    batch_size: int,
    encoder_path: str | Path | None,
    device: str | torch.device | None,
    chunk_size: int | None,
    progress: bool,
    score_dtype: str,
    num_workers: int,
    skip_missing: bool,
    max_batches: int | None,
) -> None:
    """Run the encoder over rows ``writer.done..`` and commit each batch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from core.models.towers import load_encoder

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    tower = load_encoder(encoder_id, path=encoder_path, text_tower=True).to(device)
    rows = _Images(ids, images, image_root, writer.done, spec, skip_missing)
    loader = DataLoader(rows, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate_images)
    m = spec.num_patches
    bar = Progress(
        TextColumn(f"labels {encoder_id}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    )
    with torch.inference_mode(), bar:
        word_features = _word_features(tower, words)
        task = bar.add_task("extract", total=len(ids), completed=writer.done)
        for batches, (pixels, present) in enumerate(loader):
            if max_batches is not None and batches >= max_batches:
                break
            count = pixels.shape[0]
            index = torch.full((count, m, top_n), -1, dtype=torch.int64)
            score = torch.zeros((count, m, top_n), dtype=torch.float32)
            if present.any():
                feats = tower.joint_patch_features(pixels[present].to(device))
                if feats.shape[1] != m:
                    raise RuntimeError(
                        f"encoder {encoder_id!r} gave {feats.shape[1]} patch tokens, its spec grid {spec.grid} "
                        f"says {m}"
                    )
                got_index, got_score = extract_labels(
                    feats.float(), word_features, top_n=top_n, negate=negate, chunk_size=chunk_size
                )
                index[present], score[present] = got_index.cpu(), got_score.cpu()
            start = writer.done
            writer.write(start, *_to_rows(index, score, score_dtype))
            missing = [ids[start + k] for k in range(count) if not present[k]]
            writer.commit(start + count, missing)
            bar.update(task, completed=writer.done)


def ensure_store(
    encoder_id: str,
    words: Sequence[str],
    json_path: str | Path,
    image_root: str | Path,
    *,
    root: str | Path | None = None,
    dataset: Mapping[str, Any] | None = None,
    top_n: int = 10,
    negate: bool = True,
    score_dtype: str = "float32",
    batch_size: int = 32,
    encoder_path: str | Path | None = None,
    device: str | torch.device | None = None,
    chunk_size: int | None = None,
    num_workers: int = 0,
    on_missing_image: str = "fail",
    progress: bool = True,
) -> LabelStore:
    """The finished store for (encoder, words, dataset, top_n, sign, score dtype), built or resumed if needed.

    Content-addressed under ``root`` (default ``cache_dir()/"labels"``) by :func:`store_identity`, so
    every trial and grid that needs the same labels shares one store.
    """
    dataset = dict(dataset) if dataset is not None else dataset_identity(json_path)
    identity = store_identity(encoder_id, words, dataset, top_n=top_n, negate=negate, score_dtype=score_dtype)
    path = store_dir(root, identity)
    expected = {
        "encoder": encoder_id,
        "word_list_hash": identity["word_list_hash"],
        "dataset": dataset,
        "top_n": top_n,
        "sign": identity["sign"],
        "grid": get_encoder_spec(encoder_id).grid,
        "score_dtype": score_dtype,
    }
    if is_built(path):
        return LabelStore.open(path, expected)
    store = extract_store(
        encoder_id,
        words,
        json_path,
        image_root,
        path,
        top_n=top_n,
        negate=negate,
        batch_size=batch_size,
        encoder_path=encoder_path,
        device=device,
        chunk_size=chunk_size,
        progress=progress,
        score_dtype=score_dtype,
        dataset=dataset,
        num_workers=num_workers,
        on_missing_image=on_missing_image,
    )
    assert store is not None  # no max_batches: extraction runs to the end or raises
    return LabelStore.open(path, expected)

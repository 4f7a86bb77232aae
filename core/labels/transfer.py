"""Labels on another encoder's patch grid (REFERENCE.md 2.2): an on-the-fly view or a precomputed store.

Cost of ``core.sea_labels.transfer_labels`` on one CPU thread: ~0.5 ms per image for 8x8 -> 4x4, ~4 ms per
image for CLIP-L's 24x24 -> DINOv2-L's 16x16 (~2.5 ms batched). The latter is about as long as
decoding and resizing the image itself, so a real run precomputes (:func:`transfer_store`, once per
source store and target grid, on GPU when there is one) and the loader then reads a plain store; the
on-the-fly view suits small grids and tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.cache import is_built
from core.config.identity import content_hash
from core.labels.store import LabelStore
from core.labels.store_format import make_meta
from core.labels.store_writer import StoreWriter
from core.sea_labels import transfer_labels
from core.steps.materialize import build_dir_once

__all__ = ["TransferredLabels", "labels_for_grid", "transfer_into", "transfer_store", "transferred_labels"]


def _grid(name: str, grid: Sequence[int]) -> tuple[int, int]:
    if len(grid) != 2 or any(
        isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in grid
    ):
        raise ValueError(f"{name}={grid!r}: must be (h, w) with positive ints")
    return int(grid[0]), int(grid[1])


class TransferredLabels:
    """A read-only view of ``store`` whose rows are moved to ``dst_grid`` by ``transfer_labels`` on access."""

    def __init__(self, store: LabelStore, dst_grid: Sequence[int], top_n: int) -> None:
        self.store = store
        self.grid = _grid("dst_grid", dst_grid)
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            raise ValueError(f"top_n={top_n!r}: must be an int >= 1")
        self.top_n = top_n
        self.path = store.path
        self.words, self.ids, self.images = store.words, store.ids, store.images
        self.missing_ids = store.missing_ids
        self.encoder = store.encoder

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        index, score = self.store[row]
        moved_index, moved_score = transfer_labels(
            torch.from_numpy(index), torch.from_numpy(score), self.store.grid, self.grid, self.top_n
        )
        return moved_index.numpy().astype(np.int32), moved_score.numpy()

    def row_of(self, sample_id: str) -> int:
        return self.store.row_of(sample_id)

    def by_id(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self[self.row_of(sample_id)]


def transferred_labels(store: LabelStore, dst_grid: Sequence[int], top_n: int) -> TransferredLabels:
    """The on-the-fly view of ``store`` on ``dst_grid`` (the source grid is the store's own)."""
    return TransferredLabels(store, dst_grid, top_n)


def transfer_store(
    store: LabelStore,
    dst_grid: Sequence[int],
    top_n: int,
    *,
    root: str | Path | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> LabelStore:
    """Precompute ``store`` moved to ``dst_grid`` into its own store (resumable, reused, content-addressed).

    The result lives beside the source (or under ``root``) in ``labels-<encoder>-to-<h>x<w>-<hash>``,
    keyed by the source store's directory name (itself a content hash), the target grid and ``top_n``.
    Its ``meta.json`` has the source's encoder, words and dataset, the target ``grid`` and ``top_n``,
    and ``transferred_from`` (source grid and store name).
    """
    dst = _grid("dst_grid", dst_grid)
    identity = {"step": "labels-transfer", "source": store.path.name, "grid": list(dst), "top_n": top_n}
    base = Path(root) if root is not None else store.path.parent
    path = base / f"labels-{store.encoder}-to-{dst[0]}x{dst[1]}-{content_hash(identity)}"
    # The steps' one directory protocol (a store finished before it served here has its `.done`).
    build = lambda out: transfer_into(store, out, dst, top_n, batch_size=batch_size, device=device)  # noqa: E731
    build_dir_once(path.parent, path.name, build, info={"identity": identity}, done=is_built)
    return LabelStore.open(path, _transfer_expected(store, dst, top_n))


def _transfer_meta(store: LabelStore, dst: tuple[int, int], top_n: int) -> dict[str, Any]:
    meta = make_meta(
        encoder=store.encoder,
        words=store.words,
        dataset=store.meta["dataset"],
        top_n=top_n,
        sign=store.meta["sign"],
        grid=dst,
        num_images=len(store),
        score_dtype=store.meta["score_dtype"],
    )
    meta["transferred_from"] = {"grid": list(store.grid), "store": store.path.name}
    return meta


def _transfer_expected(store: LabelStore, dst: tuple[int, int], top_n: int) -> dict[str, Any]:
    meta = _transfer_meta(store, dst, top_n)
    return {k: meta[k] for k in ("encoder", "word_list_hash", "top_n", "grid", "num_images", "sign")}


def transfer_into(
    store: LabelStore,
    path: Path,
    dst_grid: Sequence[int],
    top_n: int,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> LabelStore:
    """Write ``store`` moved to ``dst_grid`` as a store at ``path`` (resumes from its progress; the caller
    holds the lock). Its ``meta.json`` has the source's encoder, words and dataset, the target ``grid``
    and ``top_n``, and ``transferred_from`` (source grid and store name)."""
    dst = _grid("dst_grid", dst_grid)
    meta = _transfer_meta(store, dst, top_n)
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    writer = StoreWriter.create_or_resume(Path(path), meta, store.words, store.ids, store.images)
    src_index, src_score = store._open_arrays()
    n_rows = len(store)
    for start in range(writer.done, n_rows, batch_size):
        stop = min(start + batch_size, n_rows)
        index, score = transfer_labels(
            torch.from_numpy(np.array(src_index[start:stop], dtype=np.int64)).to(dev),
            torch.from_numpy(np.array(src_score[start:stop], dtype=np.float32)).to(dev),
            store.grid,
            dst,
            top_n,
        )
        # Scores here are sums of stored scores; cast to the store dtype like extraction does.
        idx = index.cpu().numpy().astype(np.int32)
        val = score.cpu().numpy().astype(meta["score_dtype"])
        idx[val <= 0], val[val <= 0] = -1, 0
        writer.write(start, idx, val)
        writer.commit(stop)
    writer.missing = list(store.missing_ids)
    writer.finish()
    return LabelStore.open(path, _transfer_expected(store, dst, top_n))


def labels_for_grid(
    store: LabelStore,
    grid: Sequence[int],
    top_n: int | None = None,
    *,
    precompute: bool = True,
    root: str | Path | None = None,
    device: str | torch.device | None = None,
) -> Any:
    """What the trainer reads: ``store`` itself when the grid (and top_n) match, else the moved labels.

    ``precompute=True`` writes the moved labels once (:func:`transfer_store`); False gives the
    on-the-fly :class:`TransferredLabels` view.
    """
    dst = _grid("grid", grid)
    top_n = store.top_n if top_n is None else top_n
    if dst == store.grid and top_n == store.top_n:
        return store
    if precompute:
        return transfer_store(store, dst, top_n, root=root, device=device)
    return TransferredLabels(store, dst, top_n)

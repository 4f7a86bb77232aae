"""A LLaVA dataset whose items also carry their image's SEA labels, and the collate that stacks them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from core.data.llava import LlavaDataset, collate

__all__ = ["LabelRows", "WithLabels", "collate_with_labels", "make_collate_with_labels"]


class LabelRows(Protocol):
    """What :class:`WithLabels` reads: a ``LabelStore``, a ``TransferredLabels`` view, or the like."""

    grid: Any
    top_n: Any
    ids: list[str]
    images: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, row: int) -> tuple[np.ndarray, np.ndarray]: ...


def _align(dataset: LlavaDataset, labels: LabelRows) -> list[int]:
    """The label row of each dataset item (-1 for text-only items).

    The store has one row per image record of the dataset JSON, in file order, and the dataset's
    records are those records minus any it skipped, in the same order: a forward walk matching
    (id, image) pairs aligns them even when ids repeat.
    """
    rows: list[int] = []
    cursor = 0
    where = getattr(labels, "path", "label store")
    for position, record in enumerate(dataset.records):
        image = record.get("image")
        if image is None:
            rows.append(-1)
            continue
        key = (str(record["id"]), image)
        while cursor < len(labels.ids) and (labels.ids[cursor], labels.images[cursor]) != key:
            cursor += 1
        if cursor == len(labels.ids):
            raise ValueError(
                f"{where}: no label row for dataset item {position} (id {key[0]!r}, image {key[1]!r}) of "
                f"{dataset.json_path}; the labels were extracted from another dataset (or another order); "
                "rebuild them for this JSON"
            )
        rows.append(cursor)
        cursor += 1
    return rows


class WithLabels(Dataset):
    """``dataset[i]`` plus ``label_index`` (int64 ``[m, n]``) and ``label_score`` (float32 ``[m, n]``).

    Labels are read by position from the memory-mapped store (a copy of one row, a few KB). A text-only
    item gets all ``-1`` / ``0`` of the same shape, so batches always stack.
    """

    def __init__(self, dataset: LlavaDataset, labels: LabelRows) -> None:
        self.dataset = dataset
        self.labels = labels
        h, w = labels.grid
        self.shape = (int(h) * int(w), int(labels.top_n))
        self.rows = _align(dataset, labels)

    def __len__(self) -> int:
        return len(self.dataset)

    def label_rows(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(label_index int64 [m, n], label_score float32 [m, n])`` of item ``index``."""
        row = self.rows[index]
        if row < 0:
            return torch.full(self.shape, -1, dtype=torch.int64), torch.zeros(self.shape, dtype=torch.float32)
        label_index, label_score = self.labels[row]
        if label_index.shape != self.shape:
            raise ValueError(
                f"{getattr(self.labels, 'path', 'label store')}: row {row} has shape {label_index.shape}, "
                f"expected {self.shape} (grid x top_n)"
            )
        return torch.from_numpy(label_index.astype(np.int64)), torch.from_numpy(
            label_score.astype(np.float32)
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        item["label_index"], item["label_score"] = self.label_rows(index)
        return item


def collate_with_labels(batch: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """:func:`core.data.collate` plus ``label_index`` int64 / ``label_score`` float32 ``[B, m, n]``.

    An item whose labels are None (or absent) gets ``-1`` / ``0``; when no item has labels both are None.
    """
    out = collate(batch, pad_token_id)
    indices: list[torch.Tensor | None] = [item.get("label_index") for item in batch]
    scores: list[torch.Tensor | None] = [item.get("label_score") for item in batch]
    present = {i: x for i, x in enumerate(indices) if x is not None}
    if not present:
        out["label_index"] = out["label_score"] = None
        return out
    first = next(iter(present))
    shape = tuple(present[first].shape)
    for i, index in present.items():
        score = scores[i]
        if tuple(index.shape) != shape or score is None or tuple(score.shape) != shape:
            raise ValueError(
                f"label_index/label_score of item {i} (id {batch[i].get('id')!r}) have shapes "
                f"{tuple(index.shape)}/{None if score is None else tuple(score.shape)}; "
                f"expected {shape} like item {first}"
            )
    out["label_index"] = torch.stack(
        [torch.full(shape, -1, dtype=torch.int64) if x is None else x.to(torch.int64) for x in indices]
    )
    out["label_score"] = torch.stack(
        [torch.zeros(shape, dtype=torch.float32) if x is None else x.to(torch.float32) for x in scores]
    )
    return out


def make_collate_with_labels(pad_token_id: int) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
    """A picklable :func:`collate_with_labels` bound to ``pad_token_id`` (for DataLoader workers)."""
    if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool):
        raise ValueError(
            f"pad_token_id={pad_token_id!r}: must be an int (set tokenizer.pad_token if it is None)"
        )
    return functools.partial(collate_with_labels, pad_token_id=pad_token_id)

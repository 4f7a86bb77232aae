"""Alignment diagnostics of a trained adapter over a labelled dataset (REFERENCE.md section 5)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from core.metrics import LabelRecallCounts, label_recall_counts, nearest_words


@torch.no_grad()
def label_recall(vlm: Any, dataset: Any, word_embeddings: torch.Tensor, *, batch_size: int = 32) -> float:
    """Label recall@1: share of labelled visual tokens whose nearest word (by the LLM's embeddings) is a label.

    `dataset` yields items with `pixel_values`, `has_image` and `label_index` (a core.labels.WithLabels);
    `word_embeddings` are the label embeddings (Eq. 10) of the store's word list, in its order.
    """
    was_training = vlm.training
    vlm.eval()
    total = LabelRecallCounts(0, 0)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=_stack_images)
    for pixels, label_index in loader:
        if pixels is None:
            continue
        visual = vlm.encode_images(pixels)
        nearest, _ = nearest_words(visual.float(), word_embeddings.float())
        total = total + label_recall_counts(nearest, label_index)
    vlm.train(was_training)
    return total.recall


def _stack_images(items: list[dict[str, Any]]) -> tuple[torch.Tensor | None, torch.Tensor]:
    kept = [it for it in items if it.get("has_image") and it.get("pixel_values") is not None]
    if not kept:
        return None, torch.empty(0)
    return torch.stack([it["pixel_values"] for it in kept]), torch.stack([it["label_index"] for it in kept])

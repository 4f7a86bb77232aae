"""SEA semantic labels as a pipeline step: word lists, offline extraction, the label store, grid transfer.

Names are imported on first use (as in core.models), so reading a word list does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ATTRIBUTE_WORDS": "words",
    "DEFAULT_STOP_WORDS": "words",
    "caption_words": "words",
    "read_word_list": "words",
    "word_list_hash": "words",
    "write_word_list": "words",
    "FORMAT_VERSION": "store_format",
    "LabelStore": "store",
    "dataset_identity": "address",
    "ExtractJob": "extract_job",
    "ensure_store": "extract",
    "resolve_parallel": "parallel",
    "shard_bounds": "parallel",
    "extract_store": "extract",
    "image_records": "address",
    "resolve_label_encoder": "address",
    "store_dir": "address",
    "store_identity": "address",
    "TransferredLabels": "transfer",
    "labels_for_grid": "transfer",
    "transfer_store": "transfer",
    "transferred_labels": "transfer",
    "WithLabels": "dataset",
    "collate_with_labels": "dataset",
    "make_collate_with_labels": "dataset",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'core.labels' has no attribute {name!r}")
    return getattr(importlib.import_module(f"core.labels.{_EXPORTS[name]}"), name)

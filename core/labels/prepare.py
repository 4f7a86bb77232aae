"""SEA's label step for a trial: its word list, its label store and the store's view on the trial's grid."""

from __future__ import annotations

from pathlib import Path

from core.config import TrialConfig


def prepare_labels(
    cfg: TrialConfig,
    json_path: Path,
    image_root: Path,
    *,
    progress: bool = False,
    parallel: int | str | None = None,
) -> Path:
    """SEA's label step: the word list, the label store (built once, shared) and its view on the trial's grid.

    ``parallel`` is ``ensure_store``'s: ``None`` extracts in this process, ``K`` in K Ray tasks (one GPU
    each when the cluster has GPUs), ``"auto"`` by cluster and dataset size. Pass it from the driver
    (``just labels``); inside a trial that holds the GPUs, the shards would wait for them.
    """
    from core.labels import caption_words, ensure_store, labels_for_grid, read_word_list
    from core.models.vision import ENCODERS

    sea = cfg.method.sea
    if sea.words.source == "file":
        assert sea.words.path
        words = read_word_list(Path(sea.words.path).expanduser())
    else:
        words = caption_words(json_path, min_count=sea.words.min_count, max_words=sea.words.max_words)
    store = ensure_store(
        sea.labels_from or cfg.model.encoder,
        words,
        json_path,
        image_root,
        top_n=sea.top_n,
        negate=sea.sign == "negated",
        batch_size=sea.label_batch_size,
        chunk_size=sea.label_chunk_words,
        on_missing_image=cfg.data.stage1.on_missing_image,
        progress=progress,
        parallel=parallel,
    )
    view = labels_for_grid(store, ENCODERS[cfg.model.encoder].grid, sea.top_n, precompute=True)
    return Path(view.path)

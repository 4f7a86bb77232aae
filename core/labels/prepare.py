"""SEA's label steps: build a label store (and its transfer to another grid) into a step's directory."""

from __future__ import annotations

from pathlib import Path

from core.config import TrialConfig
from core.pipeline import LABELS, TRANSFER, LabelsStepConfig, TransferStepConfig, label_steps
from core.steps import Step, materialize


def label_words(config: LabelsStepConfig, json_path: Path) -> list[str]:
    """The word list `sea.words.source` builds (core/labels/words.py WORD_SOURCES)."""
    from core.labels.words import WordsRequest, source_words

    words = config.words
    request = WordsRequest(json_path, words.path, words.min_count, words.max_words)
    return source_words(words.source, request)


def build_labels(
    config: LabelsStepConfig, out_dir: Path, *, progress: bool = False, parallel: int | str | None = None
) -> None:
    """The label step's work: extract (or resume) the store in `out_dir`.

    `parallel` is `extract_store`'s: None extracts in this process, K in K Ray tasks (one GPU each when
    the cluster has GPUs), "auto" by cluster and dataset size.
    """
    from core.data.resolve import resolve_dataset
    from core.labels.extract import ExtractJob, extract_store

    json_path, image_root = resolve_dataset(config.data)
    sea, trial = config.trial.method.sea, config.trial
    encoder_path = trial.model.encoder_path if config.encoder == trial.model.encoder else None
    job = ExtractJob(
        config.encoder,
        tuple(label_words(config, json_path)),
        json_path,
        image_root,
        top_n=config.top_n,
        negate=config.sign == "negated",
        batch_size=sea.label_batch_size,
        chunk_size=sea.label_chunk_words,
        encoder_path=encoder_path,
        score_dtype=config.score_dtype,
        on_missing_image=config.data.on_missing_image,
    )
    extract_store(job, out_dir, progress=progress, parallel=parallel)


def build_transfer(config: TransferStepConfig, source_dir: Path, out_dir: Path) -> None:
    """The transfer step's work: the source store moved onto `config.grid` in `out_dir`."""
    from core.labels import LabelStore
    from core.labels.transfer import transfer_into

    transfer_into(LabelStore.open(source_dir), out_dir, config.grid, config.top_n)


def run_label_step(step: Step, root: Path, out_dir: Path, **kwargs) -> None:
    """Materialise-time dispatch by step name (labels or its transfer)."""
    if step.name == LABELS:
        build_labels(step.config, out_dir, **kwargs)
    elif step.name == TRANSFER:
        build_transfer(step.config, step.dep(LABELS).path(root), out_dir)
    else:
        raise ValueError(f"{step.name} is not a label step")


def prepare_labels(
    cfg: TrialConfig,
    root: Path | None = None,
    *,
    progress: bool = False,
    parallel: int | str | None = None,
) -> Path:
    """Materialise a SEA trial's label steps here (in this process) under `root` (default: the cache's
    `steps/`); the directory of the store stage 1 reads."""
    from core.paths import cache_dir

    root = Path(root) if root is not None else cache_dir() / "steps"
    steps = label_steps(cfg)
    if not steps:
        raise ValueError(f"method '{cfg.method.name}' has no SEA labels (or stage 1 is off)")
    for step in steps:
        materialize(
            step,
            root,
            lambda out, step=step: run_label_step(step, root, out, progress=progress, parallel=parallel),
        )
    return steps[-1].path(root)

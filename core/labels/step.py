"""SEA's label steps: their configs and the functions that build a label store (and its transfer)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field

from core.config import NOT_IDENTITY, DatasetConfig, Strict, WordsConfig
from core.steps import StepContext, TrialRuntime

LABELS, TRANSFER = "labels", "labels-transfer"


class LabelsStepConfig(Strict):
    """What defines a label store: the labelling encoder, the word list, the dataset, top-n and sign;
    and how to extract it (not identity: batch and chunk sizes, Ray shards, the encoder's local path)."""

    encoder: str
    words: WordsConfig
    data: DatasetConfig
    top_n: int
    sign: str
    score_dtype: str = "float32"
    encoder_path: str | None = Field(None, json_schema_extra=NOT_IDENTITY)
    batch_size: int = Field(32, json_schema_extra=NOT_IDENTITY)
    chunk_words: int | None = Field(None, json_schema_extra=NOT_IDENTITY)
    parallel: int | Literal["auto"] | None = Field(None, json_schema_extra=NOT_IDENTITY)


class TransferStepConfig(Strict):
    """A label store moved onto another encoder's patch grid (REFERENCE.md 2.2)."""

    grid: tuple[int, int]
    top_n: int


def label_words(config: LabelsStepConfig, json_path: Path) -> list[str]:
    """The word list `sea.words.source` builds (core/labels/words.py WORD_SOURCES)."""
    from core.labels.word_sources import WordsRequest, source_words

    words = config.words
    request = WordsRequest(json_path, words.path, words.min_count, words.max_words)
    return source_words(words.source, request)


def build_labels(config: LabelsStepConfig, deps: Mapping[str, Path], out_dir: Path, ctx: StepContext) -> None:
    """The label step's function: extract (or resume) the store in `out_dir`, in this process or over
    `config.parallel` Ray tasks (`extract_store`'s `parallel`)."""
    from core.data.resolve import resolve_dataset
    from core.labels.extract import extract_store
    from core.labels.extract_job import ExtractJob

    json_path, image_root = resolve_dataset(config.data)
    job = ExtractJob(
        config.encoder,
        tuple(label_words(config, json_path)),
        json_path,
        image_root,
        top_n=config.top_n,
        negate=config.sign == "negated",
        batch_size=config.batch_size,
        chunk_size=config.chunk_words,
        encoder_path=config.encoder_path,
        score_dtype=config.score_dtype,
        on_missing_image=config.data.on_missing_image,
    )
    extract_store(job, out_dir, progress=ctx.runtime.progress, parallel=config.parallel)


def labels_in_task(config: LabelsStepConfig, runtime: TrialRuntime) -> bool:
    """One Ray task extracts, unless `parallel` asks for shards: then the caller coordinates them."""
    from core.data.resolve import resolve_dataset
    from core.labels.address import image_records
    from core.labels.parallel import resolve_parallel

    json_path, _ = resolve_dataset(config.data)
    return resolve_parallel(config.parallel, len(image_records(json_path)[0])) == 1


def build_transfer(
    config: TransferStepConfig, deps: Mapping[str, Path], out_dir: Path, ctx: StepContext
) -> None:
    """The transfer step's function: the label store moved onto `config.grid` in `out_dir`."""
    from core.labels import LabelStore
    from core.labels.transfer import transfer_into

    transfer_into(LabelStore.open(deps[LABELS]), out_dir, config.grid, config.top_n)


def always_in_task(config: object, runtime: TrialRuntime) -> bool:
    """Run in a Ray task holding one worker's resources."""
    return True

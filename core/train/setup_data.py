"""A stage's data on this worker: its dataset and collate function, the step plan, the resumable batch order, the loader."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from core.config import METHODS_WITH_SEA
from core.train.job import StageJob

if TYPE_CHECKING:
    from core.methods.context import BuildContext
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM

Collate = Callable[..., dict[str, Any]]


class ResumableSampler(Sampler[int]):
    """A DistributedSampler whose epoch can start part-way, so a resumed run sees the same batches."""

    def __init__(self, inner: DistributedSampler) -> None:
        self.inner = inner
        self.skip = 0

    def start(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.skip :])

    def __len__(self) -> int:
        return len(self.inner) - self.skip


def plan_steps(
    num_samples: int, micro: int, world: int, global_batch: int, epochs: float, max_steps: int | None
) -> tuple[int, int]:
    """(gradient accumulation, optimizer steps) for a stage; fails when the data cannot fill one step."""
    accum = global_batch // (micro * world)
    steps_per_epoch = (num_samples // (micro * world)) // accum
    if steps_per_epoch == 0:
        raise ValueError(
            f"the dataset has {num_samples} samples, fewer than one global batch of {global_batch}; "
            "lower the stage's global_batch_size or add data"
        )
    total = math.ceil(epochs * steps_per_epoch)
    return accum, min(total, max_steps) if max_steps else total


def build_data(job: StageJob, vlm: VLM, tokenizer: Tokenizer, rank: int) -> tuple[Any, Collate, BuildContext]:
    """The stage's dataset in its template and image mode, its collate function, and what the method's
    objective needs at build time (the VLM; SEA: the labels of `job.labels_dir`)."""
    from core.data import LlavaDataset, make_collate
    from core.models.llm import get_llm_spec

    cfg, kind = job.trial, job.kind
    data_cfg = kind.dataset(cfg)
    enc = vlm.vision.spec
    dataset = LlavaDataset(
        job.json_path,
        job.image_root,
        tokenizer,
        kind.template(cfg, get_llm_spec(cfg.model.llm).chat_template),
        image_size=enc.image_size,
        mean=enc.mean,
        std=enc.std,
        image_mode=kind.image_mode,
        resize=enc.resize,
        crop_pct=enc.crop_pct,
        on_missing_image=data_cfg.on_missing_image,
        max_unsupervised_fraction=data_cfg.max_unsupervised_fraction,
    )
    if kind.sea_applies and cfg.method.name in METHODS_WITH_SEA:
        if not job.labels_dir:
            raise ValueError(
                f"{job.stage} of a '{cfg.method.name}' trial needs its label step's store (job.labels_dir); "
                "the trial's step graph (core.pipeline.trial_steps) materialises it before training"
            )
        return _sea_context(Path(job.labels_dir), dataset, vlm, tokenizer, cfg.seed * 1000 + rank)
    # With several ranks a text-only micro-batch still runs the tower and adapter, so every rank calls the
    # same modules (ZeRO-3's gathers, DDP's reduction); core.data.llava.collate.
    shape = (3, enc.image_size, enc.image_size) if cfg.resources.num_workers > 1 else None
    return dataset, make_collate(tokenizer.pad_token_id, shape), {"vlm": vlm}


def _sea_context(
    labels_dir: Path, dataset: Any, vlm: VLM, tokenizer: Tokenizer, seed: int
) -> tuple[Any, Collate, BuildContext]:
    """SEA's labelled dataset, its collate function and the objective's build context."""
    from core.labels import LabelStore, WithLabels, make_collate_with_labels
    from core.sea import label_embedding_rows, used_word_ids

    store = LabelStore.open(labels_dir)
    index, _ = store._open_arrays()
    with torch.no_grad():
        rows = label_embedding_rows(
            store.words, used_word_ids(index, len(store.words)), tokenizer, vlm.input_embeddings()
        )
    rows_n, cols_n = vlm.vision.spec.grid
    context: BuildContext = {
        "vlm": vlm,
        "sea": {"word_embeddings": rows, "grid": (rows_n, cols_n), "seed": seed},
    }
    return WithLabels(dataset, store), make_collate_with_labels(tokenizer.pad_token_id), context


def loader_options(
    workers: int | None, pin_memory: bool | None, cpus_per_worker: float, device: torch.device
) -> dict[str, Any]:
    """DataLoader worker and pinning options: the settings, or their defaults (null). The sampler stays
    in this process (workers only fetch the indices it yields), so a resumed epoch's skip still holds."""
    on_gpu = device.type == "cuda"
    if workers is None:
        workers = min(4, max(0, int(cpus_per_worker) - 1)) if on_gpu else 0
    options: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": on_gpu if pin_memory is None else pin_memory,
    }
    if workers:
        options["prefetch_factor"] = 2
    return options


def build_sampler(job: StageJob, dataset: Any, world: int, rank: int, accum: int) -> Any:
    """This rank's batch order, resumable part-way through an epoch: random (`group_by_length: off`), or
    LLaVA's modality- and length-grouped order (`modality`: tokens balanced across the micro-batches of a
    global batch, as LLaVA; `length`: similar lengths share a micro-batch, least padding)."""
    from core.data.sampler import LengthGroupedSampler, modality_lengths

    cfg, mode = job.trial, job.settings.group_by_length
    if mode == "off":
        inner: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        return ResumableSampler(inner)
    records = getattr(dataset, "dataset", dataset).records  # WithLabels wraps the LLaVA dataset
    return LengthGroupedSampler(
        modality_lengths(records),
        micro_batch=job.settings.micro_batch_size,
        num_replicas=world,
        rank=rank,
        accumulation=accum,
        seed=cfg.seed,
        drop_last=True,
        balance=mode == "modality",
    )


def build_loader(
    job: StageJob, dataset: Any, sampler: Any, collate_fn: Collate, device: torch.device
) -> DataLoader:
    """The training DataLoader: micro-batches in the sampler's order, the last incomplete one dropped."""
    settings = job.settings
    return DataLoader(
        dataset,
        batch_size=settings.micro_batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        drop_last=True,
        **loader_options(
            settings.loader_workers, settings.pin_memory, job.trial.resources.cpus_per_worker, device
        ),
    )

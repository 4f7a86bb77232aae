"""The held-out caption set the diagnostics run on: synthetic, or LLaVA-format files with their labels."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from core.config import EvalConfig

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM


@dataclass
class Heldout:
    """Images with their captions (and, when known, per-patch label words), ready for the diagnostics.

    `label_index` `[N, m, n]` (-1 = empty slot) indexes `words`; None when no patch labels are known.
    Tensors stay on the CPU; each diagnostics call moves them to the model's device.
    """

    ids: list[str]
    image_paths: list[Path]
    captions: list[str]
    pixel_values: torch.Tensor  # [N, 3, S, S] float32
    caption_ids: torch.Tensor  # [N, n] long, 0 where padded
    caption_mask: torch.Tensor  # [N, n] bool, True = real token
    words: list[str] | None = None
    label_index: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _captions(captions: Sequence[str], tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption token ids (no special tokens), right-padded, with their mask."""
    ids = tokenizer(list(captions), add_special_tokens=False).input_ids
    for caption, row in zip(captions, ids, strict=True):
        if not row:
            raise ValueError(f"held-out caption {caption!r} has no tokens; TACS needs at least one")
    width = max(len(r) for r in ids)
    out = torch.zeros((len(ids), width), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for i, r in enumerate(ids):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return out, mask


def _load_pixels(paths: Sequence[Path], vlm: VLM) -> torch.Tensor:
    from core.data.images import preprocess_for

    spec = vlm.vision.spec
    tensors = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
                # Square crop as in stage 1, the stage whose alignment these numbers describe.
                tensors.append(preprocess_for(image, spec, "square"))
        except OSError as err:
            raise OSError(f"held-out image {path}: cannot read it ({err})") from err
    return torch.stack(tensors)


def synthetic_heldout(synthetic_dir: str | Path, vlm: VLM, tokenizer: Tokenizer, samples: int) -> Heldout:
    """The held-out captions of a synthetic eval set, with ground-truth colour/shape words per patch."""
    from core.data import synthetic_eval as syn

    root = Path(synthetic_dir)
    records = json.loads((root / syn.HELDOUT_JSON).read_text())[:samples]
    truth = json.loads((root / syn.HELDOUT_OBJECTS).read_text())["samples"]
    if len(records) < samples:
        raise ValueError(
            f"{root / syn.HELDOUT_JSON} has {len(records)} held-out samples, {samples} asked; "
            "build the synthetic eval set with num_heldout >= diagnostics.heldout_samples"
        )
    paths = [root / syn.IMAGES_DIR / r["image"] for r in records]
    captions = [r["conversations"][1]["value"] for r in records]
    words = list(syn.SYNTHETIC_WORDS)
    rows_n, cols_n = vlm.vision.spec.grid
    grid = (rows_n, cols_n)
    rows = []
    for record, path in zip(records, paths, strict=True):
        with Image.open(path) as image:
            rows.append(syn.patch_word_labels(image, truth[record["id"]], grid, words))
    ids, mask = _captions(captions, tokenizer)
    return Heldout(
        ids=[r["id"] for r in records],
        image_paths=paths,
        captions=captions,
        pixel_values=_load_pixels(paths, vlm),
        caption_ids=ids,
        caption_mask=mask,
        words=words,
        label_index=syn.labels_tensor(rows),
    )


def files_heldout(
    json_path: str | Path,
    image_root: str | Path,
    vlm: VLM,
    tokenizer: Tokenizer,
    samples: int,
    *,
    label_store: str | Path | None = None,
    words_file: str | Path | None = None,
) -> Heldout:
    """The first `samples` captioned images of a file (core/evaluation/caption_sets.py: LLaVA JSON,
    image/caption objects, or COCO captions).

    With a label store (SEA labels of the same images on the model's patch grid), label recall uses its
    rows (looked up by sample id) and its word list; otherwise `words_file` supplies the nearest-word
    list, and without either only TACS is computed.
    """
    from core.evaluation.caption_sets import read_caption_set
    from core.labels.store import LabelStore
    from core.labels.words import read_word_list

    records = read_caption_set(json_path, samples)
    paths = [Path(image_root) / image for _, image, _ in records]
    words: list[str] | None = None
    label_index = None
    if label_store is not None:
        store = LabelStore.open(label_store)
        if tuple(store.grid) != tuple(vlm.vision.spec.grid):
            raise ValueError(
                f"diagnostics.label_store={label_store}: labels on a {store.grid} patch grid, the model's "
                f"encoder has {tuple(vlm.vision.spec.grid)}; use labels transferred to this encoder's grid"
            )
        words = list(store.words)
        rows = []
        for sid, _, _ in records:
            try:
                rows.append(torch.from_numpy(store.by_id(sid)[0]).long())
            except KeyError:
                raise ValueError(
                    f"diagnostics.label_store={label_store}: no row for sample id {sid!r}"
                ) from None
        label_index = torch.stack(rows)
    elif words_file is not None:
        words = read_word_list(words_file)
    captions = [c for _, _, c in records]
    ids, mask = _captions(captions, tokenizer)
    return Heldout(
        ids=[sid for sid, _, _ in records],
        image_paths=paths,
        captions=captions,
        pixel_values=_load_pixels(paths, vlm),
        caption_ids=ids,
        caption_mask=mask,
        words=words,
        label_index=label_index,
    )


def load_heldout(
    eval_cfg: EvalConfig, vlm: VLM, tokenizer: Tokenizer, *, synthetic_dir: str | Path | None = None
) -> Heldout:
    """The held-out set an EvalConfig's diagnostics describe (synthetic: generated on first use)."""
    diag = eval_cfg.diagnostics
    if diag.source == "files":
        assert diag.json_path is not None and diag.image_root is not None, "DiagnosticsConfig checks both"
        return files_heldout(
            diag.json_path,
            diag.image_root,
            vlm,
            tokenizer,
            diag.heldout_samples,
            label_store=diag.label_store,
            words_file=diag.words_file,
        )
    if synthetic_dir is None:
        from core.data.synthetic_eval import ensure_synthetic_eval
        from core.evaluation.config import synthetic_spec

        synthetic_dir = ensure_synthetic_eval(synthetic_spec(eval_cfg))
    return synthetic_heldout(synthetic_dir, vlm, tokenizer, diag.heldout_samples)

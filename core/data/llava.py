"""LLaVA-format JSON datasets: validated records, encoded conversations, images, and batch collation."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from core.data.chat import tokenizer_name
from core.data.images import IMAGE_MODES, preprocess
from core.data.llava_cache import lengths_path, load_lengths, save_lengths
from core.data.llava_json import ROLES, check_record, load_llava_records
from core.data.templates import TEMPLATES, Encoded, encode_conversation
from core.models.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer

_validate_record = check_record  # its name before core.data.llava_json became its home
MISSING_IMAGE_POLICIES = ("fail", "skip")
# How many offending sample ids an error message lists.
_SHOWN_IDS = 5


def assert_supervised(encoded: Encoded, sample_id: str) -> None:
    """Raise if no token of the sample is supervised: it would train on nothing, silently."""
    if encoded.num_supervised == 0:
        raise ValueError(
            f"sample {sample_id!r}: every label is IGNORE_INDEX ({len(encoded.labels)} tokens), so it "
            "contributes no loss; check the template and that the sample has a non-empty answer"
        )


def _as_int_list(name: str, values: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(values, torch.Tensor):
        if values.dim() != 1:
            raise ValueError(f"{name}: expected a 1-D sequence, got a tensor of shape {tuple(values.shape)}")
        return [int(v) for v in values.tolist()]
    return [int(v) for v in values]


def supervised_after_truncation(
    input_ids: Sequence[int] | torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    num_visual_tokens: int,
    max_length: int,
) -> bool:
    """Whether a sample still has a label that contributes loss once spliced and truncated.

    Each IMAGE_TOKEN_INDEX in `input_ids` becomes `num_visual_tokens` positions (labels
    IGNORE_INDEX), then the sequence is cut to `max_length`, as the model does. A supervised
    label counts only at spliced positions 1..max_length-1: the causal-LM loss predicts label t
    from the tokens before it, so a label at position 0 never contributes.
    """
    ids, labs = _as_int_list("input_ids", input_ids), _as_int_list("labels", labels)
    if len(ids) != len(labs):
        raise ValueError(
            f"len(input_ids)={len(ids)} != len(labels)={len(labs)}; labels must align (unshifted)"
        )
    if not isinstance(num_visual_tokens, int) or num_visual_tokens < 0:
        raise ValueError(f"num_visual_tokens={num_visual_tokens!r}: must be an int >= 0")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length={max_length!r}: must be an int >= 1")
    images_before = 0
    for position, (token, label) in enumerate(zip(ids, labs, strict=True)):
        if token == IMAGE_TOKEN_INDEX:
            if label != IGNORE_INDEX:
                raise ValueError(
                    f"labels[{position}]={label}: the image placeholder's label must be "
                    f"IGNORE_INDEX ({IGNORE_INDEX})"
                )
            images_before += 1
        elif label != IGNORE_INDEX:
            spliced = position + images_before * (num_visual_tokens - 1)
            if 1 <= spliced < max_length:
                return True
            if spliced >= max_length:
                return False  # positions only grow from here
    return False


def _answers_blank(record: dict[str, Any]) -> bool:
    """Every answer is empty: a template still supervises its end-of-turn token, teaching silence."""
    return all(not turn["value"].strip() for turn in record["conversations"][1::2])


def _check_settings(
    template: str,
    image_mode: str,
    on_missing_image: str,
    max_length: int | None,
    max_unsupervised_fraction: float | None,
    num_visual_tokens: int | None,
) -> None:
    """A ValueError naming the first of :class:`LlavaDataset`'s settings that is not allowed."""
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r}: unknown; allowed: {', '.join(sorted(TEMPLATES))}")
    if image_mode not in IMAGE_MODES:
        raise ValueError(f"image_mode={image_mode!r}: unknown; allowed: {', '.join(IMAGE_MODES)}")
    if on_missing_image not in MISSING_IMAGE_POLICIES:
        raise ValueError(
            f"on_missing_image={on_missing_image!r}: unknown; allowed: {', '.join(MISSING_IMAGE_POLICIES)}"
        )
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length={max_length}: must be >= 1 or None")
    if max_unsupervised_fraction is not None and not 0.0 <= max_unsupervised_fraction <= 1.0:
        raise ValueError(f"max_unsupervised_fraction={max_unsupervised_fraction!r}: must be in [0, 1]")
    if num_visual_tokens is not None and num_visual_tokens < 1:
        raise ValueError(f"num_visual_tokens={num_visual_tokens!r}: must be >= 1 or None")


class LlavaDataset(Dataset):
    """A LLaVA-format JSON list, each item encoded with a template and its image preprocessed.

    Records are validated when the dataset is built, and `check_supervision` encodes every text
    once (no images) to find samples that would contribute no loss. Items are encoded lazily.
    Truncation is not done here: it happens in the model, after the visual tokens are spliced.
    `max_length`, when set, is what the model truncates to: a sample whose supervised tokens all
    fall beyond it once `num_visual_tokens` replace its `<image>` (None: the placeholder counts as
    one token, a lower bound) counts as unsupervised; an item whose text tokens alone exceed it
    raises, since the model's truncation would then cut its supervised tokens.

    `max_unsupervised_fraction`: when set, `__init__` runs `check_supervision`, which tolerates up
    to that share of unsupervised samples (dropped, ids in `unsupervised_ids`) and raises above it.
    None skips that pass: an unsupervised item then raises when it is fetched. Samples skipped for
    a missing image (`on_missing_image="skip"`) are listed in `skipped_ids`.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path,
        tokenizer: Tokenizer,
        template: str,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        image_mode: str = "square",
        max_length: int | None = None,
        on_missing_image: str = "fail",
        max_unsupervised_fraction: float | None = None,
        num_visual_tokens: int | None = None,
        resize: str = "shortest_edge",
        crop_pct: float = 1.0,
    ) -> None:
        _check_settings(
            template, image_mode, on_missing_image, max_length, max_unsupervised_fraction, num_visual_tokens
        )
        self.json_path = Path(json_path).expanduser().absolute()
        self.image_root = Path(image_root).expanduser().absolute()
        self.tokenizer = tokenizer
        self.template = template
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.image_mode = image_mode
        self.resize, self.crop_pct = resize, crop_pct
        self.max_length = max_length
        self.max_unsupervised_fraction = max_unsupervised_fraction
        self.num_visual_tokens = num_visual_tokens

        if not self.json_path.is_file():
            raise FileNotFoundError(
                f"json_path={self.json_path}: no such file; point the dataset's json_path at a LLaVA-format "
                "JSON list (paths are relative to the working directory)"
            )
        # Structure first, for every record, so a malformed file fails before any disk access.
        raw = load_llava_records(self.json_path, "json_path")

        self.records: list[dict[str, Any]] = []
        # Each kept record's index in the JSON list: the key of the token-length cache.
        self._raw_index: list[int] = []
        self._raw_count = len(raw)
        self.skipped_ids: list[str] = []
        self.unsupervised_ids: list[str] = []
        self._keep_records(raw, on_missing_image)
        if max_unsupervised_fraction is not None:
            self.check_supervision()
        if not self.records:
            raise ValueError(
                f"json_path={self.json_path}: no usable sample ({len(raw)} records, "
                f"{len(self.skipped_ids)} skipped for a missing image, "
                f"{len(self.unsupervised_ids)} without a supervised token)"
            )

    def _keep_records(self, raw: list[dict[str, Any]], on_missing_image: str) -> None:
        """Keep the records whose image (if any) exists; skip or fail on the others, as the policy says."""
        for raw_index, record in enumerate(raw):
            if record.get("image") is not None:
                path = self.image_root / record["image"]
                if not path.is_file():
                    if on_missing_image == "skip":
                        self.skipped_ids.append(str(record["id"]))
                        continue
                    raise FileNotFoundError(
                        f"sample {str(record['id'])!r} in {self.json_path}: image not found at {path}; check "
                        "image_root, or set on_missing_image: skip to drop samples whose image is missing"
                    )
            self.records.append(record)
            self._raw_index.append(raw_index)

    def _supervised(self, record: dict[str, Any], encoded: Encoded) -> bool:
        if encoded.num_supervised == 0 or _answers_blank(record):
            return False
        if self.max_length is None:
            return True
        visual = self.num_visual_tokens if record.get("image") is not None and self.num_visual_tokens else 1
        return supervised_after_truncation(encoded.input_ids, encoded.labels, visual, self.max_length)

    def check_supervision(self) -> list[str]:
        """Find, count and drop the samples that would contribute no loss; return their ids.

        Encodes every record's text (no image is read). Raises when their share of the records
        exceeds `max_unsupervised_fraction`, naming how many, the first ids, the template and the
        tokenizer; otherwise drops them and adds their ids to `unsupervised_ids`. Called by
        `__init__` when `max_unsupervised_fraction` is set (None here means 0.0). Also raises,
        naming the sample, on a record the template cannot encode or whose text alone exceeds
        `max_length`.
        """
        tokens, supervised = self._text_lengths()
        keep = [bool(supervised[raw]) for raw in self._raw_index]
        for index, raw in enumerate(self._raw_index):
            if keep[index] and self.max_length is not None and tokens[raw] > self.max_length:
                self._check_text_length(str(self.records[index]["id"]), self._encode_text(index))
        offending = [str(r["id"]) for r, k in zip(self.records, keep, strict=True) if not k]
        total = len(self.records)
        threshold = self.max_unsupervised_fraction or 0.0
        if offending and len(offending) > threshold * total:
            shown = ", ".join(repr(i) for i in offending[:_SHOWN_IDS])
            more = f" and {len(offending) - _SHOWN_IDS} more" if len(offending) > _SHOWN_IDS else ""
            truncation = (
                f" or lose them all to truncation at max_length={self.max_length} "
                f"(num_visual_tokens={self.num_visual_tokens})"
                if self.max_length is not None
                else ""
            )
            raise ValueError(
                f"{len(offending)} of {total} samples ({len(offending) / total:.2%}) in {self.json_path} "
                "have "
                f"no supervised token or only empty answers{truncation} with template {self.template!r} and tokenizer "
                f"{tokenizer_name(self.tokenizer)!r}, above max_unsupervised_fraction="
                f"{threshold}; ids: {shown}{more}. Check that the template matches the "
                "LLM's tokenizer and that max_length leaves room for the answers"
            )
        self.records = [r for r, k in zip(self.records, keep, strict=True) if k]
        self._raw_index = [i for i, k in zip(self._raw_index, keep, strict=True) if k]
        self.unsupervised_ids.extend(offending)
        return offending

    def _text_lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(text tokens, supervised 0/1) per JSON record, from the on-disk cache, encoding only the kept
        records it lacks (a 665K-record file is tokenised once per tokenizer and template, not per
        rank and stage)."""
        extra = (self.max_length, self.num_visual_tokens)
        path = lengths_path(self.json_path, self.tokenizer, self.template, TEMPLATES[self.template], extra)
        tokens, supervised = load_lengths(path, self._raw_count)
        missing = [i for i, raw in enumerate(self._raw_index) if tokens[raw] < 0]
        if not missing or path is None:
            return self._fill_lengths(path, tokens, supervised, missing)
        from core.steps.lease import Lease

        # The ranks of a node start together: one tokenises, the others wait and read its file.
        path.parent.mkdir(parents=True, exist_ok=True)
        with Lease(path.with_name(f".{path.name}.lock")):
            tokens, supervised = load_lengths(path, self._raw_count)
            missing = [i for i, raw in enumerate(self._raw_index) if tokens[raw] < 0]
            return self._fill_lengths(path, tokens, supervised, missing)

    def _fill_lengths(
        self, path: Path | None, tokens: np.ndarray, supervised: np.ndarray, missing: list[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        for index in missing:
            encoded = self._encode_text(index)
            raw = self._raw_index[index]
            tokens[raw] = len(encoded.input_ids)
            supervised[raw] = int(self._supervised(self.records[index], encoded))
        if missing:
            save_lengths(path, tokens, supervised)
        return tokens, supervised

    def __len__(self) -> int:
        return len(self.records)

    def _encode_text(self, index: int) -> Encoded:
        record = self.records[index]
        try:
            return encode_conversation(record["conversations"], self.template, self.tokenizer)
        except ValueError as err:
            raise ValueError(f"sample {str(record['id'])!r} in {self.json_path}: {err}") from err

    def _check_text_length(self, sample_id: str, encoded: Encoded) -> None:
        if self.max_length is not None and len(encoded.input_ids) > self.max_length:
            raise ValueError(
                f"sample {sample_id!r} in {self.json_path}: {len(encoded.input_ids)} text tokens exceed "
                f"max_length={self.max_length} before any visual token is added"
            )

    def encode(self, index: int) -> Encoded:
        """The template's token ids and labels of item `index` (no image loading)."""
        sample_id = str(self.records[index]["id"])
        encoded = self._encode_text(index)
        assert_supervised(encoded, sample_id)
        if _answers_blank(self.records[index]):
            raise ValueError(
                f"sample {sample_id!r} in {self.json_path}: every answer ({ROLES[1]!r} turn) is empty, so it "
                "would teach the model to answer nothing; give the answers, or drop such samples with "
                "max_unsupervised_fraction"
            )
        self._check_text_length(sample_id, encoded)
        return encoded

    def load_image(self, index: int) -> torch.Tensor | None:
        """The preprocessed image of item `index`, or None for a text-only item."""
        record = self.records[index]
        if record.get("image") is None:
            return None
        path = self.image_root / record["image"]
        try:
            with Image.open(path) as image:
                image.load()
                return preprocess(
                    image,
                    self.image_size,
                    self.mean,
                    self.std,
                    self.image_mode,
                    resize=self.resize,
                    crop_pct=self.crop_pct,
                )
        except (OSError, UnidentifiedImageError) as err:
            raise OSError(
                f"sample {str(record['id'])!r} in {self.json_path}: cannot read image {path} ({err}); "
                "replace the file with a valid image or remove the record"
            ) from err

    def __getitem__(self, index: int) -> dict[str, Any]:
        encoded = self.encode(index)
        pixel_values = self.load_image(index)
        return {
            "id": str(self.records[index]["id"]),
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "labels": torch.tensor(encoded.labels, dtype=torch.long),
            "pixel_values": pixel_values,
            "has_image": pixel_values is not None,
        }


def collate(
    batch: Sequence[dict[str, Any]], pad_token_id: int, image_shape: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """Stack dataset items into a right-padded batch.

    Returns `input_ids` [B, L] (padded with `pad_token_id`), `labels` [B, L] (padded with
    IGNORE_INDEX), `attention_mask` [B, L] long (1 = real token; built from lengths, not from
    `input_ids != pad`, because pad may equal a real token such as eos), `pixel_values`
    [B, 3, S, S] with zeros for text-only items or None when no item has an image, `has_image`
    bool [B] and `ids` list[str].
    """
    if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool):
        raise ValueError(
            f"pad_token_id={pad_token_id!r}: must be an int (set tokenizer.pad_token if it is None)"
        )
    if not batch:
        raise ValueError("batch is empty: nothing to collate")
    size, longest = len(batch), max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((size, longest), pad_token_id, dtype=torch.long)
    labels = torch.full((size, longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((size, longest), dtype=torch.long)
    for row, item in enumerate(batch):
        length = len(item["input_ids"])
        input_ids[row, :length] = item["input_ids"]
        labels[row, :length] = item["labels"]
        attention_mask[row, :length] = 1

    images = [item["pixel_values"] for item in batch]
    present = [image for image in images if image is not None]
    pixel_values = None
    if present:
        shapes = {tuple(image.shape) for image in present}
        if len(shapes) != 1:
            raise ValueError(f"pixel_values: items have different shapes {sorted(shapes)}; expected one")
        template = present[0]
        pixel_values = torch.stack([template.new_zeros(template.shape) if i is None else i for i in images])
    elif image_shape is not None:
        # A text-only micro-batch still runs the tower and adapter on zero images (LLaVA's collator does the
        # same): under ZeRO-3 every rank must call the same partitioned modules, or the gathers mismatch and
        # the ranks abort (seen: stage 2 with modality grouping, one rank text-only, gloo SIGABRT).
        pixel_values = torch.zeros((size, *image_shape))
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "pixel_values": pixel_values,
        "has_image": torch.tensor([image is not None for image in images], dtype=torch.bool),
        "ids": [str(item["id"]) for item in batch],
    }


def make_collate(
    pad_token_id: int, image_shape: tuple[int, ...] | None = None
) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
    """A picklable collate function (for DataLoader worker processes) bound to `pad_token_id`; with
    `image_shape`, a micro-batch without any image gets zero images (see `collate`)."""
    if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool):
        raise ValueError(
            f"pad_token_id={pad_token_id!r}: must be an int (set tokenizer.pad_token if it is None)"
        )
    return functools.partial(collate, pad_token_id=pad_token_id, image_shape=image_shape)

"""LLaVA-format JSON datasets: validated records, encoded conversations, images, and batch collation."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from core.data.images import IMAGE_MODES, preprocess
from core.data.templates import DEFAULT_IMAGE_TOKEN, TEMPLATES, Encoded, encode_conversation
from core.models.constants import IGNORE_INDEX

ROLES = ("human", "gpt")
MISSING_IMAGE_POLICIES = ("fail", "skip")


def assert_supervised(encoded: Encoded, sample_id: str) -> None:
    """Raise if no token of the sample is supervised: it would train on nothing, silently."""
    if encoded.num_supervised == 0:
        raise ValueError(
            f"sample {sample_id!r}: every label is IGNORE_INDEX ({len(encoded.labels)} tokens), so it "
            "contributes no loss; check the template and that the sample has a non-empty answer"
        )


def _validate_record(record: Any, index: int, json_path: Path) -> dict[str, Any]:
    """Check one record's structure; errors name the record's index, its id and the file."""
    where = f"{json_path} record #{index}"
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    if "id" not in record:
        raise ValueError(f"{where}: missing 'id'")
    where = f"{json_path} record #{index} (id {str(record['id'])!r})"
    image = record.get("image")
    if image is not None and not (isinstance(image, str) and image):
        raise ValueError(f"{where}: 'image' must be a non-empty relative path, got {image!r}")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: 'conversations' must be a non-empty list, got {turns!r}")
    image_tokens = 0
    for turn_index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError(f"{where}: turn {turn_index} must be an object with a string 'value'")
        expected = ROLES[turn_index % 2]
        if turn.get("from") != expected:
            raise ValueError(
                f"{where}: turn {turn_index} has from={turn.get('from')!r}; expected {expected!r} "
                f"(turns alternate {' / '.join(ROLES)}, starting with {ROLES[0]!r})"
            )
        count = turn["value"].count(DEFAULT_IMAGE_TOKEN)
        if count and turn_index != 0:
            raise ValueError(f"{where}: {DEFAULT_IMAGE_TOKEN!r} may appear only in the first human turn")
        image_tokens += count
    if len(turns) < 2:
        raise ValueError(f"{where}: has no {ROLES[1]!r} turn to supervise")
    if image is not None and image_tokens != 1:
        raise ValueError(
            f"{where}: has an image, so the first human turn needs exactly one {DEFAULT_IMAGE_TOKEN!r}; "
            f"found {image_tokens}"
        )
    if image is None and image_tokens:
        raise ValueError(f"{where}: text-only sample (no 'image') contains {DEFAULT_IMAGE_TOKEN!r}")
    return record


class LlavaDataset(Dataset):
    """A LLaVA-format JSON list, each item encoded with a template and its image preprocessed.

    Records are validated when the dataset is built; conversations are encoded lazily per item.
    Truncation is not done here: it happens in the model, after the visual tokens are spliced.
    `max_length`, when set, is a sanity check only: an item whose text tokens alone exceed it
    raises, since the model's truncation would then cut its supervised tokens.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_root: str | Path,
        tokenizer: Any,
        template: str,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        image_mode: str = "square",
        max_length: int | None = None,
        on_missing_image: str = "fail",
    ) -> None:
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
        self.json_path = Path(json_path).expanduser().absolute()
        self.image_root = Path(image_root).expanduser().absolute()
        self.tokenizer = tokenizer
        self.template = template
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.image_mode = image_mode
        self.max_length = max_length

        try:
            raw = json.loads(self.json_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"json_path={self.json_path}: cannot read a JSON list ({err})") from err
        if not isinstance(raw, list):
            raise ValueError(f"json_path={self.json_path}: expected a JSON list, got {type(raw).__name__}")

        self.records: list[dict[str, Any]] = []
        self.skipped_ids: list[str] = []
        # Structure first, for every record, so a malformed file fails before any disk access.
        validated = [_validate_record(item, index, self.json_path) for index, item in enumerate(raw)]
        for record in validated:
            if record.get("image") is not None:
                path = self.image_root / record["image"]
                if not path.is_file():
                    if on_missing_image == "skip":
                        self.skipped_ids.append(str(record["id"]))
                        continue
                    raise FileNotFoundError(
                        f"sample {str(record['id'])!r} in {self.json_path}: image not found at {path}"
                    )
            self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def encode(self, index: int) -> Encoded:
        """The template's token ids and labels of item `index` (no image loading)."""
        record = self.records[index]
        sample_id = str(record["id"])
        try:
            encoded = encode_conversation(record["conversations"], self.template, self.tokenizer)
        except ValueError as err:
            raise ValueError(f"sample {sample_id!r} in {self.json_path}: {err}") from err
        assert_supervised(encoded, sample_id)
        if self.max_length is not None and len(encoded.input_ids) > self.max_length:
            raise ValueError(
                f"sample {sample_id!r} in {self.json_path}: {len(encoded.input_ids)} text tokens exceed "
                f"max_length={self.max_length} before any visual token is added"
            )
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
                return preprocess(image, self.image_size, self.mean, self.std, self.image_mode)
        except (OSError, UnidentifiedImageError) as err:
            raise OSError(f"sample {str(record['id'])!r}: cannot read image {path} ({err})") from err

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


def collate(batch: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
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
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "pixel_values": pixel_values,
        "has_image": torch.tensor([image is not None for image in images], dtype=torch.bool),
        "ids": [str(item["id"]) for item in batch],
    }


def make_collate(pad_token_id: int) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
    """A picklable collate function (for DataLoader worker processes) bound to `pad_token_id`."""
    if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool):
        raise ValueError(
            f"pad_token_id={pad_token_id!r}: must be an int (set tokenizer.pad_token if it is None)"
        )
    return functools.partial(collate, pad_token_id=pad_token_id)

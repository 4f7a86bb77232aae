"""Image preprocessing for vision encoders: resize/crop or pad to square, then normalise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from core.models.vision import RESIZE_MODES

IMAGE_MODES: tuple[str, ...] = ("square", "pad")


class EncoderPixels(Protocol):
    """The preprocessing facts of an encoder (an EncoderSpec has them all)."""

    # Read-only (properties), so that a frozen dataclass such as EncoderSpec matches.
    @property
    def image_size(self) -> int: ...
    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...
    @property
    def resize(self) -> str: ...
    @property
    def crop_pct(self) -> float: ...


def expand2square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad `image` to a square with `fill`, the original centred (LLaVA's `expand2square`)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), fill)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def _resize_shortest_and_crop(image: Image.Image, size: int, crop_pct: float) -> Image.Image:
    # transformers' get_resize_output_image_size truncates the long side (int), so we do too.
    short_target = round(size / crop_pct)
    width, height = image.size
    if width <= height:
        new_w, new_h = short_target, int(short_target * height / width)
    else:
        new_w, new_h = int(short_target * width / height), short_target
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _to_input_size(image: Image.Image, size: int, resize: str, crop_pct: float) -> Image.Image:
    if resize == "squash":  # SigLIP's processor: both sides to `size`, aspect ratio not kept
        return image.resize((size, size), Image.Resampling.BICUBIC)
    return _resize_shortest_and_crop(image, size, crop_pct)


def _check_stats(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"{name}={values!r}: expected 3 values (one per RGB channel)")
    return float(values[0]), float(values[1]), float(values[2])


def preprocess(
    image: Image.Image,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    mode: str = "square",
    *,
    resize: str = "shortest_edge",
    crop_pct: float = 1.0,
) -> torch.Tensor:
    """A normalised float tensor [3, size, size] from a PIL image, as the encoder's processor makes it.

    `mode` "square" takes the image as it is; "pad" first pads it to a square with the mean colour
    (int(mean * 255), LLaVA-1.5's `pad` aspect ratio), so the padded area is ~0 after normalisation.
    Then the encoder's processor step (bicubic): `resize` "shortest_edge" scales the short side to
    round(size / crop_pct) and centre-crops `size` (CLIP: crop_pct 1; DINOv2: 224/256, i.e. 256 then
    224), "squash" scales both sides to `size` (SigLIP).
    """
    if mode not in IMAGE_MODES:
        raise ValueError(f"mode={mode!r}: unknown; allowed: {', '.join(IMAGE_MODES)}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize={resize!r}: unknown; allowed: {', '.join(RESIZE_MODES)}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct={crop_pct!r}: must be in (0, 1]")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r}: must be a positive int")
    mean3, std3 = _check_stats("mean", mean), _check_stats("std", std)
    if min(std3) <= 0:
        raise ValueError(f"std={std!r}: every value must be > 0")
    image = image.convert("RGB")
    if mode == "pad":
        fill = (int(mean3[0] * 255), int(mean3[1] * 255), int(mean3[2] * 255))
        image = expand2square(image, fill)
    image = _to_input_size(image, size, resize, crop_pct)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean3, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std3, dtype=torch.float32).view(3, 1, 1)
    return ((pixels - mean_t) / std_t).contiguous()


def preprocess_for(image: Image.Image, encoder: EncoderPixels, mode: str = "square") -> torch.Tensor:
    """`preprocess` with every setting from the encoder's registry entry (size, stats, resize, crop)."""
    return preprocess(
        image,
        encoder.image_size,
        encoder.mean,
        encoder.std,
        mode,
        resize=encoder.resize,
        crop_pct=encoder.crop_pct,
    )

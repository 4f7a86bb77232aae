"""Image preprocessing for vision encoders: resize/crop or pad to square, then normalise."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGE_MODES: tuple[str, ...] = ("square", "pad")


def expand2square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Pad `image` to a square with `fill`, the original centred (LLaVA's `expand2square`)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), fill)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def _resize_shortest_and_crop(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


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
) -> torch.Tensor:
    """A normalised float tensor [3, size, size] from a PIL image.

    `square`: resize the shortest side to `size` (bicubic) and centre-crop, as CLIP's processor.
    `pad`: pad to square with the mean colour (int(mean * 255), as LLaVA-1.5's `pad` aspect ratio),
    then resize to `size` (bicubic), so the padded area is ~0 after normalisation.
    """
    if mode not in IMAGE_MODES:
        raise ValueError(f"mode={mode!r}: unknown; allowed: {', '.join(IMAGE_MODES)}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size={size!r}: must be a positive int")
    mean3, std3 = _check_stats("mean", mean), _check_stats("std", std)
    if min(std3) <= 0:
        raise ValueError(f"std={std!r}: every value must be > 0")
    image = image.convert("RGB")
    if mode == "pad":
        fill = (int(mean3[0] * 255), int(mean3[1] * 255), int(mean3[2] * 255))
        image = expand2square(image, fill).resize((size, size), Image.Resampling.BICUBIC)
    else:
        image = _resize_shortest_and_crop(image, size)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean_t = torch.tensor(mean3, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std3, dtype=torch.float32).view(3, 1, 1)
    return ((pixels - mean_t) / std_t).contiguous()

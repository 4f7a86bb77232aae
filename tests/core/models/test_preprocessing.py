"""Each registry encoder's preprocessing equals transformers' image processor for its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BitImageProcessor, CLIPImageProcessor, SiglipImageProcessor
from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from core.data import LlavaDataset
from core.data.images import expand2square, preprocess, preprocess_for
from core.models.tiny_tokenizer import train_tiny_tokenizer
from core.models.vision import ENCODERS, EncoderSpec

# preprocessor_config.json as the real checkpoints ship it on the hub (copied, not derived from our
# registry, so that a wrong registry entry fails here).
SHIPPED: dict[str, tuple[str, dict[str, Any]]] = {
    "clip-l-336": (
        "clip",
        {
            "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 336,
        },
    ),
    "clip-l-224": (
        "clip",
        {
            "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
        },
    ),
    "siglip-so400m-384": (
        "siglip",
        {
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5], "resample": 3, "rescale_factor": 0.00392156862745098,
            "size": {"height": 384, "width": 384},
        },
    ),
    "dinov2-l-224": (
        "bit",
        {
            "crop_size": {"height": 224, "width": 224}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "resample": 3,
            "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 256},
        },
    ),
}  # fmt: skip
# The processor family each encoder kind ships with (open_clip's transform is CLIP's).
FAMILY = {"open_clip": "clip", "hf_clip": "clip", "hf_siglip": "siglip", "hf_dinov2": "bit"}
PIL_BACKEND = {"clip": CLIPImageProcessorPil, "siglip": SiglipImageProcessorPil, "bit": BitImageProcessorPil}
TORCH_BACKEND = {"clip": CLIPImageProcessor, "siglip": SiglipImageProcessor, "bit": BitImageProcessor}
# (width, height): wide, tall, larger than every input size, already square, extreme aspect ratios.
SIZES = [(97, 53), (53, 97), (640, 480), (333, 500), (224, 224), (1000, 90), (61, 400)]


def _tiny_config(spec: EncoderSpec) -> tuple[str, dict[str, Any]]:
    """The processor config a tiny encoder's kind would ship with at its size (tiny ones have no hub entry)."""
    family = FAMILY[spec.kind]
    stats = {"image_mean": list(spec.mean), "image_std": list(spec.std), "resample": 3}
    if family == "siglip":
        return family, {**stats, "size": {"height": spec.image_size, "width": spec.image_size}}
    return family, {**stats, "size": spec.image_size, "crop_size": spec.image_size}


def _config(encoder_id: str) -> tuple[str, dict[str, Any]]:
    spec = ENCODERS[encoder_id]
    return SHIPPED[encoder_id] if spec.hub_id is not None else _tiny_config(spec)


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


def _reference(processor: Any, image: Image.Image, mode: str) -> torch.Tensor:
    if mode == "pad":  # LLaVA-1.5's `pad`: expand2square with the processor's mean colour, then the processor
        image = expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
    return torch.as_tensor(np.asarray(processor(image, return_tensors="pt")["pixel_values"][0]))


def _max_diff(encoder_id: str, backends: dict[str, Any]) -> float:
    family, config = _config(encoder_id)
    processor = backends[family](**config)
    worst = 0.0
    for image in _images():
        for mode in ("square", "pad"):
            ours = preprocess_for(image, ENCODERS[encoder_id], mode)
            ref = _reference(processor, image, mode)
            assert ours.shape == ref.shape, f"{encoder_id} {image.size} {mode}: {ours.shape} vs {ref.shape}"
            worst = max(worst, (ours - ref).abs().max().item())
    return worst


def test_every_real_encoder_has_its_shipped_processor_config() -> None:
    real = {k for k, spec in ENCODERS.items() if spec.hub_id is not None}
    assert real == set(SHIPPED)


@pytest.mark.parametrize("encoder_id", sorted(ENCODERS))
def test_preprocessing_equals_the_pil_processor(encoder_id: str) -> None:
    # The PIL backend is the processor the checkpoints were trained and LLaVA-1.5 was run with
    # (transformers 4's "slow" processor): bicubic PIL resize, so we match it exactly.
    assert _max_diff(encoder_id, PIL_BACKEND) < 1e-6


@pytest.mark.parametrize("encoder_id", sorted(k for k, s in ENCODERS.items() if s.hub_id is not None))
def test_preprocessing_is_close_to_the_torchvision_processor(encoder_id: str) -> None:
    # transformers 5's default backend resizes with torchvision's tensor bicubic (antialiased), which
    # differs from PIL's by a few grey levels on noise images; the geometry (crop, squash) is the same,
    # so a wrong geometry (a crop where SigLIP squashes, no crop for DINOv2) would differ by ~1-2.
    assert _max_diff(encoder_id, TORCH_BACKEND) < 0.25


def test_resize_modes_change_the_pixels() -> None:
    # The registry fields are read: SigLIP's squash and DINOv2's crop differ from a plain centre crop.
    image = _images()[0]
    siglip, dino = ENCODERS["siglip-so400m-384"], ENCODERS["dinov2-l-224"]
    crop = preprocess(image, siglip.image_size, siglip.mean, siglip.std, "square")
    assert (preprocess_for(image, siglip) - crop).abs().max() > 0.5
    plain = preprocess(image, dino.image_size, dino.mean, dino.std, "square")
    assert (preprocess_for(image, dino) - plain).abs().max() > 0.5
    with pytest.raises(ValueError, match="resize='stretch'"):
        preprocess(image, 8, dino.mean, dino.std, resize="stretch")
    with pytest.raises(ValueError, match="crop_pct"):
        preprocess(image, 8, dino.mean, dino.std, crop_pct=1.5)


def test_llava_dataset_preprocesses_as_the_encoder(tmp_path: Path) -> None:
    spec = ENCODERS["siglip-so400m-384"]
    image = _images()[-1]
    image.save(tmp_path / "a.png")
    rows = [{"id": "a", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]}]  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(rows))
    dataset = LlavaDataset(
        tmp_path / "d.json", tmp_path, train_tiny_tokenizer(512, 256), "plain",
        image_size=spec.image_size, mean=spec.mean, std=spec.std, image_mode="pad",
        resize=spec.resize, crop_pct=spec.crop_pct,
    )  # fmt: skip
    processor = PIL_BACKEND["siglip"](**SHIPPED["siglip-so400m-384"][1])
    torch.testing.assert_close(dataset.load_image(0), _reference(processor, image, "pad"), atol=1e-6, rtol=0)

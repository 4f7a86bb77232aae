"""The export's processor: an image processor reproducing the encoder's preprocessing, and the chat template."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from core.data.chat import CHAT_FORMATS, ChatFormat
from core.data.templates import DEFAULT_IMAGE_TOKEN
from core.models.vision import EncoderSpec

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer

# The PIL filter seagrid resizes with for every encoder (core/data/images.py: Image.Resampling.BICUBIC).
BICUBIC = 3


def _resize_kwargs(encoder: EncoderSpec) -> dict[str, Any]:
    """The encoder's resize rule as image-processor settings (registry: EncoderSpec.resize, crop_pct)."""
    side = encoder.image_size
    crop = {"height": side, "width": side}
    if encoder.resize == "squash":
        return {"size": {"height": side, "width": side}, "do_center_crop": False, "crop_size": crop}
    # shortest_edge: the short side goes to image_size / crop_pct, then the centre image_size is kept.
    return {
        "size": {"shortest_edge": round(side / encoder.crop_pct)},
        "do_center_crop": True,
        "crop_size": crop,
    }


def image_processor_kwargs(encoder: EncoderSpec, image_mode: str) -> dict[str, Any]:
    """LlavaImageProcessor settings doing what seagrid does to an image before `encoder`.

    `image_mode` "pad" first pads to a square with the mean colour (LLaVA-1.5's `expand2square`, which
    LlavaImageProcessor's `do_pad` reproduces), "square" does not; then the encoder's resize rule,
    scaling to [0, 1] and normalising with its mean and std.
    """
    if image_mode not in ("pad", "square"):
        raise ValueError(f"image_mode={image_mode!r}: expected 'pad' or 'square'")
    return {
        **_resize_kwargs(encoder),
        "do_resize": True,
        "do_pad": image_mode == "pad",
        "resample": BICUBIC,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(encoder.mean),
        "image_std": list(encoder.std),
        "do_convert_rgb": True,
    }


def _lit(text: str) -> str:
    """`text` as a Jinja string expression (JSON escapes are Jinja string escapes too)."""
    return "{{ " + json.dumps(text) + " }}"


def chat_template(name: str) -> str:
    """A Jinja chat template rendering HF-style messages exactly as seagrid's `ChatFormat` `name` renders
    a conversation (core.data.chat): the preamble once, each user turn with its image moved to the front
    as `<image>\\n` + the text stripped, each assistant answer closed by the end-of-turn marker.

    The bos is not in the template: the tokenizer adds it, exactly when seagrid does. A user turn already
    opens the assistant turn, so `add_generation_prompt` adds nothing. System messages are ignored (each
    format's system prompt is fixed, as in training).
    """
    fmt: ChatFormat = CHAT_FORMATS[name]
    image = json.dumps(DEFAULT_IMAGE_TOKEN + "\n")
    tag = json.dumps(DEFAULT_IMAGE_TOKEN)
    return (
        _lit(fmt.preamble)
        + "{% for message in messages %}"
        # String content (lmms-eval's llava_hf sends "<image>\n..." as text) or HF content items.
        + "{% if message['content'] is string %}"
        + "{% set images = 1 if "
        + tag
        + " in message['content'] else 0 %}"
        + "{% set text = message['content'] | replace("
        + tag
        + ", '') %}"
        + "{% else %}"
        + "{% set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
        + "{% set images = message['content'] | selectattr('type', 'equalto', 'image') | list | length %}"
        + "{% endif %}"
        + "{% if message['role'] == 'user' %}"
        + _lit(fmt.user_prefix)
        + "{% if images > 0 %}{{ "
        + image
        + " + (text | trim) }}{% else %}{{ text }}{% endif %}"
        + _lit(fmt.user_suffix)
        + "{% elif message['role'] == 'assistant' %}"
        + _lit(fmt.answer_prefix)
        + "{{ text }}"
        + _lit(fmt.end_of_turn)
        + _lit(fmt.turn_suffix)
        + "{% endif %}"
        + "{% endfor %}"
    )


def build_processor(
    encoder: EncoderSpec, image_mode: str, tokenizer: Tokenizer, template: str, facts: Any
) -> Any:
    """The LlavaProcessor of the export (tokenizer already holding the image token)."""
    from transformers import LlavaImageProcessor, LlavaProcessor

    # On the tokenizer too: tools that template with the tokenizer alone (lmms-eval's llava_hf) get the trial's.
    tokenizer.chat_template = chat_template(template)
    return LlavaProcessor(
        image_processor=LlavaImageProcessor(**image_processor_kwargs(encoder, image_mode)),
        tokenizer=tokenizer,
        patch_size=facts.patch_size,
        vision_feature_select_strategy=facts.select_strategy,
        chat_template=chat_template(template),
        image_token=DEFAULT_IMAGE_TOKEN,
        num_additional_image_tokens=facts.num_additional_image_tokens,
    )

"""Conversation templates: turn a LLaVA conversation into input ids and labels with the right tokens masked."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.models.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer

DEFAULT_IMAGE_TOKEN = "<image>"

Conversation = Sequence[Mapping[str, str]]
# A template encodes one conversation with a Hugging Face tokenizer.
TemplateFn = Callable[[Conversation, "Tokenizer"], "Encoded"]


@dataclass
class Encoded:
    """Token ids and labels of one sample: same length, labels not shifted, IGNORE_INDEX where ignored.

    The image position holds IMAGE_TOKEN_INDEX in `input_ids` and IGNORE_INDEX in `labels`.
    """

    input_ids: list[int]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(
                f"Encoded: len(input_ids)={len(self.input_ids)} != len(labels)={len(self.labels)}; "
                "labels must be aligned with input_ids (unshifted)"
            )

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def tokenizer_image_token(prompt: str, tokenizer: Tokenizer) -> list[int]:
    """Tokenise `prompt`, replacing each `<image>` by IMAGE_TOKEN_INDEX, as LLaVA's helper of that name.

    Each text chunk is tokenised on its own with the tokenizer's default special tokens; the bos
    that the tokenizer adds to each chunk is kept once, at the very start (a tokenizer that adds no
    bos gets none).
    """
    chunks = [list(tokenizer(chunk).input_ids) for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    add_bos = bos is not None and chunks[0][:1] == [bos]
    ids: list[int] = [bos] if add_bos else []
    for position, chunk in enumerate(chunks):
        if position > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[1:] if add_bos and chunk[:1] == [bos] else chunk)
    return ids


TEMPLATES: dict[str, TemplateFn] = {}


def register_template(name: str) -> Callable[[TemplateFn], TemplateFn]:
    """Decorator adding a template to TEMPLATES under `name`."""

    def add(fn: TemplateFn) -> TemplateFn:
        if name in TEMPLATES:
            raise ValueError(f"template {name!r} is already registered")
        TEMPLATES[name] = fn
        return fn

    return add


@register_template("plain")
def encode_plain(conversations: Conversation, tokenizer: Tokenizer) -> Encoded:
    """LLaVA stage-1 `plain` template: `<image>` + caption + "\\n"; only caption and "\\n" are supervised.

    Follows LLaVA's `preprocess_plain`: the human prompt is discarded, the text is tokenised with
    `tokenizer_image_token` (so a bos is added exactly when the tokenizer adds one by default, e.g.
    Vicuna/LLaMA), and the bos and the image position are masked.
    """
    if len(conversations) != 2:
        raise ValueError(f"plain template: expects exactly 2 turns (human, gpt), got {len(conversations)}")
    human, gpt = conversations
    if human.get("from") != "human" or gpt.get("from") != "gpt":
        raise ValueError(
            f"plain template: turns must be from ('human', 'gpt'), got ({human.get('from')!r}, {gpt.get('from')!r})"
        )
    if DEFAULT_IMAGE_TOKEN not in human.get("value", ""):
        raise ValueError(f"plain template: the human turn must contain {DEFAULT_IMAGE_TOKEN!r}")
    caption = gpt.get("value", "")
    if DEFAULT_IMAGE_TOKEN in caption:
        raise ValueError(f"plain template: the caption must not contain {DEFAULT_IMAGE_TOKEN!r}")
    input_ids = tokenizer_image_token(DEFAULT_IMAGE_TOKEN + caption + "\n", tokenizer)
    prefix = len(tokenizer_image_token(DEFAULT_IMAGE_TOKEN, tokenizer))
    labels = [IGNORE_INDEX] * prefix + input_ids[prefix:]
    return Encoded(input_ids=input_ids, labels=labels)


def encode_conversation(conversations: Conversation, template: str, tokenizer: Tokenizer) -> Encoded:
    """Encode one conversation with the named template (a key of TEMPLATES)."""
    try:
        fn = TEMPLATES[template]
    except KeyError:
        raise ValueError(f"template={template!r}: unknown; allowed: {', '.join(sorted(TEMPLATES))}") from None
    return fn(conversations, tokenizer)

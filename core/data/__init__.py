"""LLaVA-format data: synthetic generator, chat templates and label masking, images, dataset and collation."""

from core.data.chat import CHAT_FORMATS, ChatFormat, conversation_pairs, encode_segments
from core.data.images import IMAGE_MODES, expand2square, preprocess
from core.data.llava import (
    LlavaDataset,
    assert_supervised,
    collate,
    make_collate,
    supervised_after_truncation,
)
from core.data.synthetic import SyntheticSpec, ensure_synthetic, generate
from core.data.synthetic_instruct import InstructSpec, ensure_instruct, generate_instruct
from core.data.templates import (
    DEFAULT_IMAGE_TOKEN,
    TEMPLATES,
    Encoded,
    encode_conversation,
    register_template,
    tokenizer_image_token,
)
from core.models.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

__all__ = [
    "CHAT_FORMATS",
    "ChatFormat",
    "DEFAULT_IMAGE_TOKEN",
    "IGNORE_INDEX",
    "IMAGE_MODES",
    "IMAGE_TOKEN_INDEX",
    "TEMPLATES",
    "Encoded",
    "InstructSpec",
    "LlavaDataset",
    "SyntheticSpec",
    "assert_supervised",
    "collate",
    "conversation_pairs",
    "encode_conversation",
    "encode_segments",
    "ensure_instruct",
    "ensure_synthetic",
    "expand2square",
    "generate",
    "generate_instruct",
    "make_collate",
    "preprocess",
    "register_template",
    "supervised_after_truncation",
    "tokenizer_image_token",
]

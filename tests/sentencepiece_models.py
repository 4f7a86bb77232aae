"""Test helper: tiny sentencepiece models trained here, saved the way Vicuna, Gemma and SigLIP ship them."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

_WORDS = (
    "the a an is in on of and to what which where colour color red green blue yellow circle square star "
    "picture image photo shows there are two three one USER ASSISTANT user model system assistant "
    "chat between curious artificial intelligence gives helpful detailed polite answers questions "
    "answer question word phrase Describe briefly The A It Yes No yes no"
)
WORDS = tuple(_WORDS.split())


def sentences(count: int, seed: int = 0) -> list[str]:
    """`count` generated sentences over WORDS, with digits and punctuation (deterministic)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 999)))
        out.append(" ".join(words) + rng.choice([".", "?", "!", ":", ","]))
    return out


def train(model_type: str = "bpe", vocab_size: int = 400, **options: object) -> bytes:
    """A serialised sentencepiece model trained on `sentences(400)`; Llama's trainer settings by default."""
    settings: dict[str, object] = {
        "model_type": model_type,
        "vocab_size": vocab_size,
        "byte_fallback": True,
        "split_digits": True,
        "add_dummy_prefix": True,
        "remove_extra_whitespaces": False,
        "normalization_rule_name": "identity",
        "allow_whitespace_only_pieces": True,
        "unk_id": 0,
        "bos_id": 1,
        "eos_id": 2,
        "pad_id": -1,
        "minloglevel": 2,
        **options,
    }
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences(400)), model_writer=buffer, **settings)
    return buffer.getvalue()


def without_dummy_prefix(model: bytes) -> bytes:
    """The same model with `add_dummy_prefix` off (no "▁" put before the first word), edited via protobuf."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    proto.normalizer_spec.add_dummy_prefix = False
    return proto.SerializeToString()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def save_llama_tokenizer(out_dir: Path, model: bytes, *, legacy: bool) -> None:
    """As `lmsys/vicuna-7b-v1.5` ships: tokenizer.model, tokenizer_config.json, special_tokens_map.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(model)
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False},
            "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": False},
            "unk_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False, "normalized": False},
            "pad_token": None,
            "clean_up_tokenization_spaces": False,
            "legacy": legacy,
            "model_max_length": 4096,
            "padding_side": "right",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
        },
    )
    _write_json(
        out_dir / "special_tokens_map.json",
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"},
    )


def save_gemma_tokenizer(out_dir: Path, model: bytes) -> None:
    """As Gemma ships its sentencepiece model (no dummy prefix), with the GemmaTokenizer class."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(without_dummy_prefix(model))
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<unk>",
            "clean_up_tokenization_spaces": False,
            "tokenizer_class": "GemmaTokenizer",
        },
    )


def save_siglip_tokenizer(out_dir: Path, model: bytes, model_max_length: int) -> None:
    """As `google/siglip-so400m-patch14-384` ships: spiece.model (eos/pad `</s>`, lower-cased), no tokenizer.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spiece.model").write_bytes(model)
    _write_json(
        out_dir / "tokenizer_config.json",
        {
            "additional_special_tokens": [],
            "do_lower_case": True,
            "eos_token": "</s>",
            "pad_token": "</s>",
            "unk_token": "<unk>",
            "model_max_length": model_max_length,
            "sp_model_kwargs": {},
            "tokenizer_class": "SiglipTokenizer",
        },
    )
    _write_json(
        out_dir / "special_tokens_map.json", {"eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    )


def train_siglip() -> bytes:
    """A unigram model with SigLIP/T5's ids (pad 0, eos 1, unk 2, no bos), lower-case corpus."""
    return train("unigram", 100, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, byte_fallback=False)

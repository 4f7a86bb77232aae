"""Tokenizers as the hub ships them (sentencepiece, no tokenizer.json) load through the registries' paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
import sentencepiece_models as sp_models
import torch

from core.models.encoder_loading import load_encoder
from core.models.llm import load_llm

TEXTS = [
    "What is in the picture?",
    "USER: what colour is the circle? ASSISTANT: The circle is red.</s>USER: and 42? ASSISTANT: blue</s>",
    "two  spaces, digits 2024 and a new\nline",
    "</s>USER: starts with a special token",
]


def _tiny_llama(out_dir: Path, vocab_size: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)


def _reference_ids(model: bytes, text: str, legacy: bool) -> list[int]:
    """sentencepiece's own ids with `<s>` first and each `</s>` as the eos id.

    Text after a `</s>` gets sentencepiece's word-start marker only with `legacy: true` (the old
    slow tokenizer's behaviour); `legacy: false` tokenises it as a continuation.
    """
    first = spm.SentencePieceProcessor(model_proto=model)
    rest = first if legacy else spm.SentencePieceProcessor(model_proto=sp_models.without_dummy_prefix(model))
    ids = [first.bos_id()]
    for index, piece in enumerate(text.split("</s>")):
        if index:
            ids.append(first.eos_id())
        if piece:
            ids.extend((rest if index else first).encode(piece))
    return ids


@pytest.fixture(scope="module")
def llama_spm() -> bytes:
    return sp_models.train()


@pytest.mark.parametrize("legacy", [True, False])
def test_vicuna_style_tokenizer_loads_through_load_llm(
    tmp_path: Path, llama_spm: bytes, legacy: bool
) -> None:
    sp_models.save_llama_tokenizer(tmp_path, llama_spm, legacy=legacy)
    _tiny_llama(tmp_path, vocab_size=spm.SentencePieceProcessor(model_proto=llama_spm).get_piece_size())
    assert not (tmp_path / "tokenizer.json").exists()
    model, tokenizer = load_llm("vicuna-7b", path=tmp_path)
    assert tokenizer.is_fast  # converted from tokenizer.model (offsets are needed by the chat templates)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<s>", "</s>", "<unk>")
    assert tokenizer.padding_side == "right" and tokenizer.model_max_length == 2048
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings
    for text in TEXTS:
        assert tokenizer(text).input_ids == _reference_ids(llama_spm, text, legacy), text
    ids = tokenizer(TEXTS[0], return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_siglip_style_tokenizer_loads_through_load_encoder(tmp_path: Path) -> None:
    from transformers import AutoConfig, SiglipModel

    from core.models.vision import get_encoder_spec

    model = sp_models.train_siglip()
    processor = spm.SentencePieceProcessor(model_proto=model)
    arch = {k: v for k, v in get_encoder_spec("tiny-siglip").arch.items() if k != "model_type"}
    text_config = {**arch["text_config"], "vocab_size": processor.get_piece_size(), "pad_token_id": 1}
    torch.manual_seed(0)
    SiglipModel(AutoConfig.for_model("siglip", **{**arch, "text_config": text_config})).save_pretrained(
        tmp_path
    )
    length = text_config["max_position_embeddings"]
    sp_models.save_siglip_tokenizer(tmp_path, model, model_max_length=length)

    tower = load_encoder("siglip-so400m-384", path=tmp_path)
    words = ["red", "Blue circle", "the picture"]
    tokens = tower._tokenize(words)
    # SigLIP: lower-cased, `</s>` appended, padded with `</s>` to the text tower's full context.
    expected = [processor.encode(w.lower()) + [processor.eos_id()] for w in words]
    assert tokens.tolist() == [ids + [processor.eos_id()] * (length - len(ids)) for ids in expected]
    features = tower.text_features(words)
    assert features.shape[0] == 3 and torch.isfinite(features).all()

"""Tests for core.data.llava_cache: the JSON is parsed once per process, token lengths are cached on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from core.data import IGNORE_INDEX, Encoded, LlavaDataset, encode_conversation
from core.data.llava_cache import lengths_path, load_lengths, parse_json_list, save_lengths
from core.data.templates import TEMPLATES

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
WORDS = ["hi", "red", "blue", "green", "a", "long", "answer", "USER", "ASSISTANT", ":", "\n"]


def _tokenizer(extra_word: str | None = None) -> PreTrainedTokenizerFast:
    vocab = {
        w: i
        for i, w in enumerate(
            ["<unk>", "<s>", "</s>", "<pad>", *WORDS, *([extra_word] if extra_word else [])]
        )
    }
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def _records(answers: list[str]) -> list[dict]:
    return [
        {"id": f"s{k}", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": a}]}
        for k, a in enumerate(answers)
    ]


def _build(json_path: Path, tokenizer, **kwargs) -> LlavaDataset:
    return LlavaDataset(
        json_path, json_path.parent, tokenizer, "answer_only", image_size=8, mean=MEAN, std=STD,
        max_unsupervised_fraction=0.5, **kwargs,
    )  # fmt: skip


def _answer_only(conversations, tok) -> Encoded:
    """Test-local template: prompt masked, answer text supervised, no end-of-turn token."""
    prompt = tok(conversations[0]["value"]).input_ids
    answer = tok(conversations[1]["value"], add_special_tokens=False).input_ids
    return Encoded(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEAGRID_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(TEMPLATES, "answer_only", _answer_only)


def test_json_is_parsed_once_while_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(_records(["red"])))
    first = parse_json_list(path)
    assert parse_json_list(path) is first
    path.write_text(json.dumps(_records(["red", "blue"])))  # a new size: parsed again
    assert len(parse_json_list(path)) == 2


def test_lengths_are_cached_and_equal_a_full_encoding(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(_records(["red", "", "blue green", "a long answer"])))
    tokenizer = _tokenizer()
    dataset = _build(path, tokenizer)
    assert dataset.unsupervised_ids == ["s1"] and len(dataset) == 3
    cache = lengths_path(path, tokenizer, "answer_only", TEMPLATES["answer_only"], (None, None))
    assert cache is not None and cache.is_file() and cache.parent.parent == tmp_path / "cache"
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no lock or partial left
    tokens, supervised = load_lengths(cache, 4)
    expected = [
        len(encode_conversation(r["conversations"], "answer_only", tokenizer).input_ids)
        for r in _records(["red", "", "blue green", "a long answer"])
    ]
    assert tokens.tolist() == expected and supervised.tolist() == [1, 0, 1, 1]

    # The next build reads the file instead of encoding: a planted verdict is what it uses.
    save_lengths(cache, tokens, np.array([1, 0, 0, 1], dtype=np.int8))
    assert _build(path, tokenizer).unsupervised_ids == ["s1", "s2"]


def test_cache_key_follows_file_tokenizer_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(_records(["red"])))
    tokenizer = _tokenizer()
    key = lengths_path(path, tokenizer, "answer_only", TEMPLATES["answer_only"], (None, None))
    assert key == lengths_path(path, _tokenizer(), "answer_only", TEMPLATES["answer_only"], (None, None))
    assert key != lengths_path(
        path, _tokenizer("zebra"), "answer_only", TEMPLATES["answer_only"], (None, None)
    )
    assert key != lengths_path(path, tokenizer, "answer_only", TEMPLATES["answer_only"], (64, 4))
    os.utime(path, ns=(1, 1))
    assert key != lengths_path(path, tokenizer, "answer_only", TEMPLATES["answer_only"], (None, None))


def test_a_torn_cache_file_is_recomputed(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(_records(["red", ""])))
    tokenizer = _tokenizer()
    cache = lengths_path(path, tokenizer, "answer_only", TEMPLATES["answer_only"], (None, None))
    assert cache is not None
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not an npz")
    assert _build(path, tokenizer).unsupervised_ids == ["s1"]
    assert load_lengths(cache, 2)[1].tolist() == [1, 0]


def test_a_malformed_file_fails_every_build(tmp_path: Path) -> None:
    """Validation is skipped only for a parse that passed it: a bad record keeps raising."""
    path = tmp_path / "data.json"
    records = _records(["red", "blue"])
    records[1]["conversations"][1]["from"] = "human"
    path.write_text(json.dumps(records))
    for _ in range(2):
        with pytest.raises(ValueError, match=r"record #1 \(id 's1'\): turn 1 has from='human'"):
            _build(path, _tokenizer())

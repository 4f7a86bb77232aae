"""Tests for the stage-2 chat templates: rendered prompts, supervised tokens, images, segment boundaries."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from core.data import (
    CHAT_FORMATS,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    TEMPLATES,
    encode_conversation,
    encode_segments,
)
from core.models.tiny_tokenizer import train_tiny_tokenizer

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|user|>",
    "<|end|>",
    "<|assistant|>",
    "[INST]",
    "[/INST]",
]
# The bos each template's LLM adds by default; phi3's test tokenizer adds none (the no-bos path).
BOS = {"vicuna_v1": "<s>", "llama3": "<|begin_of_text|>", "gemma": "<bos>", "phi3": None, "mistral": "<s>"}

Q1, A1 = "What is in the picture?", "A red circle."
Q2, A2 = "And the colour of the square?", "It is blue."
QT, AT = "Name a colour.", "Green."

CORPUS = [
    VICUNA_SYSTEM,
    LLAMA3_SYSTEM,
    f"USER: {Q1} ASSISTANT: {A1}",
    f"USER: {Q2} ASSISTANT: {A2}",
    f"user\n{QT}\nmodel\n{AT}\n\n",
    "system assistant user model The the a is in of to and colour square circle blue red green",
]

# Hand-written expected prompts: `<image>` marks the placeholder; bos included.
TWO_ROUNDS = {
    "vicuna_v1": (
        f"<s>{VICUNA_SYSTEM} USER: <image>\n{Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT: {A2}</s>",
        [f" {A1}</s>", f" {A2}</s>"],
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"{LLAMA3_SYSTEM}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n<image>\n{Q1}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A1}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{Q2}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A2}<|eot_id|>",
        [f"{A1}<|eot_id|>", f"{A2}<|eot_id|>"],
    ),
    "gemma": (
        f"<bos><start_of_turn>user\n<image>\n{Q1}<end_of_turn>\n<start_of_turn>model\n{A1}<end_of_turn>\n"
        f"<start_of_turn>user\n{Q2}<end_of_turn>\n<start_of_turn>model\n{A2}<end_of_turn>\n",
        [f"{A1}<end_of_turn>", f"{A2}<end_of_turn>"],
    ),
    "phi3": (
        f"<|user|>\n<image>\n{Q1}<|end|>\n<|assistant|>\n{A1}<|end|>\n"
        f"<|user|>\n{Q2}<|end|>\n<|assistant|>\n{A2}<|end|>\n",
        [f"{A1}<|end|>", f"{A2}<|end|>"],
    ),
    "mistral": (
        f"<s>[INST] <image>\n{Q1} [/INST] {A1}</s>[INST] {Q2} [/INST] {A2}</s>",
        [f" {A1}</s>", f" {A2}</s>"],
    ),
}
TEXT_ONLY = {
    "vicuna_v1": (f"<s>{VICUNA_SYSTEM} USER: {QT} ASSISTANT: {AT}</s>", [f" {AT}</s>"]),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"{LLAMA3_SYSTEM}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{QT}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{AT}<|eot_id|>",
        [f"{AT}<|eot_id|>"],
    ),
    "gemma": (
        f"<bos><start_of_turn>user\n{QT}<end_of_turn>\n<start_of_turn>model\n{AT}<end_of_turn>\n",
        [f"{AT}<end_of_turn>"],
    ),
    "phi3": (f"<|user|>\n{QT}<|end|>\n<|assistant|>\n{AT}<|end|>\n", [f"{AT}<|end|>"]),
    "mistral": (f"<s>[INST] {QT} [/INST] {AT}</s>", [f" {AT}</s>"]),
}
CHAT_TEMPLATES = tuple(TWO_ROUNDS)


def _conversation(*turns: str) -> list[dict[str, str]]:
    return [{"from": ("human", "gpt")[i % 2], "value": value} for i, value in enumerate(turns)]


def _byte_level_bpe(bos: str | None) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 5, trainer)
    if bos is not None:
        bos_id = backend.token_to_id(bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, PreTrainedTokenizerFast]:
    by_bos = {bos: _byte_level_bpe(bos) for bos in set(BOS.values())}
    return {template: by_bos[bos] for template, bos in BOS.items()}


def _decode(tokenizer: PreTrainedTokenizerFast, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _render(tokenizer: PreTrainedTokenizerFast, ids: list[int]) -> str:
    """Decode ids with each IMAGE_TOKEN_INDEX shown as `<image>`."""
    parts, chunk = [], []
    for token in ids:
        if token == IMAGE_TOKEN_INDEX:
            parts += [_decode(tokenizer, chunk), "<image>"]
            chunk = []
        else:
            chunk.append(token)
    return "".join([*parts, _decode(tokenizer, chunk)])


def _supervised_runs(labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive supervised labels."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def _check(
    template: str,
    tokenizer: PreTrainedTokenizerFast,
    conversation: list[dict],
    expected: tuple[str, list[str]],
) -> list[int]:
    prompt, answers = expected
    encoded = encode_conversation(conversation, template, tokenizer)
    ids, labels = encoded.input_ids, encoded.labels
    assert len(ids) == len(labels)
    assert _render(tokenizer, ids) == prompt
    # Every supervised label is the input id at its position (labels are not shifted).
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels, strict=True))
    runs = _supervised_runs(labels)
    assert [_decode(tokenizer, run) for run in runs] == answers
    assert _decode(tokenizer, [t for t in labels if t != IGNORE_INDEX]) == "".join(answers)
    images = [i for i, token in enumerate(ids) if token == IMAGE_TOKEN_INDEX]
    assert len(images) == prompt.count("<image>")
    assert all(labels[i] == IGNORE_INDEX for i in images)
    bos = tokenizer.bos_token_id
    if bos is not None:
        assert ids[0] == bos and labels[0] == IGNORE_INDEX and ids.count(bos) == 1
    return ids


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_two_rounds_with_image(template: str, tokenizers: dict) -> None:
    conversation = _conversation(f"<image>\n{Q1}", A1, Q2, A2)
    ids = _check(template, tokenizers[template], conversation, TWO_ROUNDS[template])
    assert ids.count(IMAGE_TOKEN_INDEX) == 1


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_image_after_the_question_moves_before_it(template: str, tokenizers: dict) -> None:
    # LLaVA's preprocess_multimodal: the turn becomes "<image>\n" + the rest, stripped.
    tokenizer = tokenizers[template]
    after = _conversation(f"{Q1}\n<image>", A1, Q2, A2)
    before = _conversation(f"<image>\n{Q1}", A1, Q2, A2)
    _check(template, tokenizer, after, TWO_ROUNDS[template])
    assert encode_conversation(after, template, tokenizer) == encode_conversation(before, template, tokenizer)


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_text_only(template: str, tokenizers: dict) -> None:
    ids = _check(template, tokenizers[template], _conversation(QT, AT), TEXT_ONLY[template])
    assert IMAGE_TOKEN_INDEX not in ids


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_empty_answer_still_supervises_the_end_of_turn(template: str, tokenizers: dict) -> None:
    tokenizer = tokenizers[template]
    encoded = encode_conversation(_conversation(QT, ""), template, tokenizer)
    fmt = CHAT_FORMATS[template]
    assert (
        _decode(tokenizer, [t for t in encoded.labels if t != IGNORE_INDEX])
        == fmt.answer_prefix + fmt.end_of_turn
    )


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_ids_match_whole_string_tokenisation(template: str, tokenizers: dict) -> None:
    # The whole prompt is tokenised at once (tests/core/data/test_prompt_tokenisation.py checks this for
    # random conversations and every tokenizer family).
    tokenizer = tokenizers[template]
    prompt = TWO_ROUNDS[template][0].replace("<image>\n", "").removeprefix(BOS[template] or "")
    bos = [] if BOS[template] is None else [tokenizer.bos_token_id]
    whole = bos + tokenizer(prompt, add_special_tokens=False).input_ids
    assert encode_conversation(_conversation(Q1, A1, Q2, A2), template, tokenizer).input_ids == whole


def test_metaspace_answer_tokens_match_whole_string() -> None:
    # A sentencepiece-style (Metaspace, word-start marker prepended to the first word) tokenizer: the
    # answer segment " A red circle." gives the same ids as inside the whole string, because Metaspace
    # turns the leading space into the word's own marker and prepends no second one.
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    backend.train_from_iterator(
        CORPUS * 5,
        trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL_TOKENS[:4], show_progress=False),
    )
    bos_id = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    encoded = encode_conversation(_conversation(Q1, A1), "vicuna_v1", tokenizer)
    whole = tokenizer(f"{VICUNA_SYSTEM} USER: {Q1} ASSISTANT: {A1}</s>").input_ids
    assert encoded.input_ids == whole
    answer = tokenizer(f" {A1}</s>", add_special_tokens=False).input_ids
    assert [t for t in encoded.labels if t != IGNORE_INDEX] == answer == whole[-len(answer) :]


def test_tiny_llama_tokenizer_with_vicuna() -> None:
    tokenizer = train_tiny_tokenizer(vocab_size=1024, model_max_length=512)
    conversation = _conversation(f"{Q1}\n<image>", A1, Q2, A2)
    ids = _check("vicuna_v1", tokenizer, conversation, TWO_ROUNDS["vicuna_v1"])
    assert ids[:2] == [
        tokenizer.bos_token_id,
        *tokenizer(VICUNA_SYSTEM, add_special_tokens=False).input_ids[:1],
    ]
    # The tiny tokenizer has no llama3 markers: a clear mismatch error, not a garbled prompt.
    with pytest.raises(
        ValueError, match=r"template 'llama3' does not match.*'<\|start_header_id\|>' encodes to"
    ):
        encode_conversation(conversation, "llama3", tokenizer)


def test_registry_holds_every_template() -> None:
    assert set(TEMPLATES) >= {"plain", *CHAT_TEMPLATES}
    assert set(CHAT_FORMATS) == set(CHAT_TEMPLATES)


@pytest.mark.parametrize(
    ("template", "prompt"),
    [
        ("vicuna_v1", f"{VICUNA_SYSTEM} USER: {QT} ASSISTANT:"),
        ("llama3", f"<|start_header_id|>user<|end_header_id|>\n\n{QT}<|eot_id|>"),
        ("mistral", f"[INST] {QT} [/INST]"),
        ("phi3", f"<|user|>\n{QT}<|end|>\n<|assistant|>\n"),
    ],
)
def test_generation_prompt_ends_at_the_assistant_header(template: str, prompt: str) -> None:
    (text, supervised), *rest = CHAT_FORMATS[template].segments([(QT, None)])
    assert rest == [] and supervised is False
    assert prompt in text and text.endswith(CHAT_FORMATS[template].user_suffix)
    with pytest.raises(ValueError, match="only the last answer"):
        CHAT_FORMATS[template].segments([(QT, None), (QT, AT)])


@pytest.mark.parametrize(
    ("turns", "message"),
    [
        ((QT,), "ending with an answer; got 1 turns"),
        ((QT, AT, QT), "got 3 turns"),
        ((f"<image>\n{QT}", "<image> here"), "answer turn 1 contains '<image>'"),
        ((f"<image>\n{QT}", AT, f"<image>{QT}", AT), "at most one '<image>'"),
    ],
)
def test_rejects_bad_conversations(turns: tuple[str, ...], message: str, tokenizers: dict) -> None:
    with pytest.raises(ValueError, match=message):
        encode_conversation(_conversation(*turns), "vicuna_v1", tokenizers["vicuna_v1"])


def test_rejects_wrong_roles(tokenizers: dict) -> None:
    conversation = [{"from": "gpt", "value": AT}, {"from": "human", "value": QT}]
    with pytest.raises(ValueError, match=r"template 'gemma': turn 0 has from='gpt'; expected 'human'"):
        encode_conversation(conversation, "gemma", tokenizers["gemma"])


def test_encode_segments_rejects_an_image_in_a_supervised_segment(tokenizers: dict) -> None:
    tokenizer = tokenizers["vicuna_v1"]
    with pytest.raises(ValueError, match="supervised segment contains '<image>'"):
        encode_segments([("a", False), ("b <image>", True)], tokenizer, add_bos=True)
    encoded = encode_segments([("<image>", False), ("red", True)], tokenizer, add_bos=False)
    assert encoded.input_ids[0] == IMAGE_TOKEN_INDEX
    assert encoded.labels == [IGNORE_INDEX, *tokenizer("red", add_special_tokens=False).input_ids]

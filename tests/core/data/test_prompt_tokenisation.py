"""Property test: template ids equal LLaVA's whole-prompt tokenisation for every template x tokenizer family."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import sentencepiece_models as sp_models
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from core.data import CHAT_FORMATS, IGNORE_INDEX, IMAGE_TOKEN_INDEX, encode_conversation, encode_segments
from core.data.chat import conversation_pairs
from core.evaluation.generate import answer_ids
from core.models.tiny_tokenizer import train_tiny_tokenizer

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content "
    "that the user provides, and assist the user with a variety of tasks using natural language."
)
MARKERS = [
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|user|>",
    "<|end|>",
    "<|assistant|>",
]
# Meta's Llama-3 pre-tokenizer regex (tokenizer.json of Meta-Llama-3-8B-Instruct).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CONVERSATIONS = 50

# The prompt each template renders, written out here independently of core.data.chat:
# (preamble, round(query, answer) -> (masked text, supervised text, masked text after)).
Round = Callable[[str, str], tuple[str, str, str]]
REFERENCE: dict[str, tuple[str, Round]] = {
    "vicuna_v1": (f"{VICUNA_SYSTEM} ", lambda q, a: (f"USER: {q} ASSISTANT:", f" {a}</s>", "")),
    "llama3": (
        f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYSTEM}<|eot_id|>",
        lambda q, a: (
            f"<|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            f"{a}<|eot_id|>",
            "",
        ),
    ),
    "gemma": (
        "",
        lambda q, a: (
            f"<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n",
            f"{a}<end_of_turn>",
            "\n",
        ),
    ),
    "phi3": ("", lambda q, a: (f"<|user|>\n{q}<|end|>\n<|assistant|>\n", f"{a}<|end|>", "\n")),
    "mistral": ("", lambda q, a: (f"[INST] {q} [/INST]", f" {a}</s>", "")),
}
WORDS = [
    "the",
    "a",
    "is",
    "in",
    "on",
    "red",
    "blue",
    "circle",
    "square",
    "USER",
    "ASSISTANT",
    "user",
    "model",
    "What",
    "colour",
    "picture",
    "there",
    "are",
    "two",
    "3",
    "42",
    "2024",
    "café",
    "naïve",
    "日本",
    "—",
    "it's",
    "don't",
    "(yes)",
    "no.",
    "Yes!",
    "shape,",
    "left;",
    "right:",
    "ok?",
    "",
]


def _words(rng: random.Random, low: int, high: int) -> str:
    words = [rng.choice(WORDS) or "x" for _ in range(rng.randint(low, high))]
    text = ""
    for index, word in enumerate(words):
        text += ("" if index == 0 else rng.choice([" ", " ", " ", "\n", "  ", ", "])) + word
    return text


def random_conversation(rng: random.Random, plain: bool = False) -> list[dict[str, str]]:
    """1-4 rounds (1 for plain); an `<image>` before or after the first question or none."""
    rounds = 1 if plain else rng.randint(1, 4)
    turns = []
    for index in range(rounds):
        query = _words(rng, 1, 10)
        image = plain or (index == 0 and rng.random() < 0.6)
        if image:
            query = rng.choice([f"<image>\n{query}", f"{query}\n<image>", f"<image>{query}"])
        turns += [{"from": "human", "value": query}, {"from": "gpt", "value": _words(rng, 1, 12)}]
    return turns


def reference_prompt(template: str, turns: list[dict[str, str]]) -> tuple[str, list[str]]:
    """The rendered prompt (bos left out) and the supervised texts, following LLaVA's rules."""
    if template == "plain":
        return f"<image>{turns[1]['value']}\n", [f"{turns[1]['value']}\n"]
    preamble, render = REFERENCE[template]
    prompt, answers = preamble, []
    for human, gpt in zip(turns[0::2], turns[1::2], strict=True):
        query = human["value"]
        if "<image>" in query:  # LLaVA's preprocess_multimodal
            query = "<image>\n" + query.replace("<image>", "").strip()
        masked, supervised, after = render(query, gpt["value"])
        prompt += masked + supervised + after
        answers.append(supervised)
    return prompt, answers


def llava_tokenizer_image_token(prompt: str, tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """LLaVA's `tokenizer_image_token`, as written in llava/mm_utils.py."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    input_ids, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(chunks[0][0])
    separated = [
        ele
        for sublist in zip(chunks, [[IMAGE_TOKEN_INDEX] * (offset + 1)] * len(chunks), strict=True)
        for ele in sublist
    ]
    for x in separated[:-1]:
        input_ids.extend(x[offset:])
    return input_ids


def _render(tokenizer: PreTrainedTokenizerFast, ids: list[int]) -> str:
    """Decode with each IMAGE_TOKEN_INDEX shown as `<image>` (each text chunk decoded on its own)."""
    chunks: list[list[int]] = [[]]
    for token in ids:
        if token == IMAGE_TOKEN_INDEX:
            chunks.append([])
        else:
            chunks[-1].append(token)
    return "<image>".join(tokenizer.decode(c, skip_special_tokens=False) for c in chunks)


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of supervised labels."""
    runs: list[tuple[int, int]] = []
    for index, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def _byte_level_bpe() -> PreTrainedTokenizerFast:
    """Llama-3's kind: byte-level BPE after Meta's split regex, `<|begin_of_text|>` as bos."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "</s>", *MARKERS]
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([VICUNA_SYSTEM, LLAMA3_SYSTEM, *sp_models.sentences(400)], trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="</s>")


def _sentencepiece(tmp: Path, kind: str) -> PreTrainedTokenizerFast:
    model = sp_models.train()
    if kind == "gemma":
        sp_models.save_gemma_tokenizer(tmp, model)
    else:
        sp_models.save_llama_tokenizer(tmp, model, legacy=kind == "legacy")
    tokenizer = AutoTokenizer.from_pretrained(tmp)
    if kind == "prepend":
        # Phi-3's / Mistral's tokenizer.json: "▁" prefixed to every text run, spaces replaced, no pre-tokenizer.
        backend = tokenizer.backend_tokenizer
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = None
    tokenizer.add_tokens(MARKERS, special_tokens=True)
    return tokenizer


FAMILIES = ("byte_level_bpe", "sp_legacy", "sp_non_legacy", "sp_gemma", "sp_prepend", "tiny")
TEMPLATES = ("vicuna_v1", "llama3", "gemma", "phi3", "mistral", "plain")
# The project's tiny tokenizer has `</s>` but none of the other templates' markers.
TINY_TEMPLATES = ("vicuna_v1", "mistral", "plain")
CASES = [(t, f) for t in TEMPLATES for f in FAMILIES if f != "tiny" or t in TINY_TEMPLATES]


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PreTrainedTokenizerFast]:
    tmp = tmp_path_factory.mktemp("tokenizers")
    return {
        "byte_level_bpe": _byte_level_bpe(),
        "sp_legacy": _sentencepiece(tmp / "legacy", "legacy"),
        "sp_non_legacy": _sentencepiece(tmp / "non_legacy", "non_legacy"),
        "sp_gemma": _sentencepiece(tmp / "gemma", "gemma"),
        "sp_prepend": _sentencepiece(tmp / "prepend", "prepend"),
        "tiny": train_tiny_tokenizer(1024, 512),
    }


def _generation_ids(
    template: str, turns: list[dict[str, str]], tokenizer: PreTrainedTokenizerFast
) -> list[int]:
    """The prompt for generating the last answer, built the way core.evaluation.generate builds it."""
    fmt = CHAT_FORMATS[template]
    pairs: list[tuple[str, str | None]] = list(conversation_pairs(turns, template))
    pairs[-1] = (pairs[-1][0], None)
    adds_bos = tokenizer("a").input_ids[:1] == [tokenizer.bos_token_id]
    return encode_segments(fmt.segments(pairs), tokenizer, adds_bos).input_ids


@pytest.mark.parametrize(("template", "family"), CASES)
def test_ids_equal_whole_prompt_tokenisation(template: str, family: str, families: dict) -> None:
    tokenizer = families[family]
    rng = random.Random(f"{template}-{family}")
    for _ in range(CONVERSATIONS):
        turns = random_conversation(rng, plain=template == "plain")
        prompt, answers = reference_prompt(template, turns)
        encoded = encode_conversation(turns, template, tokenizer)
        ids, labels = encoded.input_ids, encoded.labels
        where = f"{template} x {family}: {prompt!r}"
        assert ids == llava_tokenizer_image_token(prompt, tokenizer), where
        assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels, strict=True))
        runs = _runs(labels)
        assert len(runs) == len(answers), where
        for (start, end), answer in zip(runs, answers, strict=True):
            # The supervised tokens are exactly the answer: decoding through them adds the answer's text.
            assert _render(tokenizer, ids[:end]) == _render(tokenizer, ids[:start]) + answer, where
        if template != "plain":
            start, end = runs[-1]
            assert _generation_ids(template, turns, tokenizer) == ids[:start], where
            # Continuation scoring (multiple choice) scores the answer's training ids, end of turn left out.
            assert answer_ids(template, turns[-1]["value"], tokenizer) == ids[start : end - 1], where

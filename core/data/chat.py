"""Stage-2 chat templates (vicuna_v1, llama3, gemma, phi3, mistral): prompts masked, answers supervised.

Each template renders a conversation as alternating masked and supervised text segments. Only
the answer and its end-of-turn token are supervised. The system prompt, the user turns and the
assistant header are masked, and so is any text after the end-of-turn token:

=========  =====================================================================================
template   rendered conversation; [supervised] in brackets, `<bos>` = the tokenizer's own bos
=========  =====================================================================================
vicuna_v1  `<bos>{SYSTEM} USER: {q1} ASSISTANT:[ {a1}</s>]USER: {q2} ASSISTANT:[ {a2}</s>]`
           (LLaVA-1.5's `conv_vicuna_v1`: sep " ", sep2 "</s>")
llama3     `<bos><|start_header_id|>system<|end_header_id|>\\n\\n{SYSTEM}<|eot_id|>`
           `<|start_header_id|>user<|end_header_id|>\\n\\n{q1}<|eot_id|>`
           `<|start_header_id|>assistant<|end_header_id|>\\n\\n[{a1}<|eot_id|>]...`
           (Meta's format with LLaVA-NeXT's `conv_llava_llama_3` system prompt)
gemma      `<bos><start_of_turn>user\\n{q1}<end_of_turn>\\n<start_of_turn>model\\n[{a1}<end_of_turn>]\\n...`
           (LLaVA-NeXT's `conv_gemma_instruct`; no system prompt)
phi3       `<bos><|user|>\\n{q1}<|end|>\\n<|assistant|>\\n[{a1}<|end|>]\\n...`
           (Phi-3's own chat format; no system prompt)
mistral    `<bos>[INST] {q1} [/INST][ {a1}</s>][INST] {q2} [/INST][ {a2}</s>]`
           (Mistral-Instruct's documented format; no system prompt)
=========  =====================================================================================

As in LLaVA's `preprocess_multimodal`, a human turn holding `<image>` is rewritten to
`<image>\\n` + the rest of the turn stripped, so an image after the question moves before it.
`<bos>` is added exactly when the tokenizer adds a bos by default (Llama-3's bos is
`<|begin_of_text|>`, Gemma's `<bos>`).

Whole-prompt tokenisation. The segments are joined into the prompt exactly as rendered above and
the prompt is tokenised at once, as LLaVA does (`tokenizer_image_token`: the text on either side of
`<image>` is tokenised on its own, the placeholder put between), so the ids are the ones the model
sees whatever the tokenizer family: byte-level BPE (Llama-3), sentencepiece with `legacy: true` or
`legacy: false` (Vicuna, Mistral; no word-start marker after `</s>` when non-legacy), without a
dummy prefix (Gemma), or with a normaliser prefixing "▁" after every special token (Phi-3's
tokenizer.json). The labels come from the tokenizer's character offsets: a token is supervised
when it covers a character of a supervised segment (an answer and its end-of-turn token), else it
is IGNORE_INDEX. The boundaries sit where tokenizers split anyway (after a special token, before
the answer's leading space, after a newline), so the supervised tokens decode to exactly the
answers; a token that a tokenizer merges across a boundary (an answer starting with whitespace
after a newline) is supervised, since the answer's characters are in it. Offsets need a fast
(tokenizers-backed) tokenizer, which is what transformers loads for every LLM in the registry.
Generation prompts are built by the same function from the same segments (`ChatFormat.segments`
with no last answer), so they are the prefix of the training ids up to the answer.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.data.templates import (
    DEFAULT_IMAGE_TOKEN,
    Conversation,
    Encoded,
    register_template,
)
from core.models.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer

ROLES = ("human", "gpt")

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)


@dataclass(frozen=True)
class ChatFormat:
    """How one chat template lays out a conversation; see the module docstring for each format.

    A round renders as: `user_prefix + query + user_suffix` (masked; `user_suffix` also opens the
    assistant turn), `answer_prefix + answer + end_of_turn` (supervised), `turn_suffix` (masked).
    `preamble` (the system prompt) is masked and comes once, before the first round.
    `special_tokens` must each be one token of the tokenizer, else the template does not match it.
    """

    name: str
    preamble: str
    user_prefix: str
    user_suffix: str
    answer_prefix: str
    end_of_turn: str
    turn_suffix: str
    special_tokens: tuple[str, ...]

    def segments(self, pairs: Sequence[tuple[str, str | None]]) -> list[tuple[str, bool]]:
        """(text, supervised) segments of the rounds `(query, answer)`, adjacent masked text merged.

        A final answer of None leaves the prompt open after the assistant header (for generation).
        """
        out: list[tuple[str, bool]] = []
        masked = self.preamble
        for index, (query, answer) in enumerate(pairs):
            masked += self.user_prefix + query + self.user_suffix
            if answer is None:
                if index != len(pairs) - 1:
                    raise ValueError(f"template {self.name!r}: only the last answer may be None")
                break
            out.append((masked, False))
            out.append((self.answer_prefix + answer + self.end_of_turn, True))
            masked = self.turn_suffix
        if masked:
            out.append((masked, False))
        return out


CHAT_FORMATS: dict[str, ChatFormat] = {
    fmt.name: fmt
    for fmt in (
        ChatFormat(
            name="vicuna_v1",
            preamble=VICUNA_SYSTEM + " ",
            user_prefix="USER: ",
            user_suffix=" ASSISTANT:",
            answer_prefix=" ",
            end_of_turn="</s>",
            turn_suffix="",
            special_tokens=("</s>",),
        ),
        ChatFormat(
            name="llama3",
            preamble=f"<|start_header_id|>system<|end_header_id|>\n\n{LLAVA_LLAMA3_SYSTEM}<|eot_id|>",
            user_prefix="<|start_header_id|>user<|end_header_id|>\n\n",
            user_suffix="<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            answer_prefix="",
            end_of_turn="<|eot_id|>",
            turn_suffix="",
            special_tokens=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        ),
        ChatFormat(
            name="gemma",
            preamble="",
            user_prefix="<start_of_turn>user\n",
            user_suffix="<end_of_turn>\n<start_of_turn>model\n",
            answer_prefix="",
            end_of_turn="<end_of_turn>",
            turn_suffix="\n",
            special_tokens=("<start_of_turn>", "<end_of_turn>"),
        ),
        ChatFormat(
            name="phi3",
            preamble="",
            user_prefix="<|user|>\n",
            user_suffix="<|end|>\n<|assistant|>\n",
            answer_prefix="",
            end_of_turn="<|end|>",
            turn_suffix="\n",
            special_tokens=("<|user|>", "<|end|>", "<|assistant|>"),
        ),
        ChatFormat(
            name="mistral",
            preamble="",
            user_prefix="[INST] ",
            user_suffix=" [/INST]",
            answer_prefix=" ",
            end_of_turn="</s>",
            turn_suffix="",
            # [INST] and [/INST] are plain text in Mistral v0.1/v0.2 tokenizers, so only </s> is required.
            special_tokens=("</s>",),
        ),
    )
}


def conversation_pairs(conversations: Conversation, template: str) -> list[tuple[str, str]]:
    """(query, answer) rounds of a LLaVA conversation, validated, with `<image>` moved to the front.

    Turns must alternate human / gpt starting with human and end with gpt; at most one `<image>`,
    in a human turn. The turn holding it becomes `<image>\\n` + the rest stripped (LLaVA's rule).
    """
    where = f"template {template!r}"
    if len(conversations) < 2 or len(conversations) % 2:
        raise ValueError(
            f"{where}: expects alternating human/gpt turns ending with an answer; "
            f"got {len(conversations)} turns"
        )
    images = 0
    values: list[str] = []
    for index, turn in enumerate(conversations):
        expected = ROLES[index % 2]
        if turn.get("from") != expected:
            raise ValueError(f"{where}: turn {index} has from={turn.get('from')!r}; expected {expected!r}")
        value = turn.get("value")
        if not isinstance(value, str):
            raise ValueError(f"{where}: turn {index} needs a string 'value', got {type(value).__name__}")
        count = value.count(DEFAULT_IMAGE_TOKEN)
        if count and expected == "gpt":
            raise ValueError(f"{where}: answer turn {index} contains {DEFAULT_IMAGE_TOKEN!r}")
        images += count
        if count:
            value = DEFAULT_IMAGE_TOKEN + "\n" + value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        values.append(value)
    if images > 1:
        raise ValueError(f"{where}: at most one {DEFAULT_IMAGE_TOKEN!r} per conversation, found {images}")
    return list(zip(values[0::2], values[1::2], strict=True))


def tokenizer_name(tokenizer: Tokenizer) -> str:
    """A readable name for error messages: the hub id or path, else the class name."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


# Per tokenizer object: {template: adds_bos}, so the special-token check runs once, not per sample.
_CHECKED: weakref.WeakKeyDictionary[Tokenizer, dict[str, bool]] = weakref.WeakKeyDictionary()


def _check_tokenizer(fmt: ChatFormat, tokenizer: Tokenizer) -> bool:
    """Raise if a marker of `fmt` is not one token of `tokenizer`; return whether it adds a bos."""
    try:
        cached = _CHECKED.get(tokenizer, {})
    except TypeError:  # not weak-referenceable or not hashable: check every time
        cached = {}
    if fmt.name in cached:
        return cached[fmt.name]
    encoded = tokenizer(list(fmt.special_tokens), add_special_tokens=False).input_ids
    for token, ids in zip(fmt.special_tokens, encoded, strict=True):
        if len(ids) != 1:
            raise ValueError(
                f"template {fmt.name!r} does not match tokenizer {tokenizer_name(tokenizer)!r}: "
                f"{token!r} encodes to {len(ids)} tokens {list(ids)}, expected one special token; "
                "use the template of this LLM, or add the token to the tokenizer as a special token"
            )
    bos = getattr(tokenizer, "bos_token_id", None)
    adds_bos = bos is not None and list(tokenizer("a").input_ids[:1]) == [bos]
    with contextlib.suppress(TypeError):
        _CHECKED.setdefault(tokenizer, {})[fmt.name] = adds_bos
    return adds_bos


def _render(segments: Sequence[tuple[str, bool]]) -> tuple[str, bytearray]:
    """The prompt text and a per-character flag: 1 where the character belongs to a supervised segment."""
    text = "".join(segment for segment, _ in segments)
    supervised = bytearray(len(text))
    at = 0
    for segment, is_supervised in segments:
        if is_supervised:
            if DEFAULT_IMAGE_TOKEN in segment:
                raise ValueError(f"a supervised segment contains {DEFAULT_IMAGE_TOKEN!r}: {segment!r}")
            supervised[at : at + len(segment)] = b"\x01" * len(segment)
        at += len(segment)
    return text, supervised


def _chunk_offsets(tokenizer: Tokenizer, chunks: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, character offsets) of each chunk, tokenised on its own without special tokens (one call)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer {tokenizer_name(tokenizer)!r} ({type(tokenizer).__name__}) gives no character "
            "offsets, which the chat templates use to find the answers; load the fast (tokenizers-backed) "
            "tokenizer of this LLM (AutoTokenizer does unless use_fast=False)"
        )
    batch = tokenizer(chunks, add_special_tokens=False, return_offsets_mapping=True)
    return [
        (list(ids), list(offsets)) for ids, offsets in zip(batch.input_ids, batch.offset_mapping, strict=True)
    ]


def encode_segments(segments: Sequence[tuple[str, bool]], tokenizer: Tokenizer, add_bos: bool) -> Encoded:
    """Tokenise the whole prompt that `segments` render to; supervise the tokens covering supervised text.

    `<image>` (only in masked segments) becomes IMAGE_TOKEN_INDEX (labelled IGNORE_INDEX), the text
    on either side tokenised on its own as in `tokenizer_image_token`; a bos comes first when `add_bos`.
    """
    text, supervised = _render(segments)
    chunks = text.split(DEFAULT_IMAGE_TOKEN)
    input_ids: list[int] = [tokenizer.bos_token_id] if add_bos else []
    labels: list[int] = [IGNORE_INDEX] * len(input_ids)
    start = 0
    for position, (ids, offsets) in enumerate(_chunk_offsets(tokenizer, chunks)):
        if position > 0:
            input_ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
        for token, (first, last) in zip(ids, offsets, strict=True):
            # A zero-width token (a marker the tokenizer inserted) belongs to the character it precedes.
            covered = supervised.find(1, start + first, start + max(last, first + 1)) >= 0
            input_ids.append(token)
            labels.append(token if covered else IGNORE_INDEX)
        start += len(chunks[position]) + len(DEFAULT_IMAGE_TOKEN)
    return Encoded(input_ids=input_ids, labels=labels)


def encode_chat(template: str, conversations: Conversation, tokenizer: Tokenizer) -> Encoded:
    """Encode a LLaVA conversation with the chat template `template` (a key of CHAT_FORMATS)."""
    fmt = CHAT_FORMATS[template]
    pairs = conversation_pairs(conversations, template)
    add_bos = _check_tokenizer(fmt, tokenizer)
    return encode_segments(fmt.segments(pairs), tokenizer, add_bos)


def _register(name: str) -> None:
    def encode(conversations: Conversation, tokenizer: Tokenizer) -> Encoded:
        return encode_chat(name, conversations, tokenizer)

    encode.__name__ = f"encode_{name}"
    encode.__doc__ = f"The {name!r} chat template (see core.data.chat)."
    register_template(name)(encode)


for _name in CHAT_FORMATS:
    _register(_name)

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

Segment-wise tokenisation. Every segment is tokenised on its own (no special tokens added) and
the ids are concatenated; the labels are the ids of the supervised segments and IGNORE_INDEX
elsewhere, so "answer + end-of-turn token supervised, nothing else" holds by construction, with
no offset arithmetic to go out of step with the tokenizer. It can differ from tokenising the whole
string at once only where a merge or a word-start marker would cross a segment boundary. The
boundaries are placed where tokenizers split anyway: right after a special token (header end,
end-of-turn, `[/INST]`), after a newline, or between "ASSISTANT:" / "[/INST]" and the answer's
leading space, which starts a new pre-token in byte-level BPE (GPT-2/Llama-3 regex) and is turned
into the answer's own "▁" by a Metaspace tokenizer (which prepends no second "▁" to a segment
that already starts with one). So the answer's first token is the one the whole string would
give. What remains:
- masked text only: a whitespace run at the end of a masked segment (the "\\n\\n" after a Llama-3
  header, with a GPT-2-style regex) may be split differently, and a Metaspace tokenizer that marks
  the first word of a text with "▁" does so for a masked segment that follows an end-of-turn
  token (round 2's "USER:"), which is what LLaVA's own legacy Llama tokenizer does after `</s>`;
- the text on either side of `<image>` is tokenised separately, exactly as LLaVA's
  `tokenizer_image_token` does;
- a legacy sentencepiece normaliser that prefixes "▁" to every piece (Phi-3) gives an answer that
  follows "\\n" a leading "▁", as it does to every piece after a special token in whole-string mode.
Labels are never affected by these, and inference must build its prompt from the same masked
segments (`ChatFormat.segments` with no answer), so training and generation see the same ids.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.data.templates import (
    DEFAULT_IMAGE_TOKEN,
    Conversation,
    Encoded,
    register_template,
)
from core.models.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

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


def tokenizer_name(tokenizer: Any) -> str:
    """A readable name for error messages: the hub id or path, else the class name."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


# Per tokenizer object: {template: adds_bos}, so the special-token check runs once, not per sample.
_CHECKED: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()


def _check_tokenizer(fmt: ChatFormat, tokenizer: Any) -> bool:
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


def encode_segments(segments: Sequence[tuple[str, bool]], tokenizer: Any, add_bos: bool) -> Encoded:
    """Tokenise each segment on its own (one batched call) and concatenate; label the supervised ones.

    `<image>` in a masked segment becomes IMAGE_TOKEN_INDEX (labelled IGNORE_INDEX), the text on
    either side tokenised separately as in `tokenizer_image_token`.
    """
    pieces: list[tuple[str, bool, bool]] = []  # (text, supervised, image placeholder before it)
    for text, supervised in segments:
        chunks = text.split(DEFAULT_IMAGE_TOKEN)
        if supervised and len(chunks) > 1:
            raise ValueError(f"a supervised segment contains {DEFAULT_IMAGE_TOKEN!r}: {text!r}")
        pieces.extend((chunk, supervised, position > 0) for position, chunk in enumerate(chunks))
    texts = [text for text, _, _ in pieces if text]
    batch = iter(tokenizer(texts, add_special_tokens=False).input_ids if texts else [])
    input_ids: list[int] = [tokenizer.bos_token_id] if add_bos else []
    labels: list[int] = [IGNORE_INDEX] * len(input_ids)
    for text, supervised, image_before in pieces:
        if image_before:
            input_ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
        if not text:
            continue
        ids = list(next(batch))
        input_ids.extend(ids)
        labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))
    return Encoded(input_ids=input_ids, labels=labels)


def encode_chat(template: str, conversations: Conversation, tokenizer: Any) -> Encoded:
    """Encode a LLaVA conversation with the chat template `template` (a key of CHAT_FORMATS)."""
    fmt = CHAT_FORMATS[template]
    pairs = conversation_pairs(conversations, template)
    add_bos = _check_tokenizer(fmt, tokenizer)
    return encode_segments(fmt.segments(pairs), tokenizer, add_bos)


def _register(name: str) -> None:
    def encode(conversations: Conversation, tokenizer: Any) -> Encoded:
        return encode_chat(name, conversations, tokenizer)

    encode.__name__ = f"encode_{name}"
    encode.__doc__ = f"The {name!r} chat template (see core.data.chat)."
    register_template(name)(encode)


for _name in CHAT_FORMATS:
    _register(_name)

"""Generation prompts in the LLM's chat template, batched greedy decoding and option log-likelihoods."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from core.data.chat import CHAT_FORMATS, _check_tokenizer, conversation_pairs, encode_segments
from core.data.templates import DEFAULT_IMAGE_TOKEN
from core.models.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX

if TYPE_CHECKING:
    from core.models.tokenizer import Tokenizer
    from core.models.vlm import VLM


@dataclass
class Prompt:
    """One prompt: token ids (IMAGE_TOKEN_INDEX once where the image goes, or not at all) and its image."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None = None  # [3, S, S], preprocessed for the vision tower

    def __post_init__(self) -> None:
        images = sum(t == IMAGE_TOKEN_INDEX for t in self.input_ids)
        if images != (self.pixel_values is not None):
            raise ValueError(
                f"Prompt: {images} image placeholders but pixel_values is "
                f"{'set' if self.pixel_values is not None else 'None'}; give an image exactly when the "
                "ids hold one IMAGE_TOKEN_INDEX"
            )


def _format(template: str) -> Any:
    fmt = CHAT_FORMATS.get(template)
    if fmt is None:
        raise ValueError(
            f"template={template!r}: evaluation prompts need a chat template, one of "
            f"{', '.join(sorted(CHAT_FORMATS))} ('plain' only frames stage-1 captions)"
        )
    return fmt


def user_query(question: str, has_image: bool) -> str:
    """The user turn as LLaVA's eval scripts build it: `<image>\\n` + question when there is an image."""
    if has_image and DEFAULT_IMAGE_TOKEN not in question:
        return f"{DEFAULT_IMAGE_TOKEN}\n{question}"
    if not has_image and DEFAULT_IMAGE_TOKEN in question:
        raise ValueError(f"question has {DEFAULT_IMAGE_TOKEN!r} but no image: {question!r}")
    return question


def generation_prompt_ids(
    template: str, question: str, tokenizer: Tokenizer, *, has_image: bool
) -> list[int]:
    """Token ids of a one-turn conversation left open after the assistant header, as in training.

    Built from the same masked segments as a training sample (`ChatFormat.segments` with no answer),
    so generation sees exactly the ids the model was tuned on, `<image>` moved to the front of the
    turn by LLaVA's rule and replaced by IMAGE_TOKEN_INDEX.
    """
    fmt = _format(template)
    add_bos = _check_tokenizer(fmt, tokenizer)
    query = user_query(question, has_image)
    (pair,) = conversation_pairs([{"from": "human", "value": query}, {"from": "gpt", "value": ""}], template)
    return encode_segments(fmt.segments([(pair[0], None)]), tokenizer, add_bos).input_ids


def answer_ids(template: str, answer: str, tokenizer: Tokenizer) -> list[int]:
    """Ids of an assistant answer continuing a generation prompt (answer prefix + text, no end of turn),
    tokenised after the assistant header as the whole training prompt is (the tokens after the header
    do not depend on what precedes it)."""
    fmt = _format(template)
    encoded = encode_segments(
        [(fmt.user_suffix, False), (fmt.answer_prefix + answer, True)], tokenizer, False
    )
    return [label for label in encoded.labels if label != IGNORE_INDEX]


def stop_token_ids(template: str, tokenizer: Tokenizer) -> list[int]:
    """The tokenizer's eos plus the template's end-of-turn token (Llama-3's <|eot_id|>, Gemma's ...)."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    eot = tokenizer(_format(template).end_of_turn, add_special_tokens=False).input_ids
    if len(eot) == 1 and int(eot[0]) not in ids:
        ids.append(int(eot[0]))
    if not ids:
        raise ValueError(f"tokenizer has no eos token and template {template!r} no single end-of-turn token")
    return ids


def pad_id(tokenizer: Tokenizer) -> int:
    """Padding id for batches: the pad token, else eos (padding is masked either way)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every submodule's own train/eval flag restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _batch(vlm: VLM, prompts: Sequence[Prompt], ids: Sequence[list[int]], pad: int) -> dict[str, Any]:
    """A right-padded batch in the VLM's collate format (zeros for the pixels of image-less rows)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    has_image = torch.tensor([p.pixel_values is not None for p in prompts])
    pixel_values = None
    if bool(has_image.any()):
        ref = next(p.pixel_values for p in prompts if p.pixel_values is not None)
        pixel_values = torch.stack(
            [p.pixel_values if p.pixel_values is not None else torch.zeros_like(ref) for p in prompts]
        )
        pixel_values = pixel_values.to(device=vlm.vision.device, dtype=vlm.vision.dtype)
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "pixel_values": pixel_values,
        "has_image": has_image,
    }


def cut_at_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """The tokens before the first stop token."""
    out: list[int] = []
    for t in tokens:
        if t in stop_ids:
            break
        out.append(int(t))
    return out


@torch.no_grad()
def greedy_generate(
    vlm: VLM,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_token_id: int,
) -> list[list[int]]:
    """Greedy continuation of each prompt (one batch), cut before the first stop token.

    The prompts are spliced and left-padded by `VLM.generate`, which decodes with the KV cache; a
    fresh GenerationConfig (no sampling, one beam) replaces the checkpoint's own defaults so that
    nothing such as a temperature or repetition penalty from its generation_config.json applies.
    """
    from transformers import GenerationConfig

    if not prompts:
        return []
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_token_id,
    )
    batch = _batch(vlm, prompts, [p.input_ids for p in prompts], pad_token_id)
    with eval_mode(vlm):
        out = vlm.generate(batch, generation_config=config)
    return [cut_at_stop(row, stop_ids) for row in out.tolist()]


def _supports_logits_to_keep(llm: Any) -> bool:
    return "logits_to_keep" in inspect.signature(llm.forward).parameters


@torch.no_grad()
def continuation_logliks(
    vlm: VLM,
    prompts: Sequence[Prompt],
    continuations: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
) -> list[tuple[float, int]]:
    """(sum of log p(token | everything before), token count) of each continuation after its prompt.

    One right-padded forward pass for the batch; only the logits of positions that predict a
    continuation token are computed (`logits_to_keep`) when the LLM supports it, and log-softmax runs
    in float32 or wider. A continuation cut by the model's max_length counts only its surviving tokens.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    if not prompts:
        return []
    for i, c in enumerate(continuations):
        if not c:
            raise ValueError(f"continuation {i} is empty; an option needs at least one token")
    ids = [list(p.input_ids) + list(c) for p, c in zip(prompts, continuations, strict=True)]
    batch = _batch(vlm, prompts, ids, pad_token_id)
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for i, (p, c) in enumerate(zip(prompts, continuations, strict=True)):
        labels[i, len(p.input_ids) : len(p.input_ids) + len(c)] = torch.tensor(list(c), dtype=torch.long)
    batch["labels"] = labels
    with eval_mode(vlm):
        spliced = vlm.splice(batch)
        assert spliced.labels is not None
        width = spliced.labels.shape[1]
        supervised = (spliced.labels != IGNORE_INDEX).any(dim=0).nonzero().flatten()
        first = int(supervised.min()) if supervised.numel() else width - 1
        # Position t predicts token t + 1: keep the logits from `first - 1` to the end.
        keep = width - max(first - 1, 0)
        kwargs: dict[str, Any] = {"logits_to_keep": keep} if _supports_logits_to_keep(vlm.llm) else {}
        out = vlm.llm(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            use_cache=False,
            **kwargs,
        )
    logits = out.logits[:, -keep:] if kwargs else out.logits[:, width - keep :]
    targets = spliced.labels[:, width - keep + 1 :]
    # float32 at least (bf16 log-probs are too coarse to rank options); float64 models keep float64.
    logp = F.log_softmax(logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    valid = targets != IGNORE_INDEX
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    sums = (picked * valid).sum(dim=1)
    counts = valid.sum(dim=1)
    return [(float(s), int(n)) for s, n in zip(sums.tolist(), counts.tolist(), strict=True)]

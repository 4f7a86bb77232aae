"""Multiple-choice scoring (MMBench, ScienceQA-IMG, MMLU): accuracy, log-likelihood pick, letter parsing."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence


def mc_accuracy(predicted: Sequence[str | None], gold: Sequence[str]) -> float:
    """Share of exact matches after stripping whitespace; a None prediction (unparsed answer) is wrong."""
    if len(predicted) != len(gold):
        raise ValueError(f"predicted ({len(predicted)}) and gold ({len(gold)}) differ in length")
    if not gold:
        raise ValueError("gold is empty; accuracy needs at least one question")
    correct = sum(p is not None and p.strip() == g.strip() for p, g in zip(predicted, gold, strict=True))
    return correct / len(gold)


def pick_option_by_loglik(logliks: Sequence[float], lengths: Sequence[int]) -> int:
    """Index of the option with the highest length-normalised log-likelihood `loglik / length`.

    `lengths` are the option continuations' token counts (>= 1). Exact ties go to the lowest index.
    """
    if len(logliks) != len(lengths):
        raise ValueError(f"logliks ({len(logliks)}) and lengths ({len(lengths)}) differ in length")
    if not logliks:
        raise ValueError("logliks is empty; need at least one option")
    if any(n < 1 for n in lengths):
        raise ValueError(f"every length must be >= 1 token; got {list(lengths)}")
    if any(math.isnan(x) for x in logliks):
        raise ValueError(f"logliks contain NaN: {list(logliks)}")
    scores = [x / n for x, n in zip(logliks, lengths, strict=True)]
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


_STANDALONE_CAPITAL = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
# "A"/"I" opening a phrase ("A dog is ...", "I think ...") are words, not option letters.
_WORD_LIKE_LETTER = re.compile(r"[AI] [a-z]")


def parse_choice_letter(answer: str, n_options: int) -> str | None:
    """The first standalone option letter (A, B, ... for n_options options) in generated text, or None.

    Standalone means an upper-case letter not touching another letter, digit or apostrophe: "B", "(B)",
    "B.", "B:" and "The answer is B" give "B". Letters outside the options are skipped ("E" with four
    options), lower-case letters never count, and "A"/"I" followed by a space and a lower-case letter are
    read as English words ("A dog ..."), so "A is correct" is not parsed as A.
    """
    if not 1 <= n_options <= 26:
        raise ValueError(f"n_options must be in 1..26; got {n_options}")
    last = chr(ord("A") + n_options - 1)
    for m in _STANDALONE_CAPITAL.finditer(answer):
        letter = m.group(1)
        if letter > last:
            continue
        if _WORD_LIKE_LETTER.match(answer, m.start()):
            continue
        return letter
    return None

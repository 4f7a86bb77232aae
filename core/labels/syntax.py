"""SEA word lists from a syntactic analysis of the captions: noun phrases and their words (a real parser)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

# The parser is Pattern's shallow parser (Brill tagger + rule-based chunker) as TextBlob ships it on
# PyPI: its lexicon is inside the package, so it works offline (spaCy's and NLTK's models are not on PyPI).
PARSER = "textblob.en.parse (Pattern's Brill tagger and NP chunker)"
# Tags whose words carry content inside a noun phrase: nouns (the object) and adjectives (its attributes).
NOUN_TAGS = ("NN", "NNS", "NNP", "NNPS")
ADJECTIVE_TAGS = ("JJ", "JJR", "JJS")
MIN_LETTERS = 2


def _parse(text: str) -> list[list[list[str]]]:
    from textblob.en import parse

    # [[word, tag, chunk, pnp], ...] per sentence; lemmata off (TextBlob's lemmatiser is broken).
    return parse(text, chunks=True, relations=False, lemmata=False).split()


def noun_phrases(text: str, stop_words: Collection[str] = ()) -> Iterator[list[tuple[str, str]]]:
    """Each noun-phrase chunk of `text` as its content words (lower-cased nouns and adjectives, no stop
    words, letters only), with their tags; chunks with no content word are skipped."""
    for sentence in _parse(text):
        chunk: list[tuple[str, str]] = []
        for word, tag, iob, *_ in [*sentence, ["", "", "O"]]:  # the sentinel flushes the last chunk
            if iob in ("B-NP", "O") or not iob.endswith("NP"):
                if chunk:
                    yield chunk
                chunk = []
            if not iob.endswith("NP"):
                continue
            token = word.lower()
            content = tag in NOUN_TAGS + ADJECTIVE_TAGS and token.isalpha() and len(token) >= MIN_LETTERS
            if content and token not in stop_words:
                chunk.append((token, tag))


def phrase_terms(chunk: list[tuple[str, str]]) -> list[str]:
    """The terms one noun phrase contributes: each noun and adjective, and the phrase itself (its content
    words joined by spaces) when it has two or more words and ends in a noun ("red dog", "wooden chairs")."""
    terms = [token for token, _ in chunk]
    if len(chunk) >= 2 and chunk[-1][1] in NOUN_TAGS:
        terms.append(" ".join(terms))
    return terms


def count_terms(texts: Iterable[str], stop_words: Collection[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        for chunk in noun_phrases(text, stop_words):
            counts.update(phrase_terms(chunk))
    return counts


def syntactic_words(
    json_path: str | Path,
    *,
    min_count: int = 2,
    max_words: int | None = None,
    stop_words: Collection[str] | None = None,
    attribute_words: Collection[str] | None = None,
) -> list[str]:
    """Label words from a syntactic analysis of the answers (``gpt`` turns) of a LLaVA-format dataset.

    Each answer is parsed into noun-phrase chunks; a chunk gives its nouns, its adjectives and, for two
    or more content words ending in a noun, the phrase ("small red dog"). Stop words (function words,
    caption boilerplate) never count. A term is kept when it occurs `min_count` times, or once if it is
    an attribute word; sorted by count descending then alphabetically; cut to `max_words`.
    """
    from core.labels.words import ATTRIBUTE_WORDS, DEFAULT_STOP_WORDS, _gpt_texts, check_count_args

    check_count_args(min_count, max_words)
    stop = {w.lower() for w in (DEFAULT_STOP_WORDS if stop_words is None else stop_words)}
    keep_rare = {w.lower() for w in (ATTRIBUTE_WORDS if attribute_words is None else attribute_words)}
    counts = count_terms(_gpt_texts(Path(json_path)), stop)
    kept = sorted(
        (w for w, c in counts.items() if c >= min_count or w in keep_rare), key=lambda w: (-counts[w], w)
    )
    if not kept:
        raise ValueError(
            f"json_path={json_path}: no noun phrase survives min_count={min_count}; lower min_count or use "
            "another sea.words.source"
        )
    return kept[:max_words] if max_words is not None else kept

"""Word lists for SEA labels: built from a dataset's captions, or read from a user file (one per line)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

from core.config.identity import content_hash

__all__ = [
    "ATTRIBUTE_WORDS",
    "DEFAULT_STOP_WORDS",
    "caption_words",
    "check_words",
    "read_2of12",
    "read_word_list",
    "word_list_hash",
    "write_word_list",
]

# English function words (the usual NLTK-style list, single letters and contraction stubs left out
# because tokens shorter than 2 letters are dropped anyway) ...
_FUNCTION_WORDS = """
about above after again against all also am an and any are as at be because been before being below
between both but by can could did do does doing don down during each few for from further had has have
having he her here hers herself him himself his how if in into is it its itself just me more most my
myself no nor not now of off on once only or other our ours ourselves out over own same she should so
some such than that the their theirs them themselves then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your yours
yourself yourselves
"""
# ... plus caption boilerplate: words about the picture itself, which name no patch's content.
_CAPTION_BOILERPLATE = """
image images picture pictures photo photos photograph photographs shows show showing shown depicts
depicting depicted displays displaying displayed features featuring visible
"""
DEFAULT_STOP_WORDS: frozenset[str] = frozenset((_FUNCTION_WORDS + _CAPTION_BOILERPLATE).split())

# Colour, size and shape words: kept whenever they occur at all, however rare, because they are the
# attributes SEA's labels are meant to carry (SEA appendix C keeps "attribute-related words").
_ATTRIBUTES = """
    red green blue yellow purple orange white black cyan pink brown gray grey silver gold golden beige
    violet magenta teal navy maroon tan turquoise crimson scarlet lime olive ivory cream khaki indigo
    lavender coral amber bronze copper charcoal transparent colorful colourful dark light bright pale
    small large big tiny huge little tall short long wide narrow thick thin giant massive mini miniature
    circle circular square round triangle triangular rectangle rectangular oval star cross diamond ring
    bar line stripe striped dotted spotted checkered curved straight flat pointed cylindrical spherical
    sphere cube cylinder cone hexagon hexagonal heart arrow
"""
ATTRIBUTE_WORDS: frozenset[str] = frozenset(_ATTRIBUTES.split())

_TOKEN = re.compile(r"[^\W\d_]+")  # runs of letters (any script); digits and '_' split tokens
MIN_TOKEN_LENGTH = 2


def check_words(words: Sequence[str], where: str = "words") -> list[str]:
    """The words as a list after checking they can be a word list: non-empty, stripped, one line, unique."""
    if isinstance(words, str):
        raise ValueError(f"{where} must be a list of strings, got the single string {words!r}")
    out = list(words)
    if not out:
        raise ValueError(f"{where} is empty; a word list needs at least one word")
    seen: dict[str, int] = {}
    for i, word in enumerate(out):
        if not isinstance(word, str) or not word.strip() or word != word.strip() or "\n" in word:
            raise ValueError(
                f"{where}[{i}]={word!r}: each word must be a non-empty string on one line without "
                "surrounding whitespace"
            )
        if word in seen:
            raise ValueError(f"{where}[{i}]={word!r} duplicates {where}[{seen[word]}]; words must be unique")
        seen[word] = i
    return out


def word_list_hash(words: Sequence[str]) -> str:
    """A 16-hex-digit hash of the words in order (label indices point into this order)."""
    return content_hash(check_words(words), length=16)


def _gpt_texts(json_path: Path) -> list[str]:
    from core.data.llava_json import load_llava_records  # the one reader and check (core.data)

    texts: list[str] = []
    for record in load_llava_records(json_path, "json_path"):
        turns = record["conversations"]
        texts.extend(
            t["value"]
            for t in turns
            if isinstance(t, dict) and t.get("from") == "gpt" and isinstance(t.get("value"), str)
        )
    return texts


def check_count_args(min_count: int, max_words: int | None) -> None:
    """ValueError unless min_count is an int >= 1 and max_words an int >= 1 or None."""
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count={min_count!r}: must be an int >= 1")
    if max_words is not None and (
        isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1
    ):
        raise ValueError(f"max_words={max_words!r}: must be an int >= 1 or None")


def caption_words(
    json_path: str | Path,
    *,
    min_count: int = 2,
    max_words: int | None = None,
    stop_words: Collection[str] = DEFAULT_STOP_WORDS,
    attribute_words: Collection[str] = ATTRIBUTE_WORDS,
) -> list[str]:
    """Candidate label words from the answers (``gpt`` turns) of a LLaVA-format JSON dataset.

    Rule: lower-case each answer, split it into runs of letters (digits, punctuation and ``_`` split;
    ``"there's"`` gives ``there``, ``s``), drop tokens shorter than 2 letters and every stop word. A word
    is kept when it occurs at least ``min_count`` times, or at least once if it is in
    ``attribute_words`` (colours, sizes, shapes). The result is sorted by count descending, then
    alphabetically, and cut to the first ``max_words`` (attribute words get no protection from the cut).
    Human turns are ignored: they hold prompts ("Describe the image briefly."), not image content.
    """
    check_count_args(min_count, max_words)
    stop = {w.lower() for w in stop_words}
    keep_rare = {w.lower() for w in attribute_words}
    counts: Counter[str] = Counter()
    for text in _gpt_texts(Path(json_path)):
        counts.update(t for t in _TOKEN.findall(text.lower()) if len(t) >= MIN_TOKEN_LENGTH and t not in stop)
    kept = [w for w, c in counts.items() if c >= min_count or w in keep_rare]
    kept.sort(key=lambda w: (-counts[w], w))
    if not kept:
        raise ValueError(
            f"json_path={json_path}: no caption word survives min_count={min_count} and the stop words; "
            "lower min_count or supply a word list"
        )
    return kept[:max_words] if max_words is not None else kept


def read_word_list(path: str | Path) -> list[str]:
    """Words from a text file, one per line; blank lines and lines starting with ``#`` are skipped.

    Each line is stripped; a word may contain inner spaces (a phrase). A duplicate is an error naming
    both lines.
    """
    from core.data.text_files import TextFileError, read_text_file

    path = Path(path).expanduser()
    try:  # a byte-order mark is dropped: glued to the first word, that word would never match a caption
        lines = read_text_file(path, "word list").splitlines()
    except TextFileError as err:
        raise ValueError(f"word list {path}: cannot read it as UTF-8 text ({err})") from None
    words: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if word in first_line:
            raise ValueError(
                f"word list {path}: line {number} repeats {word!r} from line {first_line[word]}; "
                "remove the duplicate (label indices must name one word each)"
            )
        first_line[word] = number
        words.append(word)
    if not words:
        raise ValueError(f"word list {path}: no words (only blank or '#' lines)")
    return words


def write_word_list(words: Sequence[str], path: str | Path) -> None:
    """Write ``words`` one per line (UTF-8), readable back by :func:`read_word_list`."""
    words = check_words(words)
    bad = [w for w in words if w.startswith("#")]
    if bad:
        raise ValueError(f"words {bad[:3]!r} start with '#', which read_word_list would skip as comments")
    Path(path).write_text("".join(f"{w}\n" for w in words), encoding="utf-8")


# The 2of12 list of Alan Beale's 12dicts (SEA preprint, appendix: "2of12 ... containing 41,242 words").
TWO_OF_TWELVE_COUNT = 41_242
DEFAULT_2OF12_PATH = "data/words/2of12.txt"
TWO_OF_TWELVE_SOURCE = (
    "the 12dicts package (wordlist.aspell.net/12dicts, or the 'American' folder of a 12dicts release on "
    "SourceForge): its 2of12.txt, one word per line"
)


def read_2of12(path: str | Path) -> list[str]:
    """The 2of12 list from `path`, checked to hold the paper's 41,242 words."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(
            f"sea.words.path={path}: no such file; put the 2of12 list there (from {TWO_OF_TWELVE_SOURCE})"
        )
    words = read_word_list(path)
    if len(words) != TWO_OF_TWELVE_COUNT:
        raise ValueError(
            f"sea.words.path={path}: {len(words)} words, but the papers' 2of12 list has "
            f"{TWO_OF_TWELVE_COUNT}; use that list, or sea.words.source 'file' for another one"
        )
    return words


def join_words(first: Sequence[str], then: Sequence[str]) -> list[str]:
    """`first` in its order, then the words of `then` not already in it (label indices stay stable)."""
    seen = set(first)
    return [*first, *(w for w in then if w not in seen)]

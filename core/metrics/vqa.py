"""VQA accuracy as the official VQA evaluator computes it (PythonHelperTools/vqaEvaluation/vqaEval.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence

VQA_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

VQA_MANUAL_MAP: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

VQA_ARTICLES = frozenset({"a", "an", "the"})

# Official pattern, bug included: "(?!<=\d)" is a lookahead for the literal "<=", not a lookbehind, so in
# effect every '.' not followed by a digit is removed ("dog." -> "dog", "1." -> "1", "3.5" kept).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCT = (
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# The official code passes re.UNICODE (= 32) positionally to Pattern.sub, i.e. as `count`.
_PERIOD_STRIP_COUNT = int(re.UNICODE)


def _process_punctuation(in_text: str) -> str:
    out_text = in_text
    # Conditions look at the original text, as in the official code: a punctuation mark touching a
    # space, or any digit,digit anywhere, makes every occurrence vanish; otherwise it becomes a space.
    has_digit_comma = _COMMA_STRIP.search(in_text) is not None
    for p in _PUNCT:
        if p + " " in in_text or " " + p in in_text or has_digit_comma:
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return _PERIOD_STRIP.sub("", out_text, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(in_text: str) -> str:
    words = [VQA_MANUAL_MAP.get(w, w) for w in in_text.lower().split()]
    words = [w for w in words if w not in VQA_ARTICLES]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(s: str) -> str:
    """The official VQA evaluator's answer normalisation (newline/tab to space, strip, processPunctuation,
    processDigitArticle): "Two" -> "2", "the dog." -> "dog", "dont" -> "don't", "yes!" -> "yes",
    "1,000" -> "1000", "none" -> "0". Apostrophes and ':' are kept ("dog's" stays)."""
    text = s.replace("\n", " ").replace("\t", " ").strip()
    return _process_digit_article(_process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy: mean over leave-one-out subsets of min(1, matches among the other answers / 3).

    Works with any number (>= 1) of reference answers: one subset per reference, each leaving that
    reference out (with a single reference the only subset is empty, so the score is 0). Both sides are
    always normalised; the official script skips normalisation when all references are identical, which
    only matters for predictions that normalisation would change (e.g. "Two" vs ten "2"s).
    """
    if len(answers) == 0:
        raise ValueError("answers is empty; VQA accuracy needs at least one reference answer")
    pred = normalize_vqa_answer(prediction)
    matches = [normalize_vqa_answer(a) == pred for a in answers]
    total = sum(matches)
    accs = [min(1.0, (total - int(m)) / 3.0) for m in matches]
    return sum(accs) / len(accs)


# ---------------------------------------------------------------------------------------------------------
# Multiple choice (MMBench, ScienceQA-IMG, MMLU)
# ---------------------------------------------------------------------------------------------------------

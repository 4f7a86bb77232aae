"""Alignment diagnostics (nearest word, modality gap, TACS, label recall) and benchmark answer scoring."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_SIZE = 8192

# ---------------------------------------------------------------------------------------------------------
# Embedding-space diagnostics (REFERENCE.md section 5)
# ---------------------------------------------------------------------------------------------------------


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    # bf16/fp16 cosines are too coarse to rank 32k words; float64 inputs keep float64.
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_visual_vocab(visual: torch.Tensor, vocab: torch.Tensor, chunk_size: int) -> None:
    if visual.dim() < 2:
        raise ValueError(f"visual must have shape [..., m, D]; got shape {tuple(visual.shape)}")
    if vocab.dim() != 2:
        raise ValueError(f"vocab must have shape [q, D]; got shape {tuple(vocab.shape)}")
    if vocab.shape[0] == 0:
        raise ValueError("vocab is empty (q = 0); pass at least one word embedding")
    if visual.shape[-1] != vocab.shape[-1]:
        raise ValueError(
            f"visual last dim {visual.shape[-1]} != vocab dim {vocab.shape[-1]}; "
            "both must live in the LLM input-embedding space"
        )
    if visual.device != vocab.device:
        raise ValueError(f"visual is on {visual.device} but vocab on {vocab.device}; move them together")
    if not visual.is_floating_point() or not vocab.is_floating_point():
        raise ValueError(f"visual and vocab must be floating point; got {visual.dtype} and {vocab.dtype}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")


@torch.no_grad()
def nearest_words(
    visual: torch.Tensor, vocab: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each visual token, the vocab row of highest cosine similarity (SEA Eq. 4) and that similarity.

    visual `[..., m, D]`, vocab `[q, D]` -> (index int64 `[..., m]`, sim `[..., m]`). The vocabulary is
    processed `chunk_size` rows at a time with a running maximum, so memory is `O(tokens * chunk_size)`.
    Ties go to the lowest vocab index (a later chunk must be strictly better to win). A zero vector has
    cosine 0 with everything (`F.normalize` clamps its norm) rather than NaN. The index refers to the
    row order of `vocab`, so label recall needs the same word list in the same order.
    """
    _check_visual_vocab(visual, vocab, chunk_size)
    dtype = _compute_dtype(visual, vocab)
    lead = visual.shape[:-1]
    x = F.normalize(visual.reshape(-1, visual.shape[-1]).to(dtype), dim=-1)
    best_sim = torch.full((x.shape[0],), -math.inf, dtype=dtype, device=x.device)
    best_idx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, vocab.shape[0], chunk_size):
        w = F.normalize(vocab[start : start + chunk_size].to(dtype), dim=-1)
        sim, idx = (x @ w.T).max(dim=-1)
        better = sim > best_sim
        best_sim = torch.where(better, sim, best_sim)
        best_idx = torch.where(better, idx + start, best_idx)
    return best_idx.reshape(lead), best_sim.reshape(lead)


@torch.no_grad()
def nearest_word_distance(
    visual: torch.Tensor, vocab: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Per visual token, `min_w || x_j - Psi(w) ||_2` (the summand of SEA Eq. 5): `[..., m]`.

    The nearest row is found with the matmul expansion `|x|^2 + |w|^2 - 2 x.w` (fast, chunked), then the
    distance to that row is recomputed directly from `x - w`, so the reported value carries no
    cancellation error; only a near-tie between two rows can be resolved either way.
    """
    _check_visual_vocab(visual, vocab, chunk_size)
    dtype = _compute_dtype(visual, vocab)
    lead = visual.shape[:-1]
    x = visual.reshape(-1, visual.shape[-1]).to(dtype)
    x_sq = (x * x).sum(-1)
    best = torch.full((x.shape[0],), math.inf, dtype=dtype, device=x.device)
    best_idx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, vocab.shape[0], chunk_size):
        w = vocab[start : start + chunk_size].to(dtype)
        d2 = x_sq[:, None] + (w * w).sum(-1)[None, :] - 2.0 * (x @ w.T)
        d2_min, idx = d2.min(dim=-1)
        better = d2_min < best
        best = torch.where(better, d2_min, best)
        best_idx = torch.where(better, idx + start, best_idx)
    nearest = vocab.index_select(0, best_idx).to(dtype)
    return torch.linalg.vector_norm(x - nearest, dim=-1).reshape(lead)


def modality_gap(visual: torch.Tensor, vocab: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """SEA Eq. 5: `D = mean_j min_w || x_j - Psi(w) ||_2` over every visual token given (`[..., m, D]`).

    To aggregate over several batches, sum `nearest_word_distance` and count tokens instead of averaging
    per-batch gaps (batches of unequal size would be mis-weighted).
    """
    dist = nearest_word_distance(visual, vocab, chunk_size)
    if dist.numel() == 0:
        raise ValueError(f"visual holds no tokens (shape {tuple(visual.shape)}); the gap is undefined")
    return float(dist.mean())


@torch.no_grad()
def tacs(
    visual: torch.Tensor, text: torch.Tensor, k: int = 10, text_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Token Alignment Consistency Score per image (SEA Eq. 14/17): `[B]`.

    For each visual token, the highest cosine similarity to any (unmasked) text token of the paired
    caption; the score is the mean of the `k` highest of those maxima. With fewer than `k` visual tokens
    (m < k) all m are averaged. `text_mask` `[B, n]` is True for real tokens; padded ones never count.
    The paper's number is the mean of this over the evaluation images (the caller averages).
    """
    if visual.dim() != 3 or text.dim() != 3:
        raise ValueError(
            f"visual must be [B, m, D] and text [B, n, D]; got {tuple(visual.shape)} and {tuple(text.shape)}"
        )
    if visual.shape[0] != text.shape[0] or visual.shape[-1] != text.shape[-1]:
        raise ValueError(
            f"visual {tuple(visual.shape)} and text {tuple(text.shape)} must agree on batch size B and dim D"
        )
    if visual.shape[1] == 0 or text.shape[1] == 0:
        raise ValueError(
            f"need m >= 1 visual and n >= 1 text tokens; got m={visual.shape[1]}, n={text.shape[1]}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    dtype = _compute_dtype(visual, text)
    v = F.normalize(visual.to(dtype), dim=-1)
    t = F.normalize(text.to(dtype), dim=-1)
    sim = v @ t.transpose(1, 2)  # [B, m, n]
    if text_mask is not None:
        if text_mask.shape != text.shape[:2] or text_mask.dtype != torch.bool:
            raise ValueError(
                f"text_mask must be a bool tensor of shape {tuple(text.shape[:2])} (True = real token); "
                f"got {text_mask.dtype} {tuple(text_mask.shape)}"
            )
        empty = ~text_mask.any(dim=1)
        if bool(empty.any()):
            rows = empty.nonzero().flatten().tolist()
            raise ValueError(
                f"text_mask masks every text token of batch rows {rows}; TACS is undefined there"
            )
        sim = sim.masked_fill(~text_mask[:, None, :].to(sim.device), -math.inf)
    best_per_visual = sim.max(dim=-1).values  # [B, m]
    top = best_per_visual.topk(min(k, best_per_visual.shape[1]), dim=-1).values
    return top.mean(dim=-1)


@dataclass(frozen=True)
class LabelRecallCounts:
    """Hits and labelled visual tokens behind label recall@1; add counts across batches, then `.recall`."""

    hits: int
    labelled: int

    def __add__(self, other: LabelRecallCounts) -> LabelRecallCounts:
        return LabelRecallCounts(self.hits + other.hits, self.labelled + other.labelled)

    @property
    def recall(self) -> float:
        if self.labelled == 0:
            raise ValueError("no visual token has a semantic label; label recall@1 is undefined")
        return self.hits / self.labelled


@torch.no_grad()
def label_recall_counts(nearest: torch.Tensor, label_index: torch.Tensor) -> LabelRecallCounts:
    """Count visual tokens whose nearest word is among their labels, and tokens with at least one label.

    nearest `[B, m]` word ids (from `nearest_words` over the label word list), label_index `[B, m, n]`
    (-1 = empty slot). Tokens without any label are left out of both counts.
    """
    if label_index.dim() != 3 or nearest.shape != label_index.shape[:2]:
        raise ValueError(
            f"nearest must be [B, m] and label_index [B, m, n] with matching B, m; "
            f"got {tuple(nearest.shape)} and {tuple(label_index.shape)}"
        )
    if nearest.is_floating_point() or label_index.is_floating_point():
        raise ValueError(
            f"nearest and label_index must be integer ids; got {nearest.dtype}, {label_index.dtype}"
        )
    if nearest.numel() and int(nearest.min()) < 0:
        raise ValueError("nearest holds negative word ids; -1 is reserved for empty label slots")
    valid = label_index >= 0
    labelled = valid.any(dim=-1)
    hit = ((label_index == nearest.to(label_index.device)[..., None]) & valid).any(dim=-1)
    return LabelRecallCounts(hits=int((hit & labelled).sum()), labelled=int(labelled.sum()))


def label_recall_at1(nearest: torch.Tensor, label_index: torch.Tensor) -> float:
    """Fraction of labelled visual tokens whose nearest word is one of the patch's semantic labels.

    Only tokens with at least one label are in the denominator; raises ValueError when there are none.
    """
    return label_recall_counts(nearest, label_index).recall


# ---------------------------------------------------------------------------------------------------------
# POPE (REFERENCE.md section 6; LLaVA's llava/eval/eval_pope.py)
# ---------------------------------------------------------------------------------------------------------

_POPE_NO_WORDS = frozenset({"No", "not", "no"})
POPE_SPLITS = ("adversarial", "popular", "random")


def parse_yes_no(answer: str) -> str:
    """LLaVA's POPE answer rule: "no" if a word of the first sentence is `No`, `not` or `no`, else "yes".

    Exactly eval_pope.py: keep the text before the first '.', delete ',', split on single spaces, compare
    whole words case-sensitively. Consequences kept on purpose for comparability with published numbers:
    "Not sure" and "NO" count as "yes" (only `No`/`not`/`no` match), "No!" and "no\\nit is" count as "yes"
    (punctuation other than ',' and newlines stay attached to the word), and anything without a
    negation word, including empty or off-topic text, is "yes".
    """
    text = answer.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in _POPE_NO_WORDS for w in words) else "yes"


@dataclass(frozen=True)
class PopeCounts:
    """Confusion matrix with "yes" as the positive class."""

    tp: int
    fp: int
    tn: int
    fn: int


def _pope_label(label: str) -> bool:
    norm = label.strip().lower()
    if norm not in ("yes", "no"):
        raise ValueError(f"POPE label must be 'yes' or 'no'; got {label!r}")
    return norm == "yes"


def pope_counts(predictions: Sequence[str], labels: Sequence[str]) -> PopeCounts:
    """Parse raw answers with `parse_yes_no` and count them against "yes"/"no" labels."""
    if len(predictions) != len(labels):
        raise ValueError(f"predictions ({len(predictions)}) and labels ({len(labels)}) differ in length")
    if not predictions:
        raise ValueError("predictions is empty; POPE metrics need at least one answer")
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels, strict=True):
        yes_pred = parse_yes_no(pred) == "yes"
        yes_true = _pope_label(label)
        if yes_pred and yes_true:
            tp += 1
        elif yes_pred:
            fp += 1
        elif yes_true:
            fn += 1
        else:
            tn += 1
    return PopeCounts(tp=tp, fp=fp, tn=tn, fn=fn)


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio ("yes" positive) of raw answers against labels.

    Zero divisions are defined as 0.0 (precision with no predicted "yes", recall with no true "yes",
    F1 when precision + recall = 0); LLaVA's script would raise ZeroDivisionError there.
    """
    c = pope_counts(predictions, labels)
    n = c.tp + c.fp + c.tn + c.fn
    precision = c.tp / (c.tp + c.fp) if c.tp + c.fp else 0.0
    recall = c.tp / (c.tp + c.fn) if c.tp + c.fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (c.tp + c.tn) / n,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (c.tp + c.fp) / n,
    }


def pope_headline(split_metrics: Mapping[str, Mapping[str, float]]) -> float:
    """Mean F1 over the splits given (normally adversarial, popular and random)."""
    if not split_metrics:
        raise ValueError("split_metrics is empty; pass {split_name: pope_metrics(...)} for each split")
    missing = [name for name, m in split_metrics.items() if "f1" not in m]
    if missing:
        raise ValueError(f"splits {missing} have no 'f1' entry; build them with pope_metrics")
    return sum(float(m["f1"]) for m in split_metrics.values()) / len(split_metrics)


# ---------------------------------------------------------------------------------------------------------
# VQA accuracy (official VQA evaluator, PythonHelperTools/vqaEvaluation/vqaEval.py)
# ---------------------------------------------------------------------------------------------------------

# The official table verbatim, including its oddities ("somebody'd" -> "somebodyd", capitalised keys that
# can never match lower-cased text), so scores stay comparable.
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

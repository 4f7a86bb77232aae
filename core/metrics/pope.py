"""POPE scoring (REFERENCE.md section 6; LLaVA's llava/eval/eval_pope.py): yes/no parsing, counts, F1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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

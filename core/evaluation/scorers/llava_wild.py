"""LLaVA-Bench-in-the-Wild: questions/context/GPT-4 answers, the question as prompt, LLaVA's GPT review score."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.evaluation.scorers.common import (
    DataFile,
    Family,
    ScorerInputError,
    field,
    predictions_for,
    read_jsonl,
    require,
)
from core.evaluation.scorers.judge import Judge, JudgeConfig, JudgedMetrics

RELATIVE = "relative"  # 100 x mean model score / mean reference score (LLaVA's headline)
REFERENCE_SCORE = "reference_score"  # 10 x mean judge score of the GPT-4 answers
MODEL_SCORE = "model_score"  # 10 x mean judge score of the model's answers
UNPARSED = "unparsed_reviews"  # reviews whose first line is not two numbers (scored -1, -1 as LLaVA does)
CATEGORY_PREFIX = "category/"  # f"{CATEGORY_PREFIX}{conv|detail|complex}/{RELATIVE}"
CATEGORIES = ("conv", "detail", "complex")
METRICS: tuple[str, ...] = (RELATIVE, REFERENCE_SCORE, MODEL_SCORE, UNPARSED)

REVIEWER_MODEL = "gpt-4-0314"  # LLaVA's eval_gpt_review_bench.py; the spec may name another judge
TEMPERATURE = 0.2
MAX_TOKENS = 1024
SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
ROLE = "Assistant"
# LLaVA's rule.json "llava_bench_{conv,detail,complex}" prompt (the same text for the three), verbatim.
RULE = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user "
    "question displayed above. The user asks the question on observing an image. For your reference, the "
    "visual content in the image is represented with a few sentences describing the image. \nPlease rate the "
    "helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives an "
    "overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\nPlease "
    "first output a single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space.\nIn the subsequent line, please provide a "
    "comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in "
    "which the responses were presented does not affect your judgment."
)

FILES = (
    DataFile(
        "questions",
        "llava-bench-in-the-wild/questions.jsonl",
        "https://huggingface.co/datasets/liuhaotian/llava-bench-in-the-wild",
    ),
    DataFile(
        "context",
        "llava-bench-in-the-wild/context.jsonl",
        "https://huggingface.co/datasets/liuhaotian/llava-bench-in-the-wild",
    ),
    DataFile(
        "answers",
        "llava-bench-in-the-wild/answers_gpt4.jsonl",
        "https://huggingface.co/datasets/liuhaotian/llava-bench-in-the-wild",
    ),
    DataFile(
        "images",
        "llava-bench-in-the-wild/images/",
        "https://huggingface.co/datasets/liuhaotian/llava-bench-in-the-wild",
    ),
)


@dataclass(frozen=True)
class WildSample:
    id: str
    image: Path
    question: str
    category: str
    context: str  # the image's caption(s), one per line
    reference: str  # GPT-4's answer


def read(paths: Mapping[str, Path]) -> list[WildSample]:
    files = require(paths, FILES)
    context = {}
    for row in read_jsonl(files["context"]):
        caption = field(row, "caption", str(files["context"]))
        context[row["image"]] = "\n".join(caption) if isinstance(caption, list) else str(caption)
    refs = {str(r["question_id"]): str(r["text"]) for r in read_jsonl(files["answers"])}
    out = []
    for n, q in enumerate(read_jsonl(files["questions"]), 1):
        where = f"{files['questions']}:{n}"
        qid = str(field(q, "question_id", where))
        image = field(q, "image", where)
        if image not in context or qid not in refs:
            raise ScorerInputError(f"{where}: question {qid} has no context caption or no GPT-4 answer")
        out.append(
            WildSample(qid, files["images"] / image, q["text"], q["category"], context[image], refs[qid])
        )
    return out


def prompt(sample: WildSample) -> str:
    return sample.question


def review_content(sample: WildSample, prediction: str) -> str:
    """eval_gpt_review_bench.py's message: context, question, GPT-4's answer (1), the model's (2), the rule."""
    return (
        f"[Context]\n{sample.context}\n\n"
        f"[Question]\n{sample.question}\n\n"
        f"[{ROLE} 1]\n{sample.reference}\n\n[End of {ROLE} 1]\n\n"
        f"[{ROLE} 2]\n{prediction}\n\n[End of {ROLE} 2]\n\n"
        f"[System]\n{RULE}\n\n"
    )


def parse_scores(review: str) -> tuple[float, float]:
    """LLaVA's parse_score: the first line, ',' as space, split on single spaces; exactly two numbers or
    (-1, -1)."""
    parts = review.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return (-1.0, -1.0)
    try:
        return (float(parts[0]), float(parts[1]))
    except ValueError:
        return (-1.0, -1.0)


def _summary(pairs: list[tuple[float, float]]) -> dict[str, float]:
    # summarize_gpt_review.py: means rounded to 3 places, relative = 100 * model / reference.
    ref = round(sum(p[0] for p in pairs) / len(pairs), 3)
    model = round(sum(p[1] for p in pairs) / len(pairs), 3)
    return {RELATIVE: 100.0 * model / ref if ref else 0.0, REFERENCE_SCORE: 10 * ref, MODEL_SCORE: 10 * model}


def score(
    samples: Sequence[WildSample], predictions: Mapping[str, str], judge: Judge | None = None
) -> JudgedMetrics:
    """Judge every answer against GPT-4's; LLaVA's summary overall and per category. Unparsable reviews
    count as (-1, -1) in the means, as LLaVA's summary does; their number is reported."""
    preds = predictions_for(samples, predictions)
    judge = judge or Judge(JudgeConfig.from_env())
    pairs: list[tuple[float, float]] = []
    for s, p in zip(samples, preds, strict=True):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": review_content(s, p)}]
        pairs.append(parse_scores(judge.complete(messages, TEMPERATURE, MAX_TOKENS)))
    out = _summary(pairs)
    out[UNPARSED] = float(sum(p == (-1.0, -1.0) for p in pairs))
    for cat in sorted({s.category for s in samples}):
        mine = [pair for s, pair in zip(samples, pairs, strict=True) if s.category == cat]
        out.update({f"{CATEGORY_PREFIX}{cat}/{k}": v for k, v in _summary(mine).items()})
    return JudgedMetrics(out, judge.model)


FAMILY = Family("llava_wild", FILES, read, prompt, score, METRICS, RELATIVE, "long_answer", needs_judge=True)

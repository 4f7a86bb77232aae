"""MM-Vet: mm-vet.json, the question as prompt, and MM-Vet's GPT grader (its few-shot prompt, 0..1 per answer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.evaluation.scorers.common import (
    DataFile,
    Family,
    ScorerInputError,
    field,
    load_json,
    predictions_for,
    require,
)
from core.evaluation.scorers.judge import Judge, JudgeConfig, JudgedMetrics

TOTAL = "total"
CAPABILITY_PREFIX = "capability/"
CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
METRICS: tuple[str, ...] = (TOTAL, *(f"{CAPABILITY_PREFIX}{c}" for c in CAPABILITIES))
GRADER_MODEL = "gpt-4-0613"  # the model MM-Vet's paper grades with; the spec may name another judge
MAX_TOKENS = 3
RETRIES = 4  # after the first reply: MM-Vet's grader gives up (score 0.0) on the fifth unparsable reply
RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "

FILES = (
    DataFile("annotations", "mm-vet/mm-vet.json", "https://github.com/yuweihao/MM-Vet (mm-vet.zip)"),
    DataFile("images", "mm-vet/images/", "https://github.com/yuweihao/MM-Vet (mm-vet.zip)"),
)

# MM-Vet's grader prompt (mm-vet_evaluator), verbatim: results are only comparable with it.
GRADER_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""


@dataclass(frozen=True)
class MmVetSample:
    id: str  # v1_0 ...
    image: Path
    question: str
    answer: str
    capabilities: tuple[str, ...]


def read(paths: Mapping[str, Path]) -> list[MmVetSample]:
    files = require(paths, FILES)
    data = load_json(files["annotations"])
    if not isinstance(data, dict) or not data:
        raise ScorerInputError(
            f"{files['annotations']}: expected an object of questions keyed v1_0, v1_1, ..."
        )
    out = []
    for sid, q in data.items():
        where = f"{files['annotations']}: {sid}"
        caps = tuple(field(q, "capability", where))
        out.append(
            MmVetSample(sid, files["images"] / field(q, "imagename", where), q["question"], q["answer"], caps)
        )
    return out


def prompt(sample: MmVetSample) -> str:
    """LLaVA-1.5 asks MM-Vet's question as is (llava-mm-vet.jsonl)."""
    return sample.question


def grader_query(sample: MmVetSample, prediction: str) -> str:
    answer = sample.answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return GRADER_PROMPT + "\n" + " | ".join([sample.question, answer, prediction, ""])


def parse_grade(reply: str) -> float | None:
    """The grader's first space-separated token as a number in [0, 1], else None."""
    try:
        value = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def grade(judge: Judge, sample: MmVetSample, prediction: str) -> float:
    """MM-Vet's grading loop: temperature 0; on an unparsable reply ask again with the digit suffix at
    temperature 0, 0.5, 1.0, 1.5; after that 0.0."""
    query = grader_query(sample, prediction)
    value = parse_grade(judge.complete([{"role": "user", "content": query}], 0.0, MAX_TOKENS))
    for attempt in range(RETRIES):
        if value is not None:
            return value
        message = [{"role": "user", "content": query + RETRY_SUFFIX}]
        value = parse_grade(judge.complete(message, 0.5 * attempt, MAX_TOKENS))
    return 0.0 if value is None else value


def score(
    samples: Sequence[MmVetSample], predictions: Mapping[str, str], judge: Judge | None = None
) -> JudgedMetrics:
    """100 x mean grade overall and per capability (a question counts for every capability it lists)."""
    preds = predictions_for(samples, predictions)
    judge = judge or Judge(JudgeConfig.from_env())
    grades = [grade(judge, s, p) for s, p in zip(samples, preds, strict=True)]
    out = {TOTAL: 100.0 * sum(grades) / len(grades)}
    for cap in CAPABILITIES:
        mine = [g for s, g in zip(samples, grades, strict=True) if cap in s.capabilities]
        if mine:
            out[f"{CAPABILITY_PREFIX}{cap}"] = 100.0 * sum(mine) / len(mine)
    return JudgedMetrics(out, judge.model)


FAMILY = Family("mmvet", FILES, read, prompt, score, METRICS, TOTAL, "long_answer", needs_judge=True)

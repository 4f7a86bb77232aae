"""COCO caption scores from pycocoevalcap (Java PTB tokenizer) against CIDEr-D and ROUGE-L written from their
definitions here, on captions the tokenizer leaves unchanged."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from core.evaluation.scorers import captions
from core.evaluation.scorers.common import ScorerInputError

REFS = {
    1: ["a dog runs on the grass", "a brown dog running in a field"],
    2: ["two cats sleep on a sofa", "cats lying on a couch"],
    3: ["a man rides a red bike", "a person on a bicycle in the street"],
}
PREDS = {"1": "a dog running on grass", "2": "a cat on a sofa", "3": "a man on a bike in the street"}


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _cider_d(preds: dict[str, str], refs: dict[str, list[str]]) -> float:
    # CIDEr-D (Vedantam et al.; the COCO variant): tf-idf n-gram vectors (n = 1..4), idf from how many
    # images' reference sets hold the n-gram, candidate counts clipped by the reference's, a Gaussian
    # length penalty (sigma 6), averaged over n and references, times 10; mean over images.
    n_images = len(refs)
    df: Counter = Counter()
    for rs in refs.values():
        df.update({g for r in rs for n in range(1, 5) for g in _ngrams(r.split(), n)})

    def vec(words: list[str], n: int) -> dict:
        return {g: c * (math.log(n_images) - math.log(max(1.0, df[g]))) for g, c in _ngrams(words, n).items()}

    total = 0.0
    for key, pred in preds.items():
        hyp = pred.split()
        per_ref = []
        for ref in refs[key]:
            rw = ref.split()
            sims = []
            for n in range(1, 5):
                vh, vr = vec(hyp, n), vec(rw, n)
                dot = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vh.items())
                nh = math.sqrt(sum(v * v for v in vh.values()))
                nr = math.sqrt(sum(v * v for v in vr.values()))
                sim = dot / (nh * nr) if nh and nr else 0.0
                sims.append(sim * math.exp(-((len(hyp) - len(rw)) ** 2) / (2 * 36.0)))
            per_ref.append(sum(sims) / 4)
        total += 10.0 * sum(per_ref) / len(per_ref)
    return total / len(preds)


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _rouge_l(preds: dict[str, str], refs: dict[str, list[str]], beta: float = 1.2) -> float:
    # ROUGE-L as COCO computes it: best LCS precision and best LCS recall over the references, F-beta.
    scores = []
    for key, pred in preds.items():
        hyp = pred.split()
        prec = max(_lcs(hyp, r.split()) / len(hyp) for r in refs[key])
        rec = max(_lcs(hyp, r.split()) / len(r.split()) for r in refs[key])
        scores.append((1 + beta**2) * prec * rec / (rec + beta**2 * prec) if prec and rec else 0.0)
    return sum(scores) / len(scores)


def _coco_files(tmp: Path) -> dict[str, Path]:
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in REFS],
        "annotations": [
            {"id": 10 * i + k, "image_id": i, "caption": c}
            for i, cs in REFS.items()
            for k, c in enumerate(cs)
        ],
    }
    (tmp / "captions_val2017.json").write_text(json.dumps(data))
    (tmp / "val2017").mkdir()
    return {"annotations": tmp / "captions_val2017.json", "images": tmp / "val2017"}


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_coco_caption_scores_match_the_definitions(tmp_path: Path) -> None:
    samples = captions.read(_coco_files(tmp_path))
    assert [s.id for s in samples] == ["1", "2", "3"] and samples[0].image.name == "000000000001.jpg"
    assert captions.prompt(samples[0]) == "Provide a one-sentence caption for the provided image."
    metrics = captions.score(samples, PREDS)
    assert set(captions.METRICS) <= set(metrics)
    refs = {str(k): v for k, v in REFS.items()}
    assert metrics[captions.CIDER] == pytest.approx(_cider_d(PREDS, refs), rel=1e-9)
    assert metrics[captions.ROUGE_L] == pytest.approx(_rouge_l(PREDS, refs), rel=1e-9)
    assert 0 < metrics[captions.METEOR] < 1 and 0 < metrics[captions.BLEU_4] < metrics[captions.BLEU_1] <= 1


def test_caption_scoring_without_java_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = captions.read(_coco_files(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on this PATH
    with pytest.raises(ScorerInputError, match="needs a Java runtime"):
        captions.score(samples, PREDS)


def test_caption_image_without_references_is_reported(tmp_path: Path) -> None:
    files = _coco_files(tmp_path)
    data = json.loads(files["annotations"].read_text())
    data["images"].append({"id": 99, "file_name": "x.jpg"})
    files["annotations"].write_text(json.dumps(data))
    with pytest.raises(ScorerInputError, match="image 99 has no caption annotations"):
        captions.read(files)

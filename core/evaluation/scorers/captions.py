"""COCO captions: COCO-format annotations, the caption prompt, and pycocoevalcap's BLEU/METEOR/ROUGE-L/CIDEr(/SPICE)."""

from __future__ import annotations

import shutil
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

BLEU_1, BLEU_2, BLEU_3, BLEU_4 = "bleu_1", "bleu_2", "bleu_3", "bleu_4"
METEOR = "meteor"
ROUGE_L = "rouge_l"
CIDER = "cider"
SPICE = "spice"  # only with spice=True: SPICE fetches Stanford CoreNLP models on first use (network)
METRICS: tuple[str, ...] = (BLEU_1, BLEU_2, BLEU_3, BLEU_4, METEOR, ROUGE_L, CIDER)

# lmms-eval's COCO caption prompt (LLaVA-1.5 has no caption evaluation of its own).
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."

FILES = (
    DataFile(
        "annotations",
        "annotations/captions_val2017.json (or captions_val2014.json, or a Karpathy split in COCO format)",
        "https://cocodataset.org/#download (2017 Train/Val annotations)",
    ),
    DataFile("images", "val2017/ (or val2014/)", "https://cocodataset.org/#download"),
)


@dataclass(frozen=True)
class CaptionSample:
    id: str  # the COCO image id
    image: Path
    references: tuple[str, ...]


def read(paths: Mapping[str, Path]) -> list[CaptionSample]:
    files = require(paths, FILES)
    data = load_json(files["annotations"])
    where = str(files["annotations"])
    refs: dict[int, list[str]] = {}
    for ann in field(data, "annotations", where):
        refs.setdefault(int(ann["image_id"]), []).append(str(ann["caption"]))
    out = []
    for img in field(data, "images", where):
        iid = int(img["id"])
        if iid not in refs:
            raise ScorerInputError(f"{where}: image {iid} has no caption annotations")
        out.append(CaptionSample(str(iid), files["images"] / img["file_name"], tuple(refs[iid])))
    if not out:
        raise ScorerInputError(f"{where}: no images")
    return out


def prompt(sample: CaptionSample) -> str:
    return CAPTION_PROMPT


def require_java() -> None:
    """Raise ScorerInputError naming the fix when no `java` is on PATH (`just data` can call this too)."""
    if shutil.which("java") is None:
        raise ScorerInputError(
            "COCO caption scoring needs a Java runtime (pycocoevalcap's PTB tokenizer and METEOR): "
            "install one, e.g. `apt-get install default-jre-headless`"
        )


def score(
    samples: Sequence[CaptionSample], predictions: Mapping[str, str], spice: bool = False
) -> dict[str, float]:
    """pycocoevalcap as COCO's caption evaluation runs it: PTB-tokenise references and predictions
    (Java), then BLEU-1..4, METEOR, ROUGE-L, CIDEr (and SPICE when asked) over the whole set."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java()
    preds = predictions_for(samples, predictions)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({s.id: [{"caption": r} for r in s.references] for s in samples})
    # A blank line would shift the tokenizer's line-to-image mapping; an empty caption scores as "".
    res = tokenizer.tokenize(
        {s.id: [{"caption": p.strip() or "."}] for s, p in zip(samples, preds, strict=True)}
    )
    bleu, _ = Bleu(4).compute_score(gts, res)
    out = dict(zip((BLEU_1, BLEU_2, BLEU_3, BLEU_4), map(float, bleu), strict=True))
    meteor = Meteor()  # a Java subprocess; its __del__ ends it
    out[METEOR] = float(meteor.compute_score(gts, res)[0])
    del meteor
    out[ROUGE_L] = float(Rouge().compute_score(gts, res)[0])
    out[CIDER] = float(Cider().compute_score(gts, res)[0])
    if spice:
        from pycocoevalcap.spice.spice import Spice

        out[SPICE] = float(Spice().compute_score(gts, res)[0])
    return out


FAMILY = Family("coco_caption", FILES, read, prompt, score, METRICS, CIDER, "caption")

"""Deterministic synthetic evaluation sets (POPE, VQA, multiple choice, text MC, held-out captions) in benchmark file formats."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.cache import build_once
from core.data.synthetic import (
    COLOURS,
    GENERATOR_VERSION,
    SHAPES,
    PlacedObject,
    SyntheticSpec,
    check_drawing,
    draw_sample,
    located,
    spec_digest,
)
from core.data.synthetic_instruct import MIXES, NUMBER_WORDS, QUESTIONS, SIDES
from core.paths import cache_dir

# Bump when any eval file's content or layout changes, so cached sets built by older code are not reused.
EVAL_GENERATOR_VERSION = 1

# Evaluation images are drawn with draw_sample at indices from here on. Training sets use indices
# 0..num_samples-1 of the same per-(seed, index) RNG streams, so no eval image is ever a training
# image, whatever seed either side uses (as long as a training set has fewer than 10**9 samples).
EVAL_INDEX_OFFSET = 10**9

POPE_SPLITS: tuple[str, ...] = ("adversarial", "popular", "random")
SHORT_ANSWER = "Answer the question using a single word or phrase."
# The word list of the synthetic world: what visual tokens of the held-out images are compared with.
SYNTHETIC_WORDS: tuple[str, ...] = (*COLOURS, *SHAPES)

# File layout inside the cache directory of one SyntheticEvalSpec (paths relative to it).
IMAGES_DIR = "images"
POPE_QUESTIONS = "pope/llava_pope_test.jsonl"
POPE_ANNOTATION_DIR = "pope/coco"
VQA_QUESTIONS = "vqa/questions.jsonl"
VQA_ANNOTATIONS = "vqa/annotations.json"
MC_QUESTIONS = "mc/questions.jsonl"
TEXT_MC_CSV = "text_mc/test.csv"
HELDOUT_JSON = "heldout/data.json"
HELDOUT_OBJECTS = "heldout/objects.json"


@dataclass(frozen=True)
class SyntheticEvalSpec:
    """What defines a synthetic evaluation set; equal specs give byte-identical files.

    `num_images` images carry the benchmark questions; the held-out caption set uses the first
    `num_heldout` images of the same pool (both are evaluation-only, never trained on).
    """

    seed: int = 0
    image_size: int = 128
    max_objects: int = 3
    num_images: int = 32
    num_heldout: int = 64
    num_text_questions: int = 48

    def __post_init__(self) -> None:
        where = "SyntheticEvalSpec"
        check_drawing(where, self.image_size, self.max_objects)
        for name in ("num_images", "num_heldout", "num_text_questions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}.{name}={getattr(self, name)}: must be >= 1")

    def digest(self) -> str:
        """Short hash of the spec and the generator versions: the name of its cache directory."""
        return spec_digest(self, generator=EVAL_GENERATOR_VERSION, drawing=GENERATOR_VERSION)

    def drawing_spec(self) -> SyntheticSpec:
        return SyntheticSpec(
            num_samples=1, seed=self.seed, image_size=self.image_size, max_objects=self.max_objects
        )


def image_name(index: int) -> str:
    return f"eval-{index:06d}.png"


@dataclass(frozen=True)
class _Drawn:
    name: str
    background: str
    objects: list[PlacedObject]
    prompt: str
    caption: str


def _rng(spec: SyntheticEvalSpec, kind: str, index: int) -> random.Random:
    return random.Random(f"seagrid-eval:{spec.seed}:{kind}:{index}")


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _pope(spec: SyntheticEvalSpec, drawn: list[_Drawn], out: Path) -> None:
    """LLaVA's POPE layout: one question file with a `category` per line, one label file per split.

    Objects are "colour shape" pairs. Each image gets one question per present object (label yes) and
    as many about absent objects (label no): random = any absent pair; popular = the absent pairs most
    frequent over the whole set; adversarial = absent near misses (a present shape in another colour
    or a present colour on another shape), as POPE's co-occurring objects.
    """
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    frequency = Counter((o.colour, o.shape) for d in drawn for o in d.objects)
    by_popularity = sorted(pairs, key=lambda p: (-frequency[p], p))
    questions: list[dict[str, Any]] = []
    labels: dict[str, list[dict[str, Any]]] = {split: [] for split in POPE_SPLITS}
    qid = 0
    for split in POPE_SPLITS:
        for index, d in enumerate(drawn):
            rng = _rng(spec, f"pope-{split}", index)
            present = [(o.colour, o.shape) for o in d.objects]
            absent = [p for p in pairs if p not in present]
            if split == "random":
                negatives = rng.sample(absent, len(present))
            elif split == "popular":
                negatives = [p for p in by_popularity if p not in present][: len(present)]
            else:
                near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
                negatives = rng.sample(near, min(len(present), len(near)))
                negatives += rng.sample([p for p in absent if p not in near], len(present) - len(negatives))
            asked = [(p, "yes") for p in present] + [(p, "no") for p in negatives]
            rng.shuffle(asked)
            for (colour, shape), label in asked:
                qid += 1
                text = f"Is there a {colour} {shape} in the image?\n{SHORT_ANSWER}"
                questions.append({"question_id": qid, "image": d.name, "text": text, "category": split})
                labels[split].append({"question_id": qid, "image": d.name, "text": text, "label": label})
    _write_jsonl(out / POPE_QUESTIONS, questions)
    for split, rows in labels.items():
        _write_jsonl(out / POPE_ANNOTATION_DIR / f"coco_pope_{split}.json", rows)


def _vqa(spec: SyntheticEvalSpec, drawn: list[_Drawn], out: Path) -> None:
    """VQAv2 layout: a question jsonl and an annotation JSON with 10 answers per question.

    Per image one colour question (a few of the 10 annotators say "<colour> <shape>" instead) and one
    count question (annotators write the number as a digit or a word, which VQA normalisation equates).
    """
    questions: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    qid = 0
    for index, d in enumerate(drawn):
        rng = _rng(spec, "vqa", index)
        target = rng.choice(d.objects)
        variants = rng.randint(0, 2)
        colour_answers = [target.colour] * (10 - variants) + [f"{target.colour} {target.shape}"] * variants
        rng.shuffle(colour_answers)
        n = len(d.objects)
        count_answers = [str(n) if rng.random() < 0.7 else NUMBER_WORDS[n] for _ in range(10)]
        for text, answers, qtype in (
            (QUESTIONS["colour"].format(shape=target.shape), colour_answers, "colour"),
            (QUESTIONS["count"], count_answers, "count"),
        ):
            qid += 1
            questions.append({"question_id": qid, "image": d.name, "text": f"{text}\n{SHORT_ANSWER}"})
            annotations.append(
                {
                    "question_id": qid,
                    "image": d.name,
                    "question_type": qtype,
                    "multiple_choice_answer": answers[0],
                    "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)],
                }
            )
    _write_jsonl(out / VQA_QUESTIONS, questions)
    (out / VQA_ANNOTATIONS).write_text(json.dumps({"annotations": annotations}, indent=1) + "\n")


def _mc(spec: SyntheticEvalSpec, drawn: list[_Drawn], out: Path) -> None:
    """Image multiple choice (ScienceQA-IMG/MMBench-like jsonl): which shape is at a given position."""
    rows: list[dict[str, Any]] = []
    for index, d in enumerate(drawn):
        rng = _rng(spec, "mc", index)
        target = rng.choice(d.objects)
        distractors = rng.sample([s for s in SHAPES if s != target.shape], 3)
        options = [target.shape, *distractors]
        rng.shuffle(options)
        row: dict[str, Any] = {
            "question_id": index + 1,
            "image": d.name,
            "question": f"Which shape is {located(target.position)}?",
            "options": options,
            "answer": "ABCD"[options.index(target.shape)],
        }
        if rng.random() < 0.5:
            row["hint"] = "The image shows coloured shapes on a plain background."
        rows.append(row)
    _write_jsonl(out / MC_QUESTIONS, rows)


def _text_question(rng: random.Random) -> tuple[str, str, list[str]]:
    """A text-only fact question, its answer and three wrong options (the synthetic instruct facts)."""
    kind = rng.choice(("mix", "sides", "add"))
    if kind == "mix":
        a, b, mixed = rng.choice(MIXES)
        wrong = rng.sample([c for c in COLOURS if c not in (a, b, mixed)], 3)
        return QUESTIONS["mix"].format(a=a, b=b), mixed, wrong
    if kind == "sides":
        shape = rng.choice(sorted(SIDES))
        right = SIDES[shape]
        wrong_sides = rng.sample([n for n in range(2, 11) if n != right], 3)
        return QUESTIONS["sides"].format(shape=shape), str(right), [str(n) for n in wrong_sides]
    x, y = rng.randint(0, 9), rng.randint(0, 9)
    wrong_sums = rng.sample([n for n in range(19) if n != x + y], 3)
    return (
        QUESTIONS["add"].format(a=NUMBER_WORDS[x], b=NUMBER_WORDS[y]),
        str(x + y),
        [str(n) for n in wrong_sums],
    )


def _text_mc(spec: SyntheticEvalSpec, out: Path) -> None:
    """Text-only multiple choice in MMLU's csv layout: question, A, B, C, D, answer letter (no header)."""
    path = out / TEXT_MC_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        for index in range(spec.num_text_questions):
            rng = _rng(spec, "text_mc", index)
            question, right, wrong = _text_question(rng)
            options = [right, *wrong]
            rng.shuffle(options)
            writer.writerow([question, *options, "ABCD"[options.index(right)]])


def _heldout(drawn: list[_Drawn], image_size: int, out: Path) -> None:
    """A LLaVA-format caption set plus `objects.json` (the stage-1 ground-truth format)."""
    records, truth = [], {}
    for index, d in enumerate(drawn):
        sid = f"heldout-{index:06d}"
        records.append(
            {
                "id": sid,
                "image": d.name,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{d.prompt}"},
                    {"from": "gpt", "value": d.caption},
                ],
            }
        )
        truth[sid] = {"background": d.background, "objects": [o.record() for o in d.objects]}
    (out / HELDOUT_JSON).parent.mkdir(parents=True, exist_ok=True)
    (out / HELDOUT_JSON).write_text(json.dumps(records, indent=1) + "\n")
    (out / HELDOUT_OBJECTS).write_text(
        json.dumps({"image_size": image_size, "samples": truth}, indent=1) + "\n"
    )


def generate_eval(spec: SyntheticEvalSpec, out_dir: Path) -> Path:
    """Write every evaluation file of `spec` under `out_dir` (layout: the module's path constants)."""
    out_dir = Path(out_dir)
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    drawing = spec.drawing_spec()
    drawn: list[_Drawn] = []
    for index in range(max(spec.num_images, spec.num_heldout)):
        image, background, objects, prompt, caption = draw_sample(drawing, EVAL_INDEX_OFFSET + index)
        name = image_name(index)
        image.save(out_dir / IMAGES_DIR / name, format="PNG", optimize=False)
        drawn.append(_Drawn(name, background, objects, prompt, caption))
    bench = drawn[: spec.num_images]
    _pope(spec, bench, out_dir)
    _vqa(spec, bench, out_dir)
    _mc(spec, bench, out_dir)
    _text_mc(spec, out_dir)
    _heldout(drawn[: spec.num_heldout], spec.image_size, out_dir)
    return out_dir


def ensure_synthetic_eval(spec: SyntheticEvalSpec, root: Path | None = None) -> Path:
    """The directory of the evaluation set for `spec`, generated once under the cache and reused."""
    target = Path(root or cache_dir() / "data") / f"synthetic-eval-{spec.digest()}"

    def build(tmp: Path) -> None:
        generate_eval(spec, tmp)

    build_once(target, build)
    return target


# ---------------------------------------------------------------------------------------------------------
# Ground-truth words per patch (label recall without label extraction)
# ---------------------------------------------------------------------------------------------------------


def patch_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Share of each patch's pixels that are set in `mask` (`[H, W]` bool) on an `h x w` grid: `[h*w]`.

    A pixel belongs to the patch its centre falls in, which is what resizing the square image to the
    encoder's resolution and cutting it into patches amounts to.
    """
    h, w = grid
    rows = np.minimum(((np.arange(mask.shape[0]) + 0.5) * h / mask.shape[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(mask.shape[1]) + 0.5) * w / mask.shape[1]).astype(int), w - 1)
    cell = rows[:, None] * w + cols[None, :]
    hits = np.bincount(cell.ravel(), weights=mask.ravel().astype(np.float64), minlength=h * w)
    total = np.bincount(cell.ravel(), minlength=h * w)
    return hits / np.maximum(total, 1)


def patch_word_labels(
    image: Image.Image,
    truth: dict[str, Any],
    grid: tuple[int, int],
    words: Sequence[str],
    *,
    min_object_fraction: float = 0.1,
    min_background_fraction: float = 0.5,
) -> list[list[int]]:
    """Per patch (row-major), the indices into `words` of the ground-truth words seen there.

    An object whose pixels cover at least `min_object_fraction` of a patch gives its colour and shape
    words; a background covering at least `min_background_fraction` gives its colour. Object pixels
    are found exactly: colours are drawn without anti-aliasing and are distinct within an image, so
    an object is its colour inside its bbox. Words missing from `words` are skipped; each patch's
    words are ordered by coverage, largest first. Only square images (the generator's) are supported.
    """
    if image.width != image.height:
        raise ValueError(f"patch_word_labels: expects a square synthetic image, got {image.size}")
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    index = {w: k for k, w in enumerate(words)}
    m = grid[0] * grid[1]
    found: list[list[tuple[float, int]]] = [[] for _ in range(m)]

    def add(cover: np.ndarray, names: Sequence[str], threshold: float) -> None:
        for patch in np.nonzero(cover >= threshold)[0]:
            for name in names:
                if name in index:
                    found[int(patch)].append((float(cover[patch]), index[name]))

    for obj in truth["objects"]:
        x0, y0, x1, y1 = obj["bbox"]
        box = np.zeros(pixels.shape[:2], dtype=bool)
        box[y0:y1, x0:x1] = True
        mask = box & np.all(pixels == np.array(COLOURS[obj["colour"]]), axis=-1)
        add(patch_coverage(mask, grid), (obj["colour"], obj["shape"]), min_object_fraction)
    background = np.all(pixels == np.array(COLOURS[truth["background"]]), axis=-1)
    add(patch_coverage(background, grid), (truth["background"],), min_background_fraction)
    out: list[list[int]] = []
    for entries in found:
        ordered = sorted(entries, key=lambda e: (-e[0], e[1]))
        out.append(list(dict.fromkeys(k for _, k in ordered)))
    return out


def labels_tensor(rows: Sequence[list[list[int]]]) -> torch.Tensor:
    """Stack per-image per-patch word-index lists into int64 `[N, m, n]`, -1 in empty slots."""
    n = max((len(p) for r in rows for p in r), default=0)
    m = len(rows[0]) if rows else 0
    out = torch.full((len(rows), m, max(n, 1)), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        for j, p in enumerate(r):
            if p:
                out[i, j, : len(p)] = torch.tensor(p, dtype=torch.long)
    return out

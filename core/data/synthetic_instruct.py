"""Deterministic synthetic LLaVA-665K-style instruction data: multi-turn QA about the stage-1 shape images."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

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
from core.paths import cache_dir

# Bump when the questions, answers or layout change, so cached datasets built by older code are not reused.
INSTRUCT_GENERATOR_VERSION = 1

MAX_TURNS = 8
IMAGE_AFTER_QUESTION_FRACTION = 0.2  # share of image samples whose first turn is "{question}\n<image>"
KINDS: tuple[str, ...] = ("presence", "colour", "position", "count", "describe")

# Text-only facts. Mixing follows the subtractive (paint) convention children learn.
MIXES: tuple[tuple[str, str, str], ...] = (
    ("red", "blue", "purple"),
    ("red", "yellow", "orange"),
    ("blue", "yellow", "green"),
    ("red", "white", "pink"),
    ("black", "white", "gray"),
)
SIDES: dict[str, int] = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "octagon": 8}
NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)

QUESTIONS = {
    "presence": "Is there a {colour} {shape} in the image?",
    "colour": "What colour is the {shape}?",
    "position": "Where is the {colour} {shape}?",
    "count": "How many objects are there?",
    "mix": "What colour do you get by mixing {a} and {b}?",
    "sides": "How many sides does a {shape} have?",
    "add": "What is {a} plus {b}?",
}


@dataclass(frozen=True)
class InstructSpec:
    """What defines a synthetic instruction dataset; equal specs give byte-identical files."""

    num_samples: int = 256
    seed: int = 0
    image_size: int = 128
    max_objects: int = 3
    text_only_fraction: float = 0.1
    max_turns: int = 3

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"InstructSpec.num_samples={self.num_samples}: must be >= 1")
        check_drawing("InstructSpec", self.image_size, self.max_objects)
        if not 0.0 <= self.text_only_fraction <= 1.0:
            raise ValueError(
                f"InstructSpec.text_only_fraction={self.text_only_fraction!r}: must be in [0, 1]"
            )
        if not 1 <= self.max_turns <= MAX_TURNS:
            raise ValueError(f"InstructSpec.max_turns={self.max_turns}: must be in 1..{MAX_TURNS}")

    def digest(self) -> str:
        """Short hash of the spec and both generator versions: the name of its cache directory."""
        return spec_digest(self, generator=INSTRUCT_GENERATOR_VERSION, drawing=GENERATOR_VERSION)

    def drawing_spec(self) -> SyntheticSpec:
        """The stage-1 spec whose `draw_sample` draws this dataset's images."""
        return SyntheticSpec(
            num_samples=self.num_samples,
            seed=self.seed,
            image_size=self.image_size,
            max_objects=self.max_objects,
        )


def sample_id(index: int) -> str:
    return f"inst-{index:06d}"


def _presence(rng: random.Random, objects: list[PlacedObject]) -> tuple[str, str]:
    present = {(o.colour, o.shape) for o in objects}
    if rng.random() < 0.5:
        colour, shape = rng.choice(sorted(present))
        answer = "Yes"
    else:
        # Half the negatives are near misses (a present shape in another colour, or the reverse),
        # so "No" cannot be read off a single attribute.
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        near = [(c, s) for c, s in absent if any(c == o.colour or s == o.shape for o in objects)]
        colour, shape = rng.choice(near if near and rng.random() < 0.5 else absent)
        answer = "No"
    return QUESTIONS["presence"].format(colour=colour, shape=shape), answer


def _image_question(
    rng: random.Random, objects: list[PlacedObject], prompt: str, caption: str
) -> tuple[str, str]:
    kind = rng.choice(KINDS)
    if kind == "presence":
        return _presence(rng, objects)
    if kind == "count":
        return QUESTIONS["count"], str(len(objects))
    if kind == "describe":
        return prompt, caption
    target = rng.choice(objects)
    if kind == "colour":
        return QUESTIONS["colour"].format(shape=target.shape), target.colour
    return QUESTIONS["position"].format(colour=target.colour, shape=target.shape), located(target.position)


def _text_question(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(("mix", "sides", "add"))
    if kind == "mix":
        a, b, mixed = rng.choice(MIXES)
        if rng.random() < 0.5:
            a, b = b, a
        return QUESTIONS["mix"].format(a=a, b=b), mixed
    if kind == "sides":
        shape = rng.choice(sorted(SIDES))
        return QUESTIONS["sides"].format(shape=shape), str(SIDES[shape])
    x, y = rng.randint(0, 9), rng.randint(0, 9)
    return QUESTIONS["add"].format(a=NUMBER_WORDS[x], b=NUMBER_WORDS[y]), str(x + y)


def _rounds(
    rng: random.Random, turns: int, ask: Callable[[random.Random], tuple[str, str]]
) -> list[tuple[str, str]]:
    """`turns` question/answer pairs from `ask(rng)`, no question asked twice in a conversation."""
    pairs: list[tuple[str, str]] = []
    asked: set[str] = set()
    for _ in range(100 * turns):  # presence/arithmetic questions are plentiful; this never runs out
        if len(pairs) == turns:
            break
        question, answer = ask(rng)
        if question not in asked:
            asked.add(question)
            pairs.append((question, answer))
    return pairs


def _conversation(pairs: list[tuple[str, str]], image_first: bool | None) -> list[dict[str, str]]:
    """LLaVA turns; `image_first` None = text-only, else `<image>` before or after the first question."""
    turns = []
    for number, (question, answer) in enumerate(pairs):
        if number == 0 and image_first is not None:
            question = f"<image>\n{question}" if image_first else f"{question}\n<image>"
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


def generate_instruct(spec: InstructSpec, out_dir: Path) -> Path:
    """Write `data.json`, `images/<id>.png` and `objects.json` under `out_dir`; return the JSON path.

    Each sample has 1..`max_turns` question/answer rounds. Image samples ask about object presence
    (Yes/No, balanced), a shape's colour, an object's position, the object count, or a description
    (the stage-1 prompt and caption); images are drawn by the stage-1 `draw_sample`, so with equal
    seed, size and max_objects sample i shows the same image as stage-1 sample i. A
    `text_only_fraction` share (drawn per sample) are text-only QA with no `image` key.
    `objects.json` has the stage-1 format and lists only the samples with an image.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    drawing = spec.drawing_spec()
    records = []
    truth: dict[str, dict[str, object]] = {}
    for index in range(spec.num_samples):
        # The questions' RNG is separate from the drawing's, and per sample, so a sample does
        # not depend on how many others are generated.
        rng = random.Random(f"seagrid-instruct:{spec.seed}:{index}")
        sid = sample_id(index)
        text_only = rng.random() < spec.text_only_fraction
        turns = rng.randint(1, spec.max_turns)
        if text_only:
            records.append(
                {"id": sid, "conversations": _conversation(_rounds(rng, turns, _text_question), None)}
            )
            continue
        image, background, objects, prompt, caption = draw_sample(drawing, index)
        image.save(image_dir / f"{sid}.png", format="PNG", optimize=False)
        image_first = rng.random() >= IMAGE_AFTER_QUESTION_FRACTION
        pairs = _rounds(rng, turns, partial(_image_question, objects=objects, prompt=prompt, caption=caption))
        records.append({"id": sid, "image": f"{sid}.png", "conversations": _conversation(pairs, image_first)})
        truth[sid] = {"background": background, "objects": [o.record() for o in objects]}
    json_path = out_dir / "data.json"
    json_path.write_text(json.dumps(records, indent=1) + "\n")
    (out_dir / "objects.json").write_text(
        json.dumps({"image_size": spec.image_size, "samples": truth}, indent=1) + "\n"
    )
    return json_path


def ensure_instruct(spec: InstructSpec, root: Path | None = None) -> tuple[Path, Path]:
    """(json path, image root) of the instruction dataset for `spec`, generated once and reused."""
    target = Path(root or cache_dir() / "data") / f"instruct-{spec.digest()}"

    def build(tmp: Path) -> None:
        generate_instruct(spec, tmp)

    build_once(target, build)
    return target / "data.json", target / "images"

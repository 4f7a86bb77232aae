"""Deterministic synthetic LLaVA-format dataset: coloured shapes on a 3x3 grid, with captions and ground truth."""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

from core.cache import build_once
from core.paths import cache_dir

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# Bump when the drawing or captioning changes, so cached datasets built by older code are not reused.
GENERATOR_VERSION = 1

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 220, 30),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "cyan": (30, 210, 220),
    "pink": (245, 130, 190),
    "brown": (130, 80, 30),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "ring", "bar")
# Row-major names of the 3x3 cells; POSITIONS[row][col].
POSITIONS: tuple[tuple[str, str, str], ...] = (
    ("top left", "top", "top right"),
    ("left", "centre", "right"),
    ("bottom left", "bottom", "bottom right"),
)
# How each position reads in a sentence ("in the centre", "on the left", "at the top left").
_PREPOSITION = {"centre": "in the", "left": "on the", "right": "on the"}

PROMPTS: tuple[str, ...] = (
    "Describe the image briefly.",
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Write a terse but informative summary of the picture.",
)
# Caption phrasings; `{objects}` is the list of object phrases ("a red circle at the top left and ...").
PHRASINGS: tuple[str, ...] = (
    "{objects}.",
    "There is {objects}.",
    "The image shows {objects}.",
    "A picture of {objects}.",
)

MIN_IMAGE_SIZE = 24  # below this a 3x3 cell is too small to draw recognisable shapes
MAX_OBJECTS = min(len(SHAPES), len(COLOURS) - 1, 9)  # shapes and colours are distinct within an image


def check_drawing(where: str, image_size: int, max_objects: int) -> None:
    """The drawing settings every synthetic spec shares; errors name the spec's field."""
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"{where}.image_size={image_size}: must be >= {MIN_IMAGE_SIZE} so each 3x3 cell can hold a shape"
        )
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(
            f"{where}.max_objects={max_objects}: must be in 1..{MAX_OBJECTS} "
            "(shapes and colours are distinct within an image)"
        )


def spec_digest(spec: DataclassInstance, **versions: int | str) -> str:
    """Short hash of a spec dataclass and the generator versions that wrote it: its cache directory's name."""
    payload = json.dumps({**asdict(spec), **versions}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SyntheticSpec:
    """What defines a synthetic dataset; equal specs give byte-identical files."""

    num_samples: int = 256
    seed: int = 0
    image_size: int = 128
    max_objects: int = 3

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"SyntheticSpec.num_samples={self.num_samples}: must be >= 1")
        check_drawing("SyntheticSpec", self.image_size, self.max_objects)

    def digest(self) -> str:
        """Short hash of the spec and the generator version: the name of its cache directory."""
        return spec_digest(self, generator=GENERATOR_VERSION)


@dataclass(frozen=True)
class PlacedObject:
    """One drawn shape; `bbox` is (x0, y0, x1, y1) in pixels, end-exclusive (PIL's getbbox)."""

    shape: str
    colour: str
    cell: tuple[int, int]
    bbox: tuple[int, int, int, int]

    @property
    def position(self) -> str:
        return POSITIONS[self.cell[0]][self.cell[1]]

    def phrase(self) -> str:
        return f"a {self.colour} {self.shape} {located(self.position)}"

    def record(self) -> dict[str, object]:
        """The object's ground truth as written to `objects.json`."""
        return {
            "shape": self.shape,
            "colour": self.colour,
            "cell": list(self.cell),
            "position": self.position,
            "bbox": list(self.bbox),
        }


def located(position: str) -> str:
    """A position as it reads in a sentence: "in the centre", "on the left", "at the top left"."""
    return f"{_PREPOSITION.get(position, 'at the')} {position}"


def sample_id(index: int) -> str:
    return f"syn-{index:06d}"


def cell_bounds(image_size: int, row: int, col: int) -> tuple[int, int, int, int]:
    """Pixel bounds (x0, y0, x1, y1), end-exclusive, of a 3x3 grid cell."""
    edges = [round(i * image_size / 3) for i in range(4)]
    return edges[col], edges[row], edges[col + 1], edges[row + 1]


def _shape_mask(shape: str, image_size: int, box: tuple[int, int, int, int]) -> Image.Image:
    """A binary mask of `shape` drawn inside the square `box` (no anti-aliasing: colours stay exact)."""
    mask = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    # PIL shape coordinates are inclusive; the last pixel inside `box` is x1 - 1.
    right, bottom = x1 - 1, y1 - 1
    cx, cy = (x0 + right) / 2, (y0 + bottom) / 2
    side = x1 - x0
    if shape == "circle":
        draw.ellipse((x0, y0, right, bottom), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, right, bottom), fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (right, bottom), (x0, bottom)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (right, cy), (cx, bottom), (x0, cy)], fill=255)
    elif shape == "star":
        outer, inner = side / 2, side / 2 * 0.45
        points = []
        for k in range(10):
            radius = outer if k % 2 == 0 else inner
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=255)
    elif shape == "cross":
        half = max(1, round(side * 0.17))
        draw.rectangle((x0, round(cy) - half, right, round(cy) + half), fill=255)
        draw.rectangle((round(cx) - half, y0, round(cx) + half, bottom), fill=255)
    elif shape == "ring":
        draw.ellipse((x0, y0, right, bottom), outline=255, width=max(2, round(side * 0.18)))
    elif shape == "bar":
        half = max(1, round(side * 0.17))
        draw.rectangle((x0, round(cy) - half, right, round(cy) + half), fill=255)
    else:
        raise ValueError(f"shape={shape!r}: unknown; allowed: {', '.join(SHAPES)}")
    return mask


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption_for(objects: list[PlacedObject], phrasing: str) -> str:
    """The caption naming every object, in reading order of their cells."""
    ordered = sorted(objects, key=lambda o: o.cell)
    return phrasing.format(objects=_join([o.phrase() for o in ordered]))


def draw_sample(spec: SyntheticSpec, index: int) -> tuple[Image.Image, str, list[PlacedObject], str, str]:
    """Image, background colour, objects, prompt and caption of sample `index`.

    Each sample has its own RNG seeded by (seed, index), so a sample does not depend on how many
    others are generated.
    """
    rng = random.Random(f"seagrid-synthetic:{spec.seed}:{index}")
    size = spec.image_size
    background = rng.choice(list(COLOURS))
    count = rng.randint(1, spec.max_objects)
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], count)
    shapes = rng.sample(SHAPES, count)
    colours = rng.sample([c for c in COLOURS if c != background], count)

    image = Image.new("RGB", (size, size), COLOURS[background])
    objects = []
    for cell, shape, colour in zip(cells, shapes, colours, strict=True):
        cx0, cy0, cx1, cy1 = cell_bounds(size, *cell)
        cell_side = min(cx1 - cx0, cy1 - cy0)
        side = rng.randint(max(6, round(cell_side * 0.6)), max(6, round(cell_side * 0.9)))
        x0 = cx0 + rng.randint(0, cell_side - side)
        y0 = cy0 + rng.randint(0, cell_side - side)
        mask = _shape_mask(shape, size, (x0, y0, x0 + side, y0 + side))
        image.paste(COLOURS[colour], mask=mask)
        bbox = mask.getbbox()
        assert bbox is not None, "a shape of side >= 6 always covers pixels"
        objects.append(PlacedObject(shape=shape, colour=colour, cell=cell, bbox=bbox))
    prompt = rng.choice(PROMPTS)
    caption = caption_for(objects, rng.choice(PHRASINGS))
    return image, background, objects, prompt, caption


def generate(spec: SyntheticSpec, out_dir: Path) -> Path:
    """Write `data.json`, `images/<id>.png` and `objects.json` under `out_dir`; return the JSON path.

    `data.json` image paths are relative to `out_dir / "images"` (the image root).
    `objects.json` is {"image_size": int, "samples": {id: {"background": colour, "objects": [{shape,
    colour, cell [row, col], position, bbox [x0, y0, x1, y1] end-exclusive}]}}}.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    truth: dict[str, dict[str, object]] = {}
    for index in range(spec.num_samples):
        image, background, objects, prompt, caption = draw_sample(spec, index)
        sid = sample_id(index)
        image.save(image_dir / f"{sid}.png", format="PNG", optimize=False)
        records.append(
            {
                "id": sid,
                "image": f"{sid}.png",
                "conversations": [
                    {"from": "human", "value": f"<image>\n{prompt}"},
                    {"from": "gpt", "value": caption},
                ],
            }
        )
        truth[sid] = {"background": background, "objects": [o.record() for o in objects]}
    json_path = out_dir / "data.json"
    json_path.write_text(json.dumps(records, indent=1) + "\n")
    (out_dir / "objects.json").write_text(
        json.dumps({"image_size": spec.image_size, "samples": truth}, indent=1) + "\n"
    )
    return json_path


def ensure_synthetic(spec: SyntheticSpec, root: Path | None = None) -> tuple[Path, Path]:
    """(json path, image root) of the dataset for `spec`, generated once under the cache and reused."""
    target = Path(root or cache_dir() / "data") / f"synthetic-{spec.digest()}"

    def build(tmp: Path) -> None:
        generate(spec, tmp)

    build_once(target, build)
    return target / "data.json", target / "images"

"""Tests for core.data.synthetic_instruct: determinism, answers true to objects.json, balance, encoding."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.data.synthetic_instruct as synthetic_instruct
from core.data import (
    IGNORE_INDEX,
    InstructSpec,
    LlavaDataset,
    SyntheticSpec,
    encode_conversation,
    ensure_instruct,
    generate_instruct,
    make_collate,
)
from core.data.synthetic import PROMPTS, draw_sample
from core.models.tiny_tokenizer import train_tiny_tokenizer

SPEC = InstructSpec(
    num_samples=300, seed=7, image_size=32, max_objects=3, text_only_fraction=0.1, max_turns=3
)

# The test's own statement of the facts, written independently of the generator's tables.
PREPOSITION = {"centre": "in the", "left": "on the", "right": "on the"}
MIX = {
    frozenset({"red", "blue"}): "purple",
    frozenset({"red", "yellow"}): "orange",
    frozenset({"blue", "yellow"}): "green",
    frozenset({"red", "white"}): "pink",
    frozenset({"black", "white"}): "gray",
}
SIDES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "octagon": 8}
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

PRESENCE = re.compile(r"Is there a (\w+) (\w+) in the image\?")
COLOUR = re.compile(r"What colour is the (\w+)\?")
POSITION = re.compile(r"Where is the (\w+) (\w+)\?")
COUNT = "How many objects are there?"
MIX_Q = re.compile(r"What colour do you get by mixing (\w+) and (\w+)\?")
SIDES_Q = re.compile(r"How many sides does a (\w+) have\?")
ADD_Q = re.compile(r"What is (\w+) plus (\w+)\?")
CAPTION_OBJECT = re.compile(
    r"a (\w+) (\w+) (?:in the|on the|at the) ((?:top |bottom )?(?:left|right|centre)|top|bottom)"
)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("instruct")
    generate_instruct(SPEC, out)
    return out


@pytest.fixture(scope="module")
def records(dataset_dir: Path) -> list[dict]:
    return json.loads((dataset_dir / "data.json").read_text())


@pytest.fixture(scope="module")
def truth(dataset_dir: Path) -> dict:
    return json.loads((dataset_dir / "objects.json").read_text())["samples"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(1024, 512)


def _pairs(record: dict) -> list[tuple[str, str]]:
    turns = record["conversations"]
    questions = [t["value"].replace("<image>", "").strip() for t in turns[0::2]]
    return list(zip(questions, [t["value"] for t in turns[1::2]], strict=True))


def _located(position: str) -> str:
    return f"{PREPOSITION.get(position, 'at the')} {position}"


def _image_answer(question: str, objects: list[dict]) -> tuple[str, str | None]:
    """(kind, true answer) of `question` given the objects; the answer is None for a description prompt."""
    if m := PRESENCE.fullmatch(question):
        return "presence", "Yes" if any((o["colour"], o["shape"]) == m.groups() for o in objects) else "No"
    if m := COLOUR.fullmatch(question):
        (match,) = [o for o in objects if o["shape"] == m.group(1)]
        return "colour", match["colour"]
    if m := POSITION.fullmatch(question):
        (match,) = [o for o in objects if (o["colour"], o["shape"]) == m.groups()]
        return "position", _located(match["position"])
    if question == COUNT:
        return "count", str(len(objects))
    assert question in PROMPTS, f"unparsable question {question!r}"
    return "describe", None


def _text_answer(question: str) -> tuple[str, str]:
    if m := MIX_Q.fullmatch(question):
        return "mix", MIX[frozenset(m.groups())]
    if m := SIDES_Q.fullmatch(question):
        return "sides", str(SIDES[m.group(1)])
    if m := ADD_Q.fullmatch(question):
        return "add", str(DIGITS.index(m.group(1)) + DIGITS.index(m.group(2)))
    raise AssertionError(f"unparsable text-only question {question!r}")


def test_generate_is_byte_identical_for_equal_specs(tmp_path: Path) -> None:
    spec = InstructSpec(num_samples=20, seed=1, image_size=32)
    generate_instruct(spec, tmp_path / "a")
    generate_instruct(spec, tmp_path / "b")
    first = _tree_digest(tmp_path / "a")
    assert first == _tree_digest(tmp_path / "b")
    assert {"data.json", "objects.json"} < set(first) and any(k.startswith("images/") for k in first)
    generate_instruct(InstructSpec(num_samples=20, seed=2, image_size=32), tmp_path / "c")
    assert _tree_digest(tmp_path / "c")["data.json"] != first["data.json"]


def test_records_are_llava_format(records: list[dict], truth: dict, dataset_dir: Path) -> None:
    assert len(records) == SPEC.num_samples
    assert [r["id"] for r in records if "image" in r] == list(truth)
    turn_counts = set()
    for record in records:
        turns = record["conversations"]
        assert len(turns) % 2 == 0 and [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        turn_counts.add(len(turns) // 2)
        questions = [q for q, _ in _pairs(record)]
        assert len(set(questions)) == len(questions), record["id"]
        image_tokens = [t["value"].count("<image>") for t in turns]
        if "image" in record:
            assert image_tokens[0] == 1 and sum(image_tokens) == 1, record["id"]
            with Image.open(dataset_dir / "images" / record["image"]) as image:
                assert image.size == (SPEC.image_size, SPEC.image_size)
        else:
            assert sum(image_tokens) == 0, record["id"]
    assert turn_counts == set(range(1, SPEC.max_turns + 1))


def test_images_are_the_stage1_drawings(records: list[dict], dataset_dir: Path) -> None:
    drawing = SyntheticSpec(
        num_samples=1, seed=SPEC.seed, image_size=SPEC.image_size, max_objects=SPEC.max_objects
    )
    index = next(i for i, r in enumerate(records) if "image" in r)
    expected = np.asarray(draw_sample(drawing, index)[0])
    with Image.open(dataset_dir / "images" / records[index]["image"]) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), expected)


def test_every_answer_is_true(records: list[dict], truth: dict) -> None:
    kinds: set[str] = set()
    for record in records:
        for question, answer in _pairs(record):
            if "image" not in record:
                kind, expected = _text_answer(question)
            else:
                objects = truth[record["id"]]["objects"]
                kind, expected = _image_answer(question, objects)
                if expected is None:  # a description: it names exactly the objects, at their positions
                    named = sorted(CAPTION_OBJECT.findall(answer))
                    assert named == sorted((o["colour"], o["shape"], o["position"]) for o in objects), answer
                    expected = answer
            assert answer == expected, (record["id"], question, answer)
            kinds.add(kind)
    assert kinds == {"presence", "colour", "position", "count", "describe", "mix", "sides", "add"}


def test_yes_no_balance(records: list[dict]) -> None:
    answers = [a for r in records if "image" in r for q, a in _pairs(r) if PRESENCE.fullmatch(q)]
    assert len(answers) > 60
    assert 0.35 < answers.count("Yes") / len(answers) < 0.65, (answers.count("Yes"), len(answers))


def test_text_only_fraction_and_image_layouts(records: list[dict], tmp_path: Path) -> None:
    text_only = sum("image" not in r for r in records) / len(records)
    assert 0.05 < text_only < 0.15, text_only  # ~3 sigma around 0.1 for 300 samples
    firsts = [r["conversations"][0]["value"] for r in records if "image" in r]
    before = sum(f.startswith("<image>\n") for f in firsts)
    after = sum(f.endswith("\n<image>") for f in firsts)
    assert before + after == len(firsts)
    assert after > 0 and before > 2 * after  # both layouts, image-first for most
    assert not any(
        "image" in r
        for r in _generate_records(InstructSpec(num_samples=10, text_only_fraction=1.0), tmp_path / "t")
    )
    assert all(
        "image" in r
        for r in _generate_records(
            InstructSpec(num_samples=10, image_size=32, text_only_fraction=0.0), tmp_path / "i"
        )
    )


def _generate_records(spec: InstructSpec, out_dir: Path) -> list[dict]:
    return json.loads(generate_instruct(spec, out_dir).read_text())


def test_every_sample_encodes_with_supervised_answers(records: list[dict], tokenizer) -> None:
    for record in records:
        encoded = encode_conversation(record["conversations"], "vicuna_v1", tokenizer)
        assert encoded.num_supervised > 0, record["id"]
        supervised = tokenizer.decode(
            [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
        )
        position = 0
        for _, answer in _pairs(record):  # every answer is supervised, in order
            position = supervised.index(answer, position) + len(answer)


def test_llava_dataset_iterates_and_collates(dataset_dir: Path, tokenizer) -> None:
    dataset = LlavaDataset(
        dataset_dir / "data.json",
        dataset_dir / "images",
        tokenizer,
        "vicuna_v1",
        image_size=64,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        image_mode="pad",
        max_unsupervised_fraction=0.0,
    )
    assert len(dataset) == SPEC.num_samples
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=32, collate_fn=make_collate(tokenizer.pad_token_id)
    )
    seen, text_only = 0, 0
    for batch in loader:
        assert batch["pixel_values"].shape[1:] == (3, 64, 64)
        assert (batch["labels"] != IGNORE_INDEX).any(dim=1).all()
        seen += len(batch["ids"])
        text_only += int((~batch["has_image"]).sum())
    assert seen == SPEC.num_samples and text_only > 0


def test_ensure_instruct_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = InstructSpec(num_samples=4, seed=1, image_size=32, text_only_fraction=0.0)
    json_path, image_root = ensure_instruct(spec, tmp_path)
    assert json_path.parent == tmp_path / f"instruct-{spec.digest()}"
    assert len(list(image_root.glob("*.png"))) == 4

    def fail(*_: object) -> None:
        raise AssertionError("generate_instruct must not run for an already built spec")

    monkeypatch.setattr(synthetic_instruct, "generate_instruct", fail)
    assert ensure_instruct(spec, tmp_path) == (json_path, image_root)
    monkeypatch.setenv("SEAGRID_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssertionError, match="must not run"):
        ensure_instruct(spec)  # root=None goes to $SEAGRID_CACHE/data, not built yet
    assert (
        InstructSpec(num_samples=4, seed=1, image_size=32, text_only_fraction=0.5).digest() != spec.digest()
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"image_size": 8}, "image_size"),
        ({"max_objects": 0}, "max_objects"),
        ({"max_objects": 99}, "max_objects"),
        ({"text_only_fraction": -0.1}, "text_only_fraction"),
        ({"text_only_fraction": 1.5}, "text_only_fraction"),
        ({"max_turns": 0}, "max_turns"),
        ({"max_turns": 99}, "max_turns"),
    ],
)
def test_spec_rejects_bad_values(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        InstructSpec(**kwargs)

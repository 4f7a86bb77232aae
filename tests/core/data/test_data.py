"""Tests for core.data: synthetic generator, plain template, image preprocessing, dataset and collation."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

import core.data.synthetic as synthetic
from core.data import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    TEMPLATES,
    Encoded,
    LlavaDataset,
    SyntheticSpec,
    assert_supervised,
    collate,
    encode_conversation,
    ensure_synthetic,
    generate,
    make_collate,
    preprocess,
    supervised_after_truncation,
    tokenizer_image_token,
)
from core.data.synthetic import COLOURS, POSITIONS, SHAPES, cell_bounds
from core.models.tiny_tokenizer import train_tiny_tokenizer

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's statistics, the usual case
STD = (0.26862954, 0.26130258, 0.27577711)
SPEC = SyntheticSpec(num_samples=24, seed=3, image_size=96, max_objects=3)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(SPEC, out)
    return out


@pytest.fixture(scope="module")
def records(dataset_dir: Path) -> list[dict]:
    return json.loads((dataset_dir / "data.json").read_text())


@pytest.fixture(scope="module")
def truth(dataset_dir: Path) -> dict:
    return json.loads((dataset_dir / "objects.json").read_text())


def _train_tokenizer(texts: list[str], add_bos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    if add_bos:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def corpus(records: list[dict]) -> list[str]:
    return [turn["value"] + "\n" for r in records for turn in r["conversations"]]


@pytest.fixture(scope="module")
def tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    return _train_tokenizer(corpus, add_bos=True)


@pytest.fixture(scope="module")
def tokenizer_no_bos(corpus: list[str]) -> PreTrainedTokenizerFast:
    return _train_tokenizer(corpus, add_bos=False)


# --- synthetic generator -------------------------------------------------------------------------


def test_generate_is_byte_identical_for_equal_specs(tmp_path: Path, dataset_dir: Path) -> None:
    generate(SPEC, tmp_path / "again")
    first, second = _tree_digest(dataset_dir), _tree_digest(tmp_path / "again")
    assert len(first) == SPEC.num_samples + 2
    assert first == second
    generate(SyntheticSpec(num_samples=24, seed=4, image_size=96), tmp_path / "other")
    assert _tree_digest(tmp_path / "other")["data.json"] != first["data.json"]


def test_records_are_llava_format(records: list[dict], truth: dict, dataset_dir: Path) -> None:
    assert [r["id"] for r in records] == list(truth["samples"])
    for record in records:
        human, gpt = record["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt"
        assert (dataset_dir / "images" / record["image"]).is_file()


def test_captions_name_exactly_the_objects(records: list[dict], truth: dict) -> None:
    counts = set()
    for record in records:
        caption = record["conversations"][1]["value"]
        objects = truth["samples"][record["id"]]["objects"]
        counts.add(len(objects))
        words = caption.rstrip(".").replace(",", "").split()
        assert sorted(w for w in words if w in SHAPES) == sorted(o["shape"] for o in objects), caption
        assert sorted(w for w in words if w in COLOURS) == sorted(o["colour"] for o in objects), caption
        for o in objects:
            row, col = o["cell"]
            position = POSITIONS[row][col]
            assert o["position"] == position
            preposition = {"centre": "in the", "left": "on the", "right": "on the"}.get(position, "at the")
            assert f"a {o['colour']} {o['shape']} {preposition} {position}" in caption, caption
    assert counts == {1, 2, 3}


def test_shapes_are_drawn_in_their_cells_with_their_colours(
    records: list[dict], truth: dict, dataset_dir: Path
) -> None:
    for record in records:
        sample = truth["samples"][record["id"]]
        pixels = np.asarray(Image.open(dataset_dir / "images" / record["image"]).convert("RGB"))
        assert pixels.shape == (SPEC.image_size, SPEC.image_size, 3)
        background = np.array(COLOURS[sample["background"]])
        covered = np.zeros(pixels.shape[:2], dtype=bool)
        for o in sample["objects"]:
            assert o["colour"] != sample["background"]
            x0, y0, x1, y1 = o["bbox"]
            cx0, cy0, cx1, cy1 = cell_bounds(SPEC.image_size, *o["cell"])
            assert cx0 <= x0 < x1 <= cx1 and cy0 <= y0 < y1 <= cy1, (record["id"], o)
            patch = pixels[y0:y1, x0:x1].reshape(-1, 3)
            is_colour = (patch == np.array(COLOURS[o["colour"]])).all(axis=1)
            is_background = (patch == background).all(axis=1)
            # Every bbox pixel is the shape's colour or background; the shape fills a real share of it.
            assert (is_colour | is_background).all(), (record["id"], o)
            assert is_colour.mean() > 0.2, (record["id"], o, is_colour.mean())
            covered[y0:y1, x0:x1] = True
        assert (pixels[~covered] == background).all(), record["id"]


def test_ensure_synthetic_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SyntheticSpec(num_samples=3, seed=1, image_size=32)
    json_path, image_root = ensure_synthetic(spec, tmp_path)
    assert json_path.parent == tmp_path / f"synthetic-{spec.digest()}"
    assert len(list(image_root.glob("*.png"))) == 3

    def fail(*_: object) -> None:
        raise AssertionError("generate must not run for an already built spec")

    monkeypatch.setattr(synthetic, "generate", fail)
    assert ensure_synthetic(spec, tmp_path) == (json_path, image_root)
    monkeypatch.setenv("SEAGRID_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssertionError, match="must not run"):
        ensure_synthetic(spec)  # root=None goes to $SEAGRID_CACHE/data, not built yet
    assert SyntheticSpec(num_samples=3, seed=2, image_size=32).digest() != spec.digest()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"image_size": 8}, "image_size"),
        ({"max_objects": 0}, "max_objects"),
    ],
)
def test_spec_rejects_bad_values(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SyntheticSpec(**kwargs)


# --- templates -----------------------------------------------------------------------------------


def _conversation(caption: str) -> list[dict[str, str]]:
    return [
        {"from": "human", "value": "<image>\nDescribe the image briefly."},
        {"from": "gpt", "value": caption},
    ]


def test_plain_template_with_bos(tokenizer: PreTrainedTokenizerFast, records: list[dict]) -> None:
    for record in records[:6]:
        caption = record["conversations"][1]["value"]
        encoded = encode_conversation(record["conversations"], "plain", tokenizer)
        ids, labels = encoded.input_ids, encoded.labels
        assert len(ids) == len(labels)
        assert ids.count(IMAGE_TOKEN_INDEX) == 1
        assert ids[:2] == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]
        assert labels[:2] == [IGNORE_INDEX, IGNORE_INDEX]
        # Independent computation: the caption and "\n" tokenised on their own, all supervised.
        expected = tokenizer(caption + "\n", add_special_tokens=False).input_ids
        assert ids[2:] == expected and labels[2:] == expected
        supervised = [t for t in labels if t != IGNORE_INDEX]
        assert tokenizer.decode(supervised) == caption + "\n"


def test_plain_template_without_bos(tokenizer_no_bos: PreTrainedTokenizerFast) -> None:
    caption = "a red circle at the top left."
    encoded = encode_conversation(_conversation(caption), "plain", tokenizer_no_bos)
    assert encoded.input_ids[0] == IMAGE_TOKEN_INDEX
    assert encoded.labels[0] == IGNORE_INDEX
    assert tokenizer_no_bos.decode(encoded.labels[1:]) == caption + "\n"


def test_tokenizer_image_token_splits_like_llava(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = tokenizer_image_token("a red <image> blue square", tokenizer)
    left = tokenizer("a red ", add_special_tokens=False).input_ids
    right = tokenizer(" blue square", add_special_tokens=False).input_ids
    assert ids == [tokenizer.bos_token_id, *left, IMAGE_TOKEN_INDEX, *right]
    assert tokenizer_image_token("<image>", tokenizer) == [tokenizer.bos_token_id, IMAGE_TOKEN_INDEX]


def test_unknown_template_lists_allowed(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(ValueError, match=r"template='vicuna_v9'.*allowed: .*plain"):
        encode_conversation(_conversation("x"), "vicuna_v9", tokenizer)


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        (_conversation("a")[:1], "exactly 2 turns"),
        ([{"from": "human", "value": "no image"}, {"from": "gpt", "value": "a"}], "must contain"),
        (_conversation("a <image> b"), "caption must not"),
    ],
)
def test_plain_template_rejects_bad_conversations(
    conversation: list[dict[str, str]], message: str, tokenizer: PreTrainedTokenizerFast
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_conversation(conversation, "plain", tokenizer)


def test_encoded_requires_aligned_lengths() -> None:
    with pytest.raises(ValueError, match="len"):
        Encoded(input_ids=[1, 2], labels=[1])


def test_assert_supervised() -> None:
    assert_supervised(Encoded([1, 2], [IGNORE_INDEX, 2]), "ok")
    with pytest.raises(ValueError, match="sample 'bad'.*IGNORE_INDEX"):
        assert_supervised(Encoded([1, 2], [IGNORE_INDEX, IGNORE_INDEX]), "bad")


# --- images --------------------------------------------------------------------------------------


def _normalised(rgb: tuple[int, int, int]) -> torch.Tensor:
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)


def test_preprocess_square_crops_the_centre() -> None:
    # Three vertical bands on a 3:1 image; the centre crop keeps only the middle (green) band.
    image = Image.new("RGB", (300, 100))
    for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        image.paste(colour, (100 * k, 0, 100 * (k + 1), 100))
    out = preprocess(image, 32, MEAN, STD, "square")
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = _normalised((0, 255, 0)).view(3, 1, 1)
    # Bicubic may ring at the crop's edges; the interior is exactly the green band.
    torch.testing.assert_close(out[:, :, 4:-4], expected.expand(3, 32, 24), atol=0.02, rtol=0)


def test_preprocess_pad_fills_with_the_mean() -> None:
    image = Image.new("RGB", (100, 50), (255, 0, 0))  # wide: padded above and below
    out = preprocess(image, 40, MEAN, STD, "pad")
    assert out.shape == (3, 40, 40)
    # Padding of 25 rows each side -> 10 rows at size 40; skip 2 rows next to the boundary (bicubic).
    pad = torch.cat([out[:, :8], out[:, -8:]], dim=1)
    assert pad.abs().max() < 1 / (255 * min(STD)) + 1e-4
    torch.testing.assert_close(
        out[:, 12:28], _normalised((255, 0, 0)).view(3, 1, 1).expand(3, 16, 40), atol=0.02, rtol=0
    )
    # A square crop of the same image has no mean-coloured region at all.
    assert preprocess(image, 40, MEAN, STD, "square").abs().min() > 0.5


def test_preprocess_rejects_bad_arguments() -> None:
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match=r"mode='stretch'.*square, pad"):
        preprocess(image, 8, MEAN, STD, "stretch")
    with pytest.raises(ValueError, match="std"):
        preprocess(image, 8, MEAN, (0.1, 0.0, 0.1))
    with pytest.raises(ValueError, match="mean"):
        preprocess(image, 8, (0.5, 0.5), STD)


# --- dataset -------------------------------------------------------------------------------------


def _dataset(json_path: Path, image_root: Path, tokenizer: PreTrainedTokenizerFast, **kwargs) -> LlavaDataset:
    return LlavaDataset(
        json_path, image_root, tokenizer, "plain", image_size=32, mean=MEAN, std=STD, **kwargs
    )


def _write(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return path


def test_dataset_items(dataset_dir: Path, tokenizer: PreTrainedTokenizerFast, records: list[dict]) -> None:
    ds = _dataset(dataset_dir / "data.json", dataset_dir / "images", tokenizer)
    assert len(ds) == len(records) and ds.skipped_ids == []
    item = ds[0]
    expected = encode_conversation(records[0]["conversations"], "plain", tokenizer)
    assert item["id"] == records[0]["id"] and item["has_image"] is True
    assert item["input_ids"].dtype == torch.long and item["input_ids"].tolist() == expected.input_ids
    assert item["labels"].tolist() == expected.labels
    assert item["pixel_values"].shape == (3, 32, 32)


def test_dataset_missing_image(tmp_path: Path, dataset_dir: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    records = json.loads((dataset_dir / "data.json").read_text())[:3]
    records[1]["image"] = "nowhere/gone.png"
    json_path = _write(tmp_path, records)
    image_root = dataset_dir / "images"
    with pytest.raises(FileNotFoundError, match=rf"'{records[1]['id']}'.*{image_root / 'nowhere/gone.png'}"):
        _dataset(json_path, image_root, tokenizer)
    ds = _dataset(json_path, image_root, tokenizer, on_missing_image="skip")
    assert ds.skipped_ids == [records[1]["id"]]
    assert [ds[i]["id"] for i in range(len(ds))] == [records[0]["id"], records[2]["id"]]
    with pytest.raises(ValueError, match="on_missing_image='ignore'"):
        _dataset(json_path, image_root, tokenizer, on_missing_image="ignore")


def test_dataset_unreadable_image(
    tmp_path: Path, records: list[dict], tokenizer: PreTrainedTokenizerFast
) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    record = {**records[0], "image": "broken.png"}
    ds = _dataset(_write(tmp_path, [record]), tmp_path, tokenizer)
    with pytest.raises(OSError, match=rf"'{record['id']}'.*{tmp_path / 'broken.png'}"):
        ds[0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.pop("conversations"), r"record #1 \(id 'syn-000001'\): 'conversations'"),
        (lambda r: r["conversations"][1].update({"from": "assistant"}), r"id 'syn-000001'.*from='assistant'"),
        (lambda r: r["conversations"].reverse(), r"id 'syn-000001'.*turn 0 has from='gpt'"),
        (lambda r: r.pop("id"), r"record #1: missing 'id'"),
        (lambda r: r.pop("image"), r"id 'syn-000001'.*text-only"),
    ],
)
def test_dataset_rejects_bad_records(
    tmp_path: Path, records: list[dict], tokenizer: PreTrainedTokenizerFast, mutate, message: str
) -> None:
    bad = json.loads(json.dumps(records[:3]))
    mutate(bad[1])
    json_path = _write(tmp_path, bad)
    with pytest.raises(ValueError, match=message) as info:
        _dataset(json_path, tmp_path, tokenizer)
    assert str(json_path) in str(info.value)


def test_dataset_text_only_and_unsupervised(
    tmp_path: Path, tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Test-local templates: "echo" supervises every text token, "mute" none.
    def echo(conversations, tok) -> Encoded:
        ids = tok("".join(t["value"] for t in conversations)).input_ids
        return Encoded(input_ids=ids, labels=ids)

    monkeypatch.setitem(TEMPLATES, "echo", echo)
    monkeypatch.setitem(TEMPLATES, "mute", lambda c, t: Encoded([1, 2], [IGNORE_INDEX] * 2))
    records = [
        {"id": "t0", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "red"}]}
    ]
    json_path = _write(tmp_path, records)
    item = LlavaDataset(json_path, tmp_path, tokenizer, "echo", image_size=32, mean=MEAN, std=STD)[0]
    assert item["pixel_values"] is None and item["has_image"] is False
    with pytest.raises(ValueError, match="max_length=2"):
        LlavaDataset(json_path, tmp_path, tokenizer, "echo", image_size=32, mean=MEAN, std=STD, max_length=2)[
            0
        ]
    mute = LlavaDataset(json_path, tmp_path, tokenizer, "mute", image_size=32, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="sample 't0'.*IGNORE_INDEX"):
        mute[0]
    with pytest.raises(ValueError, match=r"template='nope'.*plain"):
        LlavaDataset(json_path, tmp_path, tokenizer, "nope", image_size=32, mean=MEAN, std=STD)


# --- collation -----------------------------------------------------------------------------------


def _item(sid: str, ids: list[int], image: torch.Tensor | None) -> dict:
    return {
        "id": sid,
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor([IGNORE_INDEX, *ids[1:]]),
        "pixel_values": image,
        "has_image": image is not None,
    }


def test_collate_pads_right_and_zero_fills_images() -> None:
    image = torch.randn(3, 4, 4)
    batch = collate([_item("a", [5, 6, 7], image), _item("b", [8], None)], pad_token_id=0)
    assert set(batch) == {"input_ids", "labels", "attention_mask", "pixel_values", "has_image", "ids"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX] * 3]
    assert batch["attention_mask"].dtype == torch.long
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["pixel_values"].shape == (2, 3, 4, 4)
    assert torch.equal(batch["pixel_values"][0], image) and not batch["pixel_values"][1].any()
    assert batch["has_image"].tolist() == [True, False] and batch["ids"] == ["a", "b"]
    # The mask follows lengths even when pad equals a real token id.
    assert collate([_item("a", [0, 0], None), _item("b", [0], None)], 0)["attention_mask"].tolist() == [
        [1, 1],
        [1, 0],
    ]
    assert collate([_item("c", [1], None)], pad_token_id=0)["pixel_values"] is None


def test_collate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="pad_token_id=None"):
        collate([_item("a", [1], None)], pad_token_id=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="different shapes"):
        collate([_item("a", [1], torch.zeros(3, 4, 4)), _item("b", [1], torch.zeros(3, 8, 8))], 0)


def test_make_collate_is_picklable_and_drives_a_dataloader(
    dataset_dir: Path, tokenizer: PreTrainedTokenizerFast
) -> None:
    fn = pickle.loads(pickle.dumps(make_collate(tokenizer.pad_token_id)))
    ds = _dataset(dataset_dir / "data.json", dataset_dir / "images", tokenizer)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=fn)))
    lengths = [len(ds[i]["input_ids"]) for i in range(4)]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["pixel_values"].shape == (4, 3, 32, 32) and batch["has_image"].all()


# --- supervision after truncation and the unsupervised-sample check --------------------------------


def _naive_supervised_after_truncation(ids: list[int], labels: list[int], m: int, max_length: int) -> bool:
    """Independent reference: splice literally, truncate, and look for a label at positions >= 1."""
    spliced: list[int] = []
    for token, label in zip(ids, labels, strict=True):
        spliced.extend([IGNORE_INDEX] * m if token == IMAGE_TOKEN_INDEX else [label])
    return any(label != IGNORE_INDEX for label in spliced[1:max_length])


def test_supervised_after_truncation_hand_worked() -> None:
    i, x = IMAGE_TOKEN_INDEX, IGNORE_INDEX
    ids, labels = [1, i, 7, 8], [x, x, 7, 8]
    # Spliced with 3 visual tokens: [1, v, v, v, 7, 8]; the first supervised label sits at position 4.
    assert supervised_after_truncation(ids, labels, num_visual_tokens=3, max_length=5)
    assert not supervised_after_truncation(ids, labels, num_visual_tokens=3, max_length=4)
    assert supervised_after_truncation(torch.tensor(ids), torch.tensor(labels), 3, 5)
    # A label at position 0 is never predicted (the loss is on the next token).
    assert not supervised_after_truncation([5, 6], [5, x], num_visual_tokens=1, max_length=10)
    assert supervised_after_truncation([5, 6], [5, 6], num_visual_tokens=1, max_length=2)
    assert not supervised_after_truncation([5, 6], [x, x], num_visual_tokens=1, max_length=10)


def test_supervised_after_truncation_matches_a_naive_splice() -> None:
    rng = random.Random(0)
    for _ in range(500):
        length = rng.randint(1, 12)
        ids = [rng.randint(0, 50) for _ in range(length)]
        labels = [t if rng.random() < 0.3 else IGNORE_INDEX for t in ids]
        if rng.random() < 0.7:
            where = rng.randrange(length)
            ids[where], labels[where] = IMAGE_TOKEN_INDEX, IGNORE_INDEX
        m, max_length = rng.randint(0, 8), rng.randint(1, 20)
        expected = _naive_supervised_after_truncation(ids, labels, m, max_length)
        assert supervised_after_truncation(ids, labels, m, max_length) is expected, (
            ids,
            labels,
            m,
            max_length,
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([1, 2], [1], 1, 4), "len"),
        (([1], [1], -1, 4), "num_visual_tokens=-1"),
        (([1], [1], 1, 0), "max_length=0"),
        (([IMAGE_TOKEN_INDEX], [IMAGE_TOKEN_INDEX], 1, 4), r"labels\[0\]=-200"),
        ((torch.zeros(2, 2), torch.zeros(2, 2), 1, 4), r"input_ids.*shape \(2, 2\)"),
    ],
)
def test_supervised_after_truncation_rejects_bad_input(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        supervised_after_truncation(*args)


def _answer_only(conversations, tok) -> Encoded:
    """Test-local template: prompt masked, answer text supervised, no end-of-turn token."""
    prompt = tok(conversations[0]["value"]).input_ids
    answer = tok(conversations[1]["value"], add_special_tokens=False).input_ids
    return Encoded(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)


def _text_records(answers: list[str]) -> list[dict]:
    return [
        {"id": f"s{k}", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": a}]}
        for k, a in enumerate(answers)
    ]


def test_check_supervision_drops_up_to_the_threshold(
    tmp_path: Path, tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TEMPLATES, "answer_only", _answer_only)
    json_path = _write(tmp_path, _text_records(["red", "", "blue", "green"]))

    def build(**kwargs) -> LlavaDataset:
        return LlavaDataset(
            json_path, tmp_path, tokenizer, "answer_only", image_size=32, mean=MEAN, std=STD, **kwargs
        )

    ds = build(max_unsupervised_fraction=0.25)
    assert ds.unsupervised_ids == ["s1"] and len(ds) == 3
    assert [ds[k]["id"] for k in range(len(ds))] == ["s0", "s2", "s3"]
    assert ds.check_supervision() == [] and ds.unsupervised_ids == ["s1"]
    with pytest.raises(
        ValueError, match=r"1 of 4 samples \(25.00%\).*template 'answer_only'.*fraction=0.2; ids: 's1'\."
    ):
        build(max_unsupervised_fraction=0.2)
    lazy = build()  # None: no pass at construction; the item itself raises when fetched
    assert len(lazy) == 4 and lazy.unsupervised_ids == []
    with pytest.raises(ValueError, match="sample 's1'.*IGNORE_INDEX"):
        lazy[1]
    with pytest.raises(ValueError, match="max_unsupervised_fraction=1.5"):
        build(max_unsupervised_fraction=1.5)


def test_check_supervision_lists_the_first_ids(
    tmp_path: Path, tokenizer: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(TEMPLATES, "answer_only", _answer_only)
    json_path = _write(tmp_path, _text_records(["red"] + [""] * 7))
    with pytest.raises(
        ValueError, match=r"7 of 8 samples.*ids: 's1', 's2', 's3', 's4', 's5' and 2 more"
    ) as info:
        LlavaDataset(
            json_path,
            tmp_path,
            tokenizer,
            "answer_only",
            image_size=32,
            mean=MEAN,
            std=STD,
            max_unsupervised_fraction=0.5,
        )
    assert "tokenizer" in str(info.value) and str(json_path) in str(info.value)
    with pytest.raises(ValueError, match=r"no usable sample \(1 records, 0 skipped.*1 without"):
        LlavaDataset(
            _write(tmp_path, _text_records([""])),
            tmp_path,
            tokenizer,
            "answer_only",
            image_size=32,
            mean=MEAN,
            std=STD,
            max_unsupervised_fraction=1.0,
        )


def test_check_supervision_counts_truncation_after_the_splice(
    tmp_path: Path, dataset_dir: Path, tokenizer: PreTrainedTokenizerFast, records: list[dict]
) -> None:
    # Stage-1 samples under `plain`: [bos, <image>, caption..., "\n"]; the first supervised token is
    # at text position 2, i.e. spliced position 1 + m. With m visual tokens it survives only if
    # max_length > 1 + m. The text-only sample is unaffected by m.
    image_record = records[0]
    text_record = {
        "id": "text-only",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a red circle"}],
    }
    json_path = _write(tmp_path, [image_record, text_record])
    text_length = len(encode_conversation(image_record["conversations"], "plain", tokenizer).input_ids)
    m = 40

    def build(max_length: int, fraction: float) -> LlavaDataset:
        return LlavaDataset(
            json_path,
            dataset_dir / "images",
            tokenizer,
            "echo_plain",
            image_size=32,
            mean=MEAN,
            std=STD,
            max_length=max_length,
            num_visual_tokens=m,
            max_unsupervised_fraction=fraction,
        )

    def echo_plain(conversations, tok) -> Encoded:  # plain for images, every token supervised otherwise
        if "<image>" in conversations[0]["value"]:
            return TEMPLATES["plain"](conversations, tok)
        ids = tok(conversations[1]["value"]).input_ids
        return Encoded(ids, [IGNORE_INDEX, *ids[1:]])

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(TEMPLATES, "echo_plain", echo_plain)
        max_length = max(1 + m, text_length)
        ds = build(max_length, 0.5)
        assert ds.unsupervised_ids == [image_record["id"]] and len(ds) == 1
        assert build(max_length + 1, 0.0).unsupervised_ids == []
        with pytest.raises(
            ValueError, match=rf"truncation at max_length={max_length} \(num_visual_tokens={m}\)"
        ):
            build(max_length, 0.0)


def test_chat_template_dataset_with_multi_turn_and_text_only(
    tmp_path: Path, dataset_dir: Path, records: list[dict]
) -> None:
    tiny = train_tiny_tokenizer(vocab_size=1024, model_max_length=512)
    multi = {
        "id": "multi",
        "image": records[0]["image"],
        "conversations": [
            {"from": "human", "value": "What is shown?\n<image>"},
            {"from": "gpt", "value": records[0]["conversations"][1]["value"]},
            {"from": "human", "value": "Is there a circle?"},
            {"from": "gpt", "value": "Yes"},
        ],
    }
    text = {
        "id": "text",
        "conversations": [{"from": "human", "value": "Say no."}, {"from": "gpt", "value": "No"}],
    }
    ds = LlavaDataset(
        _write(tmp_path, [multi, text]),
        dataset_dir / "images",
        tiny,
        "vicuna_v1",
        image_size=32,
        mean=MEAN,
        std=STD,
        image_mode="pad",
        max_unsupervised_fraction=0.0,
    )
    assert len(ds) == 2 and ds.unsupervised_ids == []
    first, second = ds[0], ds[1]
    assert (first["input_ids"] == IMAGE_TOKEN_INDEX).sum() == 1 and first["pixel_values"].shape == (3, 32, 32)
    supervised = first["labels"][first["labels"] != IGNORE_INDEX].tolist()
    assert tiny.decode(supervised) == f" {multi['conversations'][1]['value']}</s> Yes</s>"
    assert (
        second["pixel_values"] is None
        and tiny.decode(second["labels"][second["labels"] != IGNORE_INDEX]) == " No</s>"
    )


def test_a_text_only_batch_gets_zero_images_only_when_asked() -> None:
    """Several ranks: a micro-batch without images still feeds the tower (same modules on every rank)."""
    from core.data.llava import collate

    items = [
        {
            "id": str(k),
            "input_ids": torch.tensor([1, 2]),
            "labels": torch.tensor([1, 2]),
            "pixel_values": None,
        }
        for k in range(2)
    ]
    assert collate(items, pad_token_id=0)["pixel_values"] is None
    batch = collate(items, pad_token_id=0, image_shape=(3, 4, 4))
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and not batch["pixel_values"].any()
    assert not batch["has_image"].any()

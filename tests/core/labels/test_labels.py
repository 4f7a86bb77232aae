"""Tests for core.labels: word lists, the label store (extraction, reuse, resume, checks), transfer, loading."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.labels.extract as extract_mod
import core.labels.scoring as scoring_mod
from core.cache import is_built
from core.data import LlavaDataset, SyntheticSpec, ensure_synthetic, preprocess
from core.data.templates import TEMPLATES, Encoded, register_template
from core.labels import (
    ATTRIBUTE_WORDS,
    DEFAULT_STOP_WORDS,
    ExtractJob,
    LabelStore,
    TransferredLabels,
    WithLabels,
    caption_words,
    collate_with_labels,
    ensure_store,
    extract_store,
    labels_for_grid,
    read_word_list,
    resolve_label_encoder,
    word_list_hash,
    write_word_list,
)
from core.models import get_encoder_spec, load_encoder
from core.models.tiny_tokenizer import train_tiny_tokenizer
from core.sea_labels import extract_labels, transfer_labels

BATCH = 8  # 24 images -> 3 extraction batches
TOP_N = 10


pytestmark = pytest.mark.usefixtures("seagrid_cache")  # a fresh cache: builds run for real here


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_synthetic(SyntheticSpec(num_samples=24, seed=1), root=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def words(data: tuple[Path, Path]) -> list[str]:
    return caption_words(data[0])


@pytest.fixture(scope="module")
def store(seagrid_cache: Path, data: tuple[Path, Path], words: list[str]) -> LabelStore:
    return ensure_store(ExtractJob("tiny-clip", words, *data, top_n=TOP_N, batch_size=BATCH), progress=False)


@pytest.fixture(scope="module")
def tower():
    return load_encoder("tiny-clip")


def _arrays(store: LabelStore) -> tuple[np.ndarray, np.ndarray]:
    return np.load(store.path / "index.npy"), np.load(store.path / "score.npy")


# ---------------------------------------------------------------- word lists


def test_caption_words_on_synthetic_captions(data: tuple[Path, Path], words: list[str]) -> None:
    records = json.loads(data[0].read_text())
    truth = json.loads((data[0].parent / "objects.json").read_text())["samples"]
    colours = {o["colour"] for s in truth.values() for o in s["objects"]}
    shapes = {o["shape"] for s in truth.values() for o in s["objects"]}
    assert colours <= set(words) and shapes <= set(words)
    assert not set(words) & DEFAULT_STOP_WORDS
    assert {"the", "a", "and", "of", "there", "image", "shows"}.isdisjoint(words)
    assert caption_words(data[0]) == words  # deterministic
    # Independent count over the captions: sorted by count descending, then alphabetically.
    counts = Counter(
        t for r in records for t in re.findall(r"[a-z]+", r["conversations"][1]["value"].lower())
    )
    assert words == sorted(words, key=lambda w: (-counts[w], w))
    # The prompts (human turns) are not mined: "describe" appears only there.
    assert "describe" not in words and counts["describe"] == 0


def test_caption_words_rules(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    records = [
        {
            "id": "1",
            "conversations": [
                {"from": "human", "value": "kite kite kite"},
                {"from": "gpt", "value": "The zebra runs."},
            ],
        },
        {
            "id": "2",
            "conversations": [
                {"from": "human", "value": "x"},
                {"from": "gpt", "value": "A zebra, a teal kite; 4x4 zebra_2."},
            ],
        },
    ]
    path.write_text(json.dumps(records))
    # zebra: 3 (the "_" and digits split "zebra_2"); teal: 1 but an attribute; kite/runs: 1; "x": too short.
    assert "teal" in ATTRIBUTE_WORDS
    assert caption_words(path) == ["zebra", "teal"]
    assert caption_words(path, min_count=1) == ["zebra", "kite", "runs", "teal"]
    assert caption_words(path, max_words=1) == ["zebra"]
    assert caption_words(path, stop_words={"zebra"}) == ["teal"]
    with pytest.raises(ValueError, match="min_count=0"):
        caption_words(path, min_count=0)
    with pytest.raises(ValueError, match="no caption word survives"):
        caption_words(path, min_count=5, attribute_words=())


def test_read_word_list(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("# colours\nred\n\n  blue  \ntraffic light\n# end\n")
    assert read_word_list(path) == ["red", "blue", "traffic light"]
    path.write_text("red\nblue\n\nred\n")
    with pytest.raises(ValueError, match=r"line 4 repeats 'red' from line 1"):
        read_word_list(path)
    path.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="no words"):
        read_word_list(path)
    write_word_list(["b", "a c"], path)
    assert read_word_list(path) == ["b", "a c"]
    with pytest.raises(ValueError, match="duplicates"):
        write_word_list(["a", "a"], path)
    assert word_list_hash(["a", "b"]) != word_list_hash(["b", "a"])  # indices point into the order


# ---------------------------------------------------------------- extraction and the store


def test_extraction_equals_direct_computation(
    store: LabelStore, data: tuple[Path, Path], words: list[str], tower
) -> None:
    spec = get_encoder_spec("tiny-clip")
    records = json.loads(data[0].read_text())
    assert store.ids == [r["id"] for r in records] and len(store) == 24
    assert store.words == words and store.grid == (8, 8) and store.top_n == TOP_N
    pixels = []
    for r in records:
        with Image.open(data[1] / r["image"]) as image:
            pixels.append(preprocess(image, spec.image_size, spec.mean, spec.std, "square"))
    with torch.no_grad():
        feats = tower.joint_patch_features(torch.stack(pixels))  # one batch of 24, not 3 of 8
        word_feats = tower.text_features(words, normalize=True)
    want_index, want_score = extract_labels(feats, word_feats, top_n=TOP_N, negate=True)
    index, score = _arrays(store)
    assert index.dtype == np.int32 and score.dtype == np.float32 and index.shape == (24, 64, TOP_N)
    np.testing.assert_array_equal(index, want_index.numpy())
    np.testing.assert_allclose(score, want_score.numpy(), rtol=0, atol=1e-6)
    assert 0.2 < (index >= 0).mean() < 1.0  # some labels, some empty slots: the test can tell them apart
    row_index, row_score = store[5]
    assert row_index.dtype == np.int32 and row_score.dtype == np.float32
    np.testing.assert_array_equal(row_index, want_index[5].numpy())
    np.testing.assert_array_equal(store.by_id(records[5]["id"])[0], row_index)


def test_store_is_reused_not_recomputed(
    store: LabelStore, data: tuple[Path, Path], words: list[str], monkeypatch
) -> None:
    mtime = (store.path / "index.npy").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("a finished store was recomputed")

    monkeypatch.setattr(extract_mod, "_fill", fail)
    again = ensure_store(ExtractJob("tiny-clip", words, *data, top_n=TOP_N, batch_size=4), progress=False)
    assert again.path == store.path
    assert (
        extract_store(ExtractJob("tiny-clip", words, *data, top_n=TOP_N), store.path, progress=False)
        is not None
    )
    assert (store.path / "index.npy").stat().st_mtime_ns == mtime
    # Anything that defines the content gives another directory.
    other = extract_mod.store_identity("tiny-clip", words, {"x": 1}, top_n=TOP_N)
    assert extract_mod.store_dir(None, other) != store.path


def test_interrupted_extraction_resumes(
    store: LabelStore, data: tuple[Path, Path], words: list[str], tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "partial"
    assert (
        extract_store(
            ExtractJob("tiny-clip", words, *data, batch_size=BATCH), out, progress=False, max_batches=1
        )
        is None
    )
    assert json.loads((out / "progress.json").read_text())["done"] == BATCH and not is_built(out)
    with pytest.raises(ValueError, match=r"unfinished extraction \(8 images done"):
        LabelStore.open(out)

    seen: list[int] = []
    real = scoring_mod.extract_labels

    def counting(patch_features, *args, **kwargs):
        seen.append(patch_features.shape[0])
        return real(patch_features, *args, **kwargs)

    monkeypatch.setattr(scoring_mod, "extract_labels", counting)
    resumed = extract_store(ExtractJob("tiny-clip", words, *data, batch_size=BATCH), out, progress=False)
    assert resumed is not None and is_built(out)
    assert seen == [BATCH, BATCH]  # only the rows after the first batch were computed
    for got, want in zip(_arrays(resumed), _arrays(store), strict=True):
        np.testing.assert_array_equal(got, want)


def test_resume_refuses_other_content(data: tuple[Path, Path], words: list[str], tmp_path: Path) -> None:
    out = tmp_path / "partial"
    extract_store(ExtractJob("tiny-clip", words, *data, batch_size=BATCH), out, progress=False, max_batches=1)
    with pytest.raises(ValueError, match=r"unfinished store has top_n=10 but this extraction has top_n=5"):
        extract_store(ExtractJob("tiny-clip", words, *data, top_n=5), out, progress=False)


def test_open_mismatch_names_the_field(store: LabelStore) -> None:
    for field, value, found in [
        ("num_images", 23, "24"),
        ("grid", (4, 4), r"\[8, 8\]"),
        ("top_n", 5, "10"),
        ("word_list_hash", "0" * 16, "'[0-9a-f]{16}'"),
    ]:
        with pytest.raises(
            ValueError, match=rf"{re.escape(str(store.path))}: {field} mismatch: expected .*, found {found}"
        ):
            LabelStore.open(store.path, {field: value})
    assert LabelStore.open(store.path, {"num_images": 24, "grid": [8, 8], "top_n": 10}).path == store.path
    with pytest.raises(ValueError, match="unknown fields"):
        LabelStore.open(store.path, {"colour": 1})


def test_corrupt_store_is_a_clear_error(store: LabelStore, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(store.path, broken)
    (broken / "score.npy").unlink()
    with pytest.raises(ValueError, match=r"corrupt, score.npy is missing"):
        LabelStore.open(broken)
    np.save(broken / "score.npy", np.zeros((24, 16, TOP_N), dtype=np.float32))
    with pytest.raises(
        ValueError, match=r"corrupt, score.npy is float32\[24, 16, 10\], meta.json says float32\[24, 64, 10\]"
    ):
        LabelStore.open(broken)
    shutil.copy(store.path / "score.npy", broken / "score.npy")
    (broken / "words.txt").write_text("red\n")
    with pytest.raises(ValueError, match="corrupt, words.txt"):
        LabelStore.open(broken)
    (broken / "meta.json").unlink()
    with pytest.raises(ValueError, match="corrupt, meta.json is missing"):
        LabelStore.open(broken)


def test_store_pickles_without_its_arrays(store: LabelStore) -> None:
    store[0]  # maps the arrays
    blob = pickle.dumps(store)
    assert len(blob) < 20_000  # the rows (24 x 64 x 10 x 8 bytes = 123 KB) are not copied
    clone = pickle.loads(blob)
    for got, want in zip(clone[3], store[3], strict=True):
        np.testing.assert_array_equal(got, want)


def test_float16_store(store: LabelStore, data: tuple[Path, Path], words: list[str]) -> None:
    half = ensure_store(
        ExtractJob("tiny-clip", words, *data, top_n=TOP_N, batch_size=BATCH, score_dtype="float16"),
        progress=False,
    )
    assert half.path != store.path and half.meta["score_dtype"] == "float16"
    index, score = _arrays(store)
    index16, score16 = _arrays(half)
    assert score16.dtype == np.float16
    want16 = score.astype(np.float16)
    np.testing.assert_array_equal(index16, np.where(want16 > 0, index, -1))
    np.testing.assert_array_equal(score16, np.where(want16 > 0, want16, 0))


def test_encoder_without_text_tower_needs_labels_from(
    data: tuple[Path, Path], words: list[str], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="tiny-dinov2.*no text tower.*sea.labels_from"):
        extract_store(ExtractJob("tiny-dinov2", words, *data), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="sea.labels_from"):
        resolve_label_encoder("tiny-dinov2")
    assert resolve_label_encoder("tiny-dinov2", "tiny-clip") == "tiny-clip"
    assert resolve_label_encoder("tiny-clip") == "tiny-clip"
    with pytest.raises(ValueError, match="labels_from='tiny-dinov2' has no text tower"):
        resolve_label_encoder("tiny-clip", "tiny-dinov2")


# ---------------------------------------------------------------- transfer


def test_transfer_to_dinov2_grid(store: LabelStore) -> None:
    dst = get_encoder_spec("tiny-dinov2").grid
    assert dst == (4, 4)
    index, score = _arrays(store)
    precomputed = labels_for_grid(store, dst, precompute=True)
    view = labels_for_grid(store, dst, precompute=False)
    assert isinstance(precomputed, LabelStore) and isinstance(view, TransferredLabels)
    assert precomputed.grid == (4, 4) and precomputed.meta["transferred_from"]["grid"] == [8, 8]
    assert labels_for_grid(store, (8, 8)) is store
    for row in range(len(store)):
        want_index, want_score = transfer_labels(
            torch.from_numpy(index[row]), torch.from_numpy(score[row]), (8, 8), (4, 4), TOP_N
        )
        for labels in (precomputed, view):
            got_index, got_score = labels[row]
            np.testing.assert_array_equal(got_index, want_index.numpy())
            np.testing.assert_array_equal(got_score, want_score.numpy())
    # The precomputed store is reused.
    assert labels_for_grid(store, dst).path == precomputed.path


# ---------------------------------------------------------------- dataset and collation


def _encode_answer(conversations, tokenizer) -> Encoded:
    """Test template: the answer's tokens, all supervised (works for text-only records)."""
    ids = tokenizer(conversations[1]["value"], add_special_tokens=False)["input_ids"]
    return Encoded(input_ids=ids, labels=list(ids))


if "labels-test" not in TEMPLATES:
    register_template("labels-test")(_encode_answer)


def test_with_labels_and_collate(data: tuple[Path, Path], words: list[str], tmp_path: Path) -> None:
    records = json.loads(data[0].read_text())[:8]
    root = tmp_path / "images"
    root.mkdir()
    for r in records:
        shutil.copy(data[1] / r["image"], root / r["image"])
    (root / records[2]["image"]).unlink()  # a missing image: its row stays empty, the dataset skips it
    text_only = {
        "id": "txt-0",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "red star"}],
    }
    mixed = records[:4] + [text_only] + records[4:]
    json_path = tmp_path / "mixed.json"
    json_path.write_text(json.dumps(mixed))

    labels = ensure_store(
        ExtractJob("tiny-clip", words, json_path, root, batch_size=3, on_missing_image="skip"),
        root=tmp_path / "labels",
        progress=False,
    )
    assert labels.missing_ids == [records[2]["id"]] and len(labels) == 8
    assert (labels[2][0] == -1).all() and (labels[2][1] == 0).all()

    spec = get_encoder_spec("tiny-clip")
    tokenizer = train_tiny_tokenizer(512, 64)
    dataset = LlavaDataset(
        json_path,
        root,
        tokenizer,
        "labels-test",
        image_size=spec.image_size,
        mean=spec.mean,
        std=spec.std,
        on_missing_image="skip",
    )
    wrapped = WithLabels(dataset, labels)
    assert len(wrapped) == 8 and wrapped.rows == [0, 1, 3, -1, 4, 5, 6, 7]
    items = [wrapped[i] for i in range(len(wrapped))]
    for item in items:
        assert item["label_index"].dtype == torch.int64 and item["label_score"].dtype == torch.float32
        if item["id"] == "txt-0":
            assert (item["label_index"] == -1).all() and (item["label_score"] == 0).all()
        else:
            want_index, want_score = labels.by_id(item["id"])
            np.testing.assert_array_equal(item["label_index"].numpy(), want_index)
            np.testing.assert_array_equal(item["label_score"].numpy(), want_score)

    batch = collate_with_labels(items[2:5], pad_token_id=tokenizer.pad_token_id)
    assert batch["label_index"].shape == (3, 64, TOP_N) and batch["label_score"].shape == (3, 64, TOP_N)
    assert batch["ids"] == [records[3]["id"], "txt-0", records[4]["id"]]
    assert batch["has_image"].tolist() == [True, False, True]
    assert (batch["label_index"][1] == -1).all() and (batch["label_score"][1] == 0).all()
    torch.testing.assert_close(batch["label_index"][2], items[4]["label_index"])
    # Items without labels at all are filled; a batch with none has none.
    bare = [{k: v for k, v in items[3].items() if not k.startswith("label_")}, items[4]]
    filled = collate_with_labels(bare, pad_token_id=tokenizer.pad_token_id)
    assert (filled["label_index"][0] == -1).all()
    assert collate_with_labels(bare[:1], pad_token_id=tokenizer.pad_token_id)["label_index"] is None

    # A store extracted from another dataset does not align.
    other = json.loads(data[0].read_text())[10:12]
    (tmp_path / "other.json").write_text(json.dumps(other))
    shutil.copy(data[1] / other[0]["image"], root / other[0]["image"])
    shutil.copy(data[1] / other[1]["image"], root / other[1]["image"])
    other_ds = LlavaDataset(
        tmp_path / "other.json", root, tokenizer, "labels-test", image_size=64, mean=spec.mean, std=spec.std
    )
    with pytest.raises(ValueError, match=r"no label row for dataset item 0 \(id 'syn-000010'"):
        WithLabels(other_ds, labels)

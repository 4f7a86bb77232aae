"""Bad inputs are refused with an error naming the field/file/sample and a fix, and leave nothing behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from core.data.llava import LlavaDataset
from core.labels import LabelStore, WithLabels
from core.labels.store_format import INDEX_FILE, make_meta
from core.labels.store_writer import StoreWriter
from core.models.adapter import build_adapter
from core.models.adapter_io import ADAPTER_WEIGHTS, load_adapter, save_adapter
from core.models.tiny_tokenizer import train_tiny_tokenizer
from grid.cli import main

MEAN = STD = (0.5, 0.5, 0.5)
WORDS = ["cat", "dog", "red"]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def nothing_written(tmp_path: Path) -> Iterator[dict[str, set[str]]]:
    """The test's bad input must not leave a file behind under tmp_path (inputs are made first)."""
    before: dict[str, set[str]] = {}
    yield before  # the test stores its snapshot in before["tree"] once its inputs exist
    if "tree" in before:
        assert _tree(tmp_path) == before["tree"], "a failed call left partial output behind"


# ---------------------------------------------------------------- specs (through `seagrid plan`)

BAD_SPECS = {
    "unknown key": (
        "base: {stage1: {learning_rate: 0.1}}",
        ["base.stage1.learning_rate", "unknown key", "allowed here", "lr"],
    ),
    "unknown llm id": ("base: {model: {llm: vicuna-8b}}", ["base.model.llm", "vicuna-8b", "vicuna-7b"]),
    "unknown encoder in an axis": (
        "grid: {axes: {model.encoder: [tiny-clip, clip-l-999]}}",
        ["model.encoder", "clip-l-999", "clip-l-336"],
    ),
    "bad type": (
        "base: {stage1: {micro_batch_size: sixteen}}",
        ["base.stage1.micro_batch_size", "'sixteen'"],
    ),
    "empty axis": ("grid: {axes: {seed: []}}", ["grid.axes.seed", "at least one value"]),
    "dinov2 + sea without labels_from": (
        "base: {model: {encoder: tiny-dinov2}, method: {name: sea}}",
        ["method.sea.labels_from", "tiny-dinov2", "no text tower", "tiny-clip"],
    ),
    "sea window larger than the patch grid": (
        "base: {method: {name: sea, sea: {window: 9}}}",
        ["method.sea.window 9", "8 x 8 patch grid", "tiny-clip", "at most 8"],
    ),
    "sea window axis larger than a dinov2 grid": (
        "base: {model: {encoder: tiny-dinov2}, method: {name: sea, sea: {labels_from: tiny-clip}}}\n"
        "grid: {axes: {method.sea.window: [2, 5]}}",
        ["method.sea.window=5", "4 x 4 patch grid", "tiny-dinov2", "at most 4"],
    ),
    "offload contradicts zero stage": (
        "base: {stage1: {deepspeed: {zero: 2, offload: optimizer+params}}}",
        ["base.stage1.deepspeed", "optimizer+params", "needs zero 3"],
    ),
    "both stages off": (
        "base: {stage1: {enabled: false}}",
        ["stage2.enabled", "both false", "train nothing"],
    ),
}


@pytest.mark.parametrize("case", BAD_SPECS, ids=list(BAD_SPECS))
def test_bad_spec_is_refused_before_anything_is_written(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    body, fragments = BAD_SPECS[case]
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: bad\noutput: {{root: out, tracking_uri: sqlite:///{tmp_path}/m.db}}\n{body}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["plan", str(spec)]) == 2
    message = capsys.readouterr().err
    for fragment in [str(spec), *fragments]:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert _tree(tmp_path) == {"spec.yaml"}


# ---------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(512, 256)


def _turns(question: str = "<image>\nWhat is shown?", answer: str = "a red cat") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _dataset(tmp_path: Path, records: list[dict] | str, images: dict[str, bytes] | None = None) -> Path:
    """data.json (a list, or raw text) and images/ under tmp_path; returns the JSON path."""
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    for name, data in (images if images is not None else {"a.png": _png()}).items():
        (tmp_path / "images" / name).write_bytes(data)
    path = tmp_path / "data.json"
    path.write_text(records if isinstance(records, str) else json.dumps(records))
    return path


def _png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _open(json_path: Path, tokenizer, **kwargs) -> LlavaDataset:
    return LlavaDataset(
        json_path,
        json_path.parent / "images",
        tokenizer,
        "plain",
        image_size=16,
        mean=MEAN,
        std=STD,
        **kwargs,
    )


BAD_DATASETS = {
    "not a list": ('{"id": "s0"}', ["data.json", "expected a JSON list, got dict"]),
    "malformed json": (
        '[{"id": "s0", "conversations": [}]',
        ["data.json", "not valid JSON at line 1 column"],
    ),
    "image field without <image>": (
        [{"id": "s0", "image": "a.png", "conversations": _turns("What is shown?")}],
        ["record #0 (id 's0')", "has an image", "exactly one '<image>'", "found 0"],
    ),
    "conversation does not alternate": (
        [{"id": "s0", "image": "a.png", "conversations": [_turns()[0], _turns()[0], _turns()[1]]}],
        ["record #0 (id 's0')", "turn 1 has from='human'", "expected 'gpt'", "alternate"],
    ),
    "conversation without an answer": (
        [{"id": "s0", "image": "a.png", "conversations": _turns()[:1]}],
        ["record #0 (id 's0')", "no 'gpt' turn"],
    ),
    "record without id": ([{"image": "a.png", "conversations": _turns()}], ["record #0", "missing 'id'"]),
}


@pytest.mark.parametrize("case", BAD_DATASETS, ids=list(BAD_DATASETS))
def test_bad_dataset_json_is_refused(case: str, tmp_path: Path, tokenizer, nothing_written) -> None:
    content, fragments = BAD_DATASETS[case]
    json_path = _dataset(tmp_path, content)
    nothing_written["tree"] = _tree(tmp_path)
    with pytest.raises(ValueError) as err:
        _open(json_path, tokenizer)
    for fragment in fragments:
        assert fragment in str(err.value), f"{fragment!r} not in {err.value}"


def test_missing_dataset_json_names_the_path(tmp_path: Path, tokenizer, nothing_written) -> None:
    nothing_written["tree"] = _tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"json_path=.*nope\.json: no such file; point"):
        _open(tmp_path / "nope.json", tokenizer)


def test_missing_image_names_sample_path_and_the_skip_setting(
    tmp_path: Path, tokenizer, nothing_written
) -> None:
    json_path = _dataset(tmp_path, [{"id": "s7", "image": "gone.png", "conversations": _turns()}])
    nothing_written["tree"] = _tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"sample 's7'.*images/gone\.png.*on_missing_image: skip"):
        _open(json_path, tokenizer)
    skipped = _dataset(
        tmp_path,
        [
            {"id": "s7", "image": "gone.png", "conversations": _turns()},
            {"id": "s8", "image": "a.png", "conversations": _turns()},
        ],
    )
    assert _open(skipped, tokenizer, on_missing_image="skip").skipped_ids == ["s7"]


def test_corrupt_image_names_sample_and_file(tmp_path: Path, tokenizer, nothing_written) -> None:
    truncated = _png()[:40]
    json_path = _dataset(
        tmp_path, [{"id": "s3", "image": "bad.png", "conversations": _turns()}], {"bad.png": truncated}
    )
    nothing_written["tree"] = _tree(tmp_path)
    dataset = _open(json_path, tokenizer)
    with pytest.raises(
        OSError, match=r"sample 's3' in .*data\.json: cannot read image .*bad\.png.*replace the file"
    ):
        dataset[0]


def test_empty_answer_is_refused_by_default_and_droppable(tmp_path: Path, tokenizer, nothing_written) -> None:
    records = [
        {"id": "s0", "image": "a.png", "conversations": _turns()},
        {"id": "s1", "image": "a.png", "conversations": _turns(answer="  ")},
    ]
    json_path = _dataset(tmp_path, records)
    nothing_written["tree"] = _tree(tmp_path)
    # The template still supervises the end of turn, so without the check this would train silence.
    with pytest.raises(ValueError, match=r"1 of 2 samples.*only empty answers.*ids: 's1'"):
        _open(json_path, tokenizer, max_unsupervised_fraction=0.0)
    with pytest.raises(ValueError, match=r"sample 's1'.*every answer \('gpt' turn\) is empty"):
        _open(json_path, tokenizer)[1]
    assert _open(json_path, tokenizer, max_unsupervised_fraction=0.5).unsupervised_ids == ["s1"]


# ---------------------------------------------------------------- label stores


def _store(path: Path, ids: list[str], grid: tuple[int, int] = (8, 8), top_n: int = 2) -> Path:
    meta = make_meta(
        encoder="tiny-clip",
        words=WORDS,
        dataset={"name": "bad-inputs"},
        top_n=top_n,
        sign="negated",
        grid=grid,
        num_images=len(ids),
        score_dtype="float32",
    )
    writer = StoreWriter.create_or_resume(path, meta, WORDS, ids, ["a.png"] * len(ids))
    m = grid[0] * grid[1]
    writer.write(0, np.zeros((len(ids), m, top_n), np.int32), np.ones((len(ids), m, top_n), np.float32))
    writer.commit(len(ids))
    writer.finish()
    return path


def test_label_store_of_another_dataset_is_refused(tmp_path: Path, tokenizer, nothing_written) -> None:
    store = LabelStore.open(_store(tmp_path / "labels", ["s0", "s1"]))
    records = [{"id": f"s{k}", "image": "a.png", "conversations": _turns()} for k in range(3)]
    dataset = _open(_dataset(tmp_path / "d", records), tokenizer)
    nothing_written["tree"] = _tree(tmp_path)
    with pytest.raises(
        ValueError, match=r"no label row for dataset item 2 \(id 's2'.*rebuild them for this JSON"
    ):
        WithLabels(dataset, store)
    with pytest.raises(ValueError, match=r"labels: num_images mismatch: expected 3, found 2"):
        LabelStore.open(tmp_path / "labels", {"num_images": 3})


def test_label_store_on_another_grid_is_refused(tmp_path: Path, nothing_written) -> None:
    path = _store(tmp_path / "labels", ["s0"], grid=(8, 8))
    nothing_written["tree"] = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"labels: grid mismatch: expected \[4, 4\], found \[8, 8\]"):
        LabelStore.open(path, {"grid": (4, 4)})


def test_truncated_label_array_is_refused(tmp_path: Path, nothing_written) -> None:
    path = _store(tmp_path / "labels", ["s0", "s1"])
    data = (path / INDEX_FILE).read_bytes()
    (path / INDEX_FILE).write_bytes(data[: len(data) // 2])
    nothing_written["tree"] = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"label store .*labels: corrupt, cannot read index\.npy"):
        LabelStore.open(path)


def test_unfinished_label_store_says_to_resume(tmp_path: Path, nothing_written) -> None:
    path = _store(tmp_path / "labels", ["s0"])
    (path / ".done").unlink()
    nothing_written["tree"] = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"unfinished extraction .*run extraction again to resume"):
        LabelStore.open(path)


# ---------------------------------------------------------------- adapter checkpoints


class _Vlm:
    def __init__(self, name: str, d_vision: int, d_llm: int) -> None:
        self.adapter_name, self.adapter = name, build_adapter(name, d_vision, d_llm)


def _state(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().clone().numpy() for k, v in module.state_dict().items()}


def test_truncated_adapter_checkpoint_is_refused(tmp_path: Path, nothing_written) -> None:
    save_adapter(_Vlm("mlp2x_gelu", 8, 16), tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100])
    nothing_written["tree"] = _tree(tmp_path)
    target = _Vlm("mlp2x_gelu", 8, 16)
    before = _state(target.adapter)
    with pytest.raises(
        ValueError, match=r"adapter\.safetensors: unreadable, probably truncated.*re-run the stage"
    ):
        load_adapter(target, tmp_path / "ckpt")
    assert all(np.array_equal(before[k], v) for k, v in _state(target.adapter).items())  # untouched


def test_adapter_of_another_model_is_refused(tmp_path: Path, nothing_written) -> None:
    save_adapter(_Vlm("mlp2x_gelu", 8, 16), tmp_path / "ckpt")
    nothing_written["tree"] = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"does not fit .*expected shapes .*another LLM or vision encoder"):
        load_adapter(_Vlm("mlp2x_gelu", 8, 32), tmp_path / "ckpt")
    with pytest.raises(
        ValueError, match=r"is 'mlp2x_gelu', the model's adapter is 'linear'; load a checkpoint"
    ):
        load_adapter(_Vlm("linear", 8, 16), tmp_path / "ckpt")


def test_corrupt_adapter_meta_is_refused(tmp_path: Path, nothing_written) -> None:
    save_adapter(_Vlm("linear", 8, 16), tmp_path / "ckpt")
    (tmp_path / "ckpt" / "adapter.json").write_text('{"adapter": "lin')
    nothing_written["tree"] = _tree(tmp_path)
    with pytest.raises(ValueError, match=r"adapter\.json: unreadable .*re-run the stage"):
        load_adapter(_Vlm("linear", 8, 16), tmp_path / "ckpt")

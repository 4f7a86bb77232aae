"""`seagrid data`, the loaders and the pre-flight of a run agree on a user's files; tracking stores and
output folders fail in seconds with one sentence; nothing is written, run or lost."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from core.data.llava import LlavaDataset
from core.data.text_files import TextFileError
from core.evaluation.benchmarks import read_jsonl, read_mc
from core.labels.extract import image_records
from core.labels.store import LabelStore
from core.labels.store_format import META_FILE, make_meta
from core.labels.store_writer import StoreWriter
from core.labels.words import read_word_list
from core.models.tiny_tokenizer import train_tiny_tokenizer
from grid.cli import main
from grid.data_check import spec_needs

TURNS = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "a red cat."}]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _dataset(root: Path, records: list | None = None, name: str = "data.json") -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for k in range(3):
        Image.new("RGB", (8, 8), (k * 60, 0, 0)).save(images / f"{k}.png")
    records = (
        records
        if records is not None
        else [{"id": f"s{k}", "image": f"{k}.png", "conversations": TURNS} for k in range(3)]
    )
    path = root / name
    path.write_text(json.dumps(records) if name.endswith(".json") else "\n".join(map(json.dumps, records)))
    return path, images


def _spec(tmp_path: Path, base: dict, output: dict | None = None, name: str = "spec.yaml") -> Path:
    spec = {"name": "m", "base": {"model": {"llm": "tiny-llama", "encoder": "tiny-clip"}, **base}}
    spec["output"] = output or {
        "root": str(tmp_path / "results"),
        "tracking_uri": f"sqlite:///{tmp_path}/m.db",
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _llava(json_path: Path, images: Path) -> dict:
    return {
        "data": {
            "stage1": {
                "source": "llava",
                "name": "mine",
                "json_path": str(json_path),
                "image_root": str(images),
            }
        }
    }


def _data(spec: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["data", str(spec)])
    return code, " ".join(capsys.readouterr().out.split())


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(512, 256)


def _loader_error(json_path: Path, images: Path, tokenizer) -> str:
    with pytest.raises((ValueError, OSError)) as err:
        LlavaDataset(json_path, images, tokenizer, "plain", image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    return str(err.value)


# ---------------------------------------------------------------- one reader, one verdict


BAD_DATASETS = {
    "json lines": (None, "data.jsonl", "JSON Lines (one object per line)"),
    "no conversations": (
        [{"id": "s0", "image": "0.png"}],
        "data.json",
        "'conversations' must be a non-empty list",
    ),
    "image is a list": (
        [{"id": "s0", "image": ["0.png", "1.png"], "conversations": TURNS}],
        "data.json",
        "'image' is a list (2 entries)",
    ),
    "image outside image_root": (
        [{"id": "s0", "image": "../secret.png", "conversations": TURNS}],
        "data.json",
        "image '../secret.png' is not inside image_root",
    ),
    "absolute image path": (
        [{"id": "s0", "image": "/etc/hostname", "conversations": TURNS}],
        "data.json",
        "image '/etc/hostname' is not inside image_root",
    ),
}


@pytest.mark.parametrize("case", BAD_DATASETS, ids=list(BAD_DATASETS))
def test_data_refuses_what_the_loaders_refuse_with_their_words(
    case: str, tmp_path: Path, tokenizer, capsys: pytest.CaptureFixture[str]
) -> None:
    records, name, fragment = BAD_DATASETS[case]
    json_path, images = _dataset(tmp_path / "d", records, name)
    spec = _spec(tmp_path, _llava(json_path, images))
    before = _tree(tmp_path)
    code, out = _data(spec, capsys)
    assert code == 1 and fragment in out, out
    assert fragment in _loader_error(json_path, images, tokenizer)
    with pytest.raises(ValueError) as err:  # the label builder reads the same way
        image_records(json_path)
    assert fragment in str(err.value)
    if "record" in fragment or "image" in fragment:
        assert "(id 's0')" in out  # the sample is named
    assert _tree(tmp_path) == before


def test_home_paths_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    home = tmp_path / "home"
    _dataset(home / "llava")
    monkeypatch.setenv("HOME", str(home))
    spec = _spec(tmp_path, _llava(Path("~/llava/data.json"), Path("~/llava/images")))
    code, out = _data(spec, capsys)
    assert code == 0 and "3 records" in out and "3 of a sample of 3 image references resolve, 3 decode" in out


def test_word_lists_bad_byte_and_byte_order_mark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    json_path, images = _dataset(tmp_path / "d")
    words = tmp_path / "words.txt"
    words.write_bytes("\ufeffcat\ndog\n".encode())
    assert read_word_list(words) == ["cat", "dog"]  # the mark would glue itself to 'cat'
    base = {
        **_llava(json_path, images),
        "method": {"name": "sea", "sea": {"words": {"source": "file", "path": str(words)}}},
    }
    spec = _spec(tmp_path, base)
    code, out = _data(spec, capsys)
    assert code == 0 and "2 words" in out
    words.write_bytes(b"cat\nd\xf6g\n")
    code, out = _data(spec, capsys)
    assert code == 1 and f"{words}:2: the word list is not UTF-8 text (byte 0xf6" in out
    with pytest.raises(ValueError, match="not UTF-8 text"):
        read_word_list(words)


def _pope_tree(root: Path) -> Path:
    coco = root / "pope" / "coco"
    coco.mkdir(parents=True)
    for split in ("adversarial", "popular", "random"):
        line = {"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "label": "yes"}
        (coco / f"coco_pope_{split}.json").write_text(json.dumps(line) + "\n")
    (root / "pope" / "val2014").mkdir()
    Image.new("RGB", (8, 8)).save(root / "pope" / "val2014" / "a.jpg")
    return root / "pope"


def test_pope_annotation_dir_one_level_off_and_diagnostics_files(tmp_path: Path, capsys) -> None:
    pope = _pope_tree(tmp_path / "eval")
    json_path, images = _dataset(tmp_path / "held")
    bench = {
        "name": "pope",
        "kind": "pope",
        "source": "files",
        "annotation_dir": str(pope),
        "image_root": str(pope / "val2014"),
    }
    diag = {
        "source": "files",
        "json_path": str(json_path),
        "image_root": str(images),
        "words_file": str(tmp_path / "nowords.txt"),
    }
    spec = _spec(tmp_path, {"eval": {"enabled": True, "benchmarks": [bench], "diagnostics": diag}})
    labels = [n.label for n in spec_needs(str(spec))]
    assert "diagnostics held-out set" in labels and "diagnostics word list (one word per line)" in labels
    code, out = _data(spec, capsys)
    assert code == 1
    assert f"the coco_pope_*.json files are in {pope / 'coco'}: set annotation_dir to it" in out
    assert f"missing file {tmp_path / 'nowords.txt'}" in out
    bench["annotation_dir"] = str(pope / "coco")
    (tmp_path / "nowords.txt").write_text("cat\n")
    spec = _spec(tmp_path, {"eval": {"enabled": True, "benchmarks": [bench], "diagnostics": diag}})
    code, out = _data(spec, capsys)
    assert code == 0 and "3 questions in 3 splits, as evaluation reads them" in out


def test_benchmark_files_that_are_directories_or_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / "questions.jsonl"
    folder.mkdir()
    with pytest.raises(TextFileError, match="is a directory, but the jsonl file is a file"):
        read_jsonl(folder)
    latin = tmp_path / "mmlu.csv"
    latin.write_bytes(b"caf\xe9?,a,b,c,d,A\n")
    with pytest.raises(TextFileError, match=r"mmlu.csv:1: the MMLU csv file is not UTF-8 text"):
        read_mc(latin)


def test_data_sample_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as err:
        main(["data", "--sample", "-1", "experiments/smoke.yaml"])
    assert err.value.code == 2 and "--sample: -1 is below 1" in capsys.readouterr().err


# ---------------------------------------------------------------- pre-flight of a run


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_preflight_reports_every_problem_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Missing dataset, missing benchmark file, missing word list, a closed tracking server and an
    output.root that is a file: one refusal in seconds naming all five; no trial, no store, no folder."""
    port = _closed_port()
    (tmp_path / "results").write_text("not a folder")
    base = {
        **_llava(tmp_path / "nodata.json", tmp_path / "noimages"),
        "method": {"name": "sea", "sea": {"words": {"source": "file", "path": str(tmp_path / "words.txt")}}},
        "eval": {
            "enabled": True,
            "benchmarks": [
                {
                    "name": "mmlu",
                    "kind": "text_mc",
                    "source": "files",
                    "question_file": str(tmp_path / "mmlu.csv"),
                }
            ],
        },
    }
    spec = _spec(
        tmp_path, base, {"root": str(tmp_path / "results"), "tracking_uri": f"http://127.0.0.1:{port}"}
    )
    before = _tree(tmp_path)
    t0 = time.perf_counter()
    assert main(["grid", str(spec)]) == 2
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert "5 problem(s) found before any trial started" in err, err
    for fragment in (
        f"output.tracking_uri=http://127.0.0.1:{port}: no MLflow server answers",
        f"output.root={tmp_path / 'results'}: is a file",
        f"stage1 dataset mine: missing JSON {tmp_path / 'nodata.json'}",
        f"missing file {tmp_path / 'words.txt'}",
        f"benchmark mmlu question_file: missing file {tmp_path / 'mmlu.csv'}",
    ):
        assert fragment in err, f"{fragment!r} not in {err}"
    assert "Traceback" not in err and seconds < 60  # Ray imports included; MLflow alone retried 4 minutes
    assert _tree(tmp_path) == before


def test_plan_against_a_closed_server_fails_in_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    spec = _spec(tmp_path, {}, {"tracking_uri": f"http://127.0.0.1:{port}"})
    t0 = time.perf_counter()
    assert main(["plan", str(spec)]) == 2
    assert time.perf_counter() - t0 < 15
    err = capsys.readouterr().err
    assert (
        f"output.tracking_uri=http://127.0.0.1:{port}: no MLflow server answers" in err
        and "just mlflow" in err
    )


def test_a_plain_path_tracking_uri_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, {}, {"tracking_uri": str(tmp_path / "store")})
    before = _tree(tmp_path)
    assert main(["plan", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "a plain path is MLflow's file store" in err and f"sqlite:///{tmp_path / 'store'}/mlflow.db" in err
    assert _tree(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, {}, {"tracking_uri": str(tmp_path / "store")})
    with pytest.raises(ValueError, match="file store"):
        main(["plan", "--debug", str(spec)])


def test_plan_in_another_directory_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: g\ngrid: {axes: {seed: [1, 2]}}\n")
    monkeypatch.chdir(elsewhere)
    assert main(["plan", str(spec)]) == 0
    assert "2 trials (2 new)" in capsys.readouterr().out
    assert _tree(tmp_path) == {"spec.yaml", "elsewhere"}  # no empty ./mlflow/


# ---------------------------------------------------------------- label-store metadata


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda m: m.pop("num_images"), "meta.json has no 'num_images'"),
        (lambda m: m.update(grid="4x4"), "meta.json grid='4x4' is not a [height, width] of ints"),
        (lambda m: m.update(top_n="2"), "meta.json top_n='2' is not a int"),
    ],
)
def test_label_store_metadata_with_a_missing_key_or_wrong_type(tmp_path: Path, change, fragment: str) -> None:
    import numpy as np

    meta = make_meta(encoder="tiny-clip", words=["cat", "dog"], dataset={"x": 1}, top_n=2, sign="negated",
                     grid=(2, 2), num_images=1, score_dtype="float32")  # fmt: skip
    store = tmp_path / "store"
    writer = StoreWriter.create_or_resume(store, meta, ["cat", "dog"], ["s0"], ["0.png"])
    writer.write(0, np.zeros((1, 4, 2), np.int32), np.ones((1, 4, 2), np.float32))
    writer.commit(1)
    writer.finish()
    data = json.loads((store / META_FILE).read_text())
    change(data)
    (store / META_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        LabelStore.open(store)
    assert f"label store {store}: corrupt, {fragment}" in str(err.value) and "delete the directory" in str(
        err.value
    )


def test_report_into_an_output_root_that_is_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "results").write_text("not a folder")
    spec = _spec(
        tmp_path, {}, {"root": str(tmp_path / "results"), "tracking_uri": f"sqlite:///{tmp_path}/m.db"}
    )
    before = _tree(tmp_path)
    assert main(["report", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'results'}/reports/m: not a directory; check the spec's paths (output.root" in err
    assert "Traceback" not in err and _tree(tmp_path) == before
    assert "(seagrid report --debug ... shows where it happened)" in err


def test_a_search_has_the_same_preflight(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`seagrid tune` refuses a search whose dataset is missing and whose output.root is a file, both at
    once, before Ray or Tune start; nothing is written."""
    (tmp_path / "results").write_text("not a folder")
    output = {"root": str(tmp_path / "results"), "tracking_uri": f"sqlite:///{tmp_path}/m.db"}
    spec = _spec(tmp_path, _llava(tmp_path / "nodata.json", tmp_path / "noimages"), output)
    data = yaml.safe_load(spec.read_text())
    data["search"] = {"metric": "stage1/loss/lm", "mode": "min", "num_samples": 2,
                      "space": {"stage1.lr": {"loguniform": [1e-4, 1e-2]}}}  # fmt: skip
    spec.write_text(yaml.safe_dump(data))
    before = _tree(tmp_path)
    assert main(["tune", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s) found before any trial started" in err, err
    assert f"output.root={tmp_path / 'results'}: is a file" in err
    assert f"stage1 dataset mine: missing JSON {tmp_path / 'nodata.json'}" in err
    assert "Traceback" not in err and _tree(tmp_path) == before


def test_the_preflight_reports_an_unfit_gpu_trial_with_the_missing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 13B trial on 24 GB GPUs and a missing dataset: both in one refusal, before Ray starts."""
    base = {
        **_llava(tmp_path / "nodata.json", tmp_path / "noimages"),
        "model": {"llm": "vicuna-13b", "encoder": "clip-l-336"},
        "resources": {"num_workers": 1, "gpus_per_worker": 1, "gpu_memory_gb": 24},
    }
    spec = _spec(tmp_path, base)
    before = _tree(tmp_path)
    assert main(["grid", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s) found before any trial started" in err, err
    assert f"stage1 dataset mine: missing JSON {tmp_path / 'nodata.json'}" in err
    assert "GiB per GPU" in err and "would fit with" in err
    assert "Traceback" not in err and _tree(tmp_path) == before

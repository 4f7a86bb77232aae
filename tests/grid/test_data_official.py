"""`seagrid data` for the official benchmark kinds: family files, where to get them, the family's reader, Java."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from grid.cli import main


def _spec(tmp_path: Path, benchmarks: list[dict]) -> Path:
    spec = {
        "name": "data-official",
        "base": {
            "model": {"llm": "tiny-llama", "encoder": "tiny-clip", "adapter": "mlp2x_gelu"},
            "eval": {"enabled": True, "diagnostics": {"pictures": False}, "benchmarks": benchmarks},
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _vqav2(root: Path, questions: int) -> dict[str, str]:
    (root / "val2014").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(root / "val2014" / "COCO_val2014_000000000007.jpg")
    qs = [{"question_id": k, "image_id": 7, "question": "What?"} for k in range(questions)]
    (root / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": qs}))
    return {"question_file": str(root / "q.json"), "image_root": str(root / "val2014")}


def test_official_files_read_by_the_family_reader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = {"name": "vqav2", "kind": "vqav2", "source": "files", **_vqav2(tmp_path / "vqav2", 3)}
    code = main(["data", str(_spec(tmp_path, [bench]))])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "benchmark vqav2 question_file (questions: v2_OpenEnded_mscoco" in out
    assert "3 samples, as evaluation reads them (vqav2 reader)" in out


def test_a_file_the_family_refuses_names_it_and_where_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _vqav2(tmp_path / "vqav2", 2)
    Path(files["question_file"]).write_text(json.dumps({"no_questions": []}))
    bench = {"name": "vqav2", "kind": "vqav2", "source": "files", **files}
    code = main(["data", str(_spec(tmp_path, [bench]))])
    out = capsys.readouterr().out
    assert code == 1
    assert "missing field 'questions'" in out and "https://visualqa.org/download.html" in out


def test_coco_captions_need_java(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    (tmp_path / "val2014").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "val2014" / "a.jpg")
    ann = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": "a cat"}]}
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    bench = {"name": "coco", "kind": "coco_caption", "source": "files",
             "annotation_file": str(tmp_path / "captions.json"), "image_root": str(tmp_path / "val2014")}  # fmt: skip
    spec = _spec(tmp_path, [bench])
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no java on PATH
    code = main(["data", str(spec)])
    out = capsys.readouterr().out
    assert code == 1 and "needs a Java runtime" in out and "default-jre-headless" in out
    if shutil.which("java", path="/usr/bin:/usr/local/bin") is not None:
        monkeypatch.setenv("PATH", "/usr/bin:/usr/local/bin")
        assert main(["data", str(spec)]) == 0, capsys.readouterr().out

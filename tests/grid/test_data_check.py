"""`seagrid data SPEC` offline: the listing and checking of a spec's data on a generated LLaVA-layout tree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from grid.cli import main
from grid.data_check import check, spec_needs


def _tree(root: Path, images: int = 4) -> None:
    """LLaVA-Pretrain's layout: a JSON list naming images under images/."""
    pretrain = root / "LLaVA-Pretrain"
    (pretrain / "images" / "00000").mkdir(parents=True)
    records = []
    for k in range(images):
        name = f"00000/{k:09d}.jpg"
        Image.new("RGB", (16, 16), (k * 40, 0, 0)).save(pretrain / "images" / name)
        records.append({
            "id": f"{k:09d}", "image": name,
            "conversations": [{"from": "human", "value": "<image>\nRender a caption."}, {"from": "gpt", "value": "red"}],
        })  # fmt: skip
    (pretrain / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(records))
    (root / "eval" / "mmlu" / "test").mkdir(parents=True)
    (root / "eval" / "mmlu" / "test" / "abstract_algebra_test.csv").write_text("1+1?,1,2,3,4,B\n")


def _spec(tmp_path: Path, root: Path) -> Path:
    pretrain = root / "LLaVA-Pretrain"
    spec = {
        "name": "data-check",
        "base": {
            "model": {"llm": "tiny-llama", "encoder": "tiny-clip", "adapter": "mlp2x_gelu"},
            "data": {
                "stage1": {
                    "source": "llava",
                    "name": "llava-pretrain-558k",
                    "json_path": str(pretrain / "blip_laion_cc_sbu_558k.json"),
                    "image_root": str(pretrain / "images"),
                }
            },  # fmt: skip
            "eval": {
                "enabled": True,
                "benchmarks": [
                    {
                        "name": "mmlu",
                        "kind": "text_mc",
                        "source": "files",
                        "question_file": str(root / "eval/mmlu/test"),
                    }
                ],
            },
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(spec: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["data", str(spec)])
    return code, capsys.readouterr().out


def test_lists_the_specs_inputs(tmp_path: Path) -> None:
    _tree(tmp_path / "data")
    needs = spec_needs(str(_spec(tmp_path, tmp_path / "data")))
    assert [(n.kind, n.label) for n in needs] == [
        ("llava", "stage1 dataset llava-pretrain-558k"),
        ("dir", "benchmark mmlu question_file"),
    ]


def test_present_tree_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path / "data")
    code, out = _run(_spec(tmp_path, tmp_path / "data"), capsys)
    assert code == 0, out
    assert "4 records" in out and "4 of a sample of 4 image references resolve, 4 decode" in out
    assert "2 of 2 inputs present and readable" in out


def test_missing_json_names_path_and_hub_repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path / "data")
    json_path = tmp_path / "data" / "LLaVA-Pretrain" / "blip_laion_cc_sbu_558k.json"
    json_path.unlink()
    code, out = _run(_spec(tmp_path, tmp_path / "data"), capsys)
    assert code == 1
    assert f"missing JSON {json_path}" in out and "liuhaotian/LLaVA-Pretrain" in out
    assert "1 of 2 inputs present" in out


def test_missing_and_corrupt_images_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path / "data")
    images = tmp_path / "data" / "LLaVA-Pretrain" / "images" / "00000"
    (images / "000000001.jpg").unlink()
    (images / "000000002.jpg").write_bytes(b"not a jpeg")
    code, out = _run(_spec(tmp_path, tmp_path / "data"), capsys)
    assert code == 1
    assert f"missing image {images / '000000001.jpg'}" in out
    assert f"cannot decode {images / '000000002.jpg'}" in out
    assert "3 of a sample of 4 image references resolve, 2 decode" in out


def test_a_bad_json_and_a_missing_directory(tmp_path: Path) -> None:
    _tree(tmp_path / "data")
    needs = {n.kind: n for n in spec_needs(str(_spec(tmp_path, tmp_path / "data")))}
    needs["llava"].path.write_text("[{")
    found = check(needs["llava"], sample=4)
    assert not found.ok and "not valid JSON at line 1" in found.lines[0]
    for csv in needs["dir"].path.iterdir():
        csv.unlink()
    needs["dir"].path.rmdir()
    assert check(needs["dir"], sample=4).lines == [f"missing directory {needs['dir'].path}"]


def test_synthetic_spec_needs_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "experiments/smoke.yaml"]) == 0
    assert "nothing to fetch" in capsys.readouterr().out

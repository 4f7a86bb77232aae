"""TACS on a captioned image set from a file: LLaVA JSON, image/caption objects, JSON Lines, COCO captions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.config import EvalConfig
from core.evaluation.caption_sets import read_caption_set
from core.evaluation.diagnostics import alignment_diagnostics, load_heldout

CAPTIONS = ["a red square", "a blue circle on green", "two yellow stars"]


def _images(root: Path) -> list[str]:
    names = []
    for k, colour in enumerate([(200, 0, 0), (0, 0, 200), (200, 200, 0)]):
        name = f"COCO_val2014_{k:012d}.jpg"
        Image.new("RGB", (80 + 10 * k, 60), colour).save(root / name)
        names.append(name)
    return names


def _coco(root: Path) -> Path:
    names = _images(root)
    data = {
        "images": [{"id": 100 + k, "file_name": n} for k, n in enumerate(names)],
        # Image 101 has two captions: its first in the file's order is used.
        "annotations": [
            {"image_id": 100, "id": 1, "caption": CAPTIONS[0]},
            {"image_id": 101, "id": 2, "caption": CAPTIONS[1] + " "},
            {"image_id": 101, "id": 3, "caption": "another caption"},
            {"image_id": 102, "id": 4, "caption": CAPTIONS[2]},
        ],
    }
    path = root / "captions_val2014.json"
    path.write_text(json.dumps(data))
    return path


def test_every_layout_gives_the_same_records(tmp_path: Path) -> None:
    coco = read_caption_set(_coco(tmp_path), 10)
    names = [image for _, image, _ in coco]
    assert coco == [(str(100 + k), names[k], CAPTIONS[k]) for k in range(3)]
    plain = [
        {"id": str(100 + k), "image": n, "caption": c}
        for k, (n, c) in enumerate(zip(names, CAPTIONS, strict=True))
    ]
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in plain))
    (tmp_path / "set.json").write_text(json.dumps(plain))
    llava = [{"id": r["id"], "image": r["image"], "conversations": [
        {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": r["caption"]}]} for r in plain]  # fmt: skip
    (tmp_path / "llava.json").write_text(json.dumps(llava))
    for name in ("set.jsonl", "set.json", "llava.json"):
        assert read_caption_set(tmp_path / name, 10) == coco, name
    assert read_caption_set(tmp_path / "set.json", 2) == coco[:2]


def test_bad_caption_sets_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"id": "x", "image": "a.jpg"}]))
    with pytest.raises(ValueError, match="record #0 .*no caption"):
        read_caption_set(tmp_path / "a.json", 5)
    (tmp_path / "b.json").write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(ValueError, match="COCO captions file needs"):
        read_caption_set(tmp_path / "b.json", 5)
    (tmp_path / "c.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read it"):
        read_caption_set(tmp_path / "c.json", 5)


def test_tacs_on_a_coco_captions_file(tmp_path: Path) -> None:
    from core.models import build_vlm

    torch.manual_seed(0)
    vlm, tokenizer = build_vlm("tiny-llama", "tiny-clip")
    vlm.eval()
    cfg = EvalConfig.model_validate({"enabled": True, "diagnostics": {
        "source": "files", "json_path": str(_coco(tmp_path)), "image_root": str(tmp_path), "heldout_samples": 2}})  # fmt: skip
    heldout = load_heldout(cfg, vlm, tokenizer)
    assert heldout.captions == CAPTIONS[:2] and heldout.ids == ["100", "101"]
    found = alignment_diagnostics(vlm, tokenizer, heldout, k=3)
    assert set(found) >= {"tacs"} and -1 <= found["tacs"] <= 1


def test_just_data_lists_the_caption_set(tmp_path: Path) -> None:
    import yaml

    from grid.data_check import check, spec_needs

    spec = {"name": "d", "base": {"eval": {"enabled": True, "diagnostics": {
        "source": "files", "json_path": str(_coco(tmp_path)), "image_root": str(tmp_path)}}}}  # fmt: skip
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    needs = {n.label: n for n in spec_needs(str(path))}
    assert set(needs) == {"diagnostics held-out set", "diagnostics held-out set image_root"}
    assert all(check(n, sample=3).ok for n in needs.values())
    (tmp_path / "captions_val2014.json").unlink()
    assert not check(needs["diagnostics held-out set"], sample=3).ok

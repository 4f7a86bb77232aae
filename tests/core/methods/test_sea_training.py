"""SEA in stage 1 on tiny models: the alignment loss trains, and label recall@1 rises well above the baseline's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.data import LlavaDataset
from core.data.resolve import resolve_dataset
from core.evaluation.diagnostics import label_recall
from core.labels import LabelStore, WithLabels
from core.models import build_vlm, load_adapter
from core.pipeline import prepare_labels
from core.sea import label_embeddings
from core.train.checkpoint import LocalCheckpoints
from core.train.job import make_stage_job
from core.train.stage import run_stage
from grid.spec import TrialConfig


def trial(method: dict, encoder: str = "tiny-clip") -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "model": {"llm": "tiny-llama", "encoder": encoder},
            "method": method,
            "data": {"stage1": {"source": "synthetic", "synthetic": {"num_samples": 128, "seed": 5}}},
            "stage1": {
                "lr": 0.01,
                "global_batch_size": 16,
                "micro_batch_size": 16,
                "epochs": 3,
                "warmup_ratio": 0.0,
            },
            "seed": 0,
        }
    )


def train(cfg: TrialConfig, step_dir: Path, labels: Path | None) -> tuple[dict, list[dict]]:
    step_dir.mkdir(parents=True)
    checkpoints = LocalCheckpoints()
    job = make_stage_job(cfg, "stage1", step_dir, labels_dir=labels)
    return run_stage(job, checkpoints=checkpoints), checkpoints.messages


def recall_of(cfg: TrialConfig, step_dir: Path, store_path: Path) -> float:
    json_path, image_root = resolve_dataset(cfg.data.stage1)
    vlm, tok = build_vlm(cfg.model.llm, cfg.model.encoder)
    load_adapter(vlm, step_dir / "adapter")
    store = LabelStore.open(store_path)
    enc = vlm.vision.spec
    ds = LlavaDataset(
        json_path, image_root, tok, "plain", image_size=enc.image_size, mean=enc.mean, std=enc.std
    )
    with torch.no_grad():
        words = label_embeddings(store.words, tok, vlm.llm.get_input_embeddings())
    return label_recall(vlm, WithLabels(ds, store), words)


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_sea_raises_label_recall_over_baseline(tmp_path: Path) -> None:
    sea_cfg = trial({"name": "sea", "sea": {"top_n": 5, "words": {"min_count": 1}}})
    base_cfg = trial({"name": "llava"})
    store_path = prepare_labels(sea_cfg, tmp_path / "steps")

    sea_result, sea_reports = train(sea_cfg, tmp_path / "sea", store_path)
    base_result, _ = train(base_cfg, tmp_path / "base", None)
    assert sea_result["steps"] == base_result["steps"] == 24

    metrics = [r["metrics"] for r in sea_reports]
    assert {"stage1/loss/lm", "stage1/loss/align", "stage1/tau", "stage1/pairs"} <= set(metrics[-1])
    assert all(m["stage1/pairs"] > 0 for m in metrics)
    assert metrics[-1]["stage1/loss/align"] < metrics[0]["stage1/loss/align"]
    assert metrics[-1]["stage1/tau"] != pytest.approx(1.0)  # tau is learnt
    # L = L_lm + lambda * L_a, with lambda = 1 by default.
    assert metrics[-1]["stage1/loss"] == pytest.approx(
        metrics[-1]["stage1/loss/lm"] + metrics[-1]["stage1/loss/align"], rel=1e-5
    )

    sea_recall = recall_of(sea_cfg, tmp_path / "sea", store_path)
    base_recall = recall_of(base_cfg, tmp_path / "base", store_path)
    print(f"label recall@1 after 24 steps: sea {sea_recall:.3f}, llava {base_recall:.3f}")
    assert sea_recall > base_recall + 0.2


def test_sea_with_labels_transferred_to_dinov2(tmp_path: Path) -> None:
    cfg = trial({"name": "sea", "sea": {"labels_from": "tiny-clip", "top_n": 5}}, encoder="tiny-dinov2")
    store_path = prepare_labels(cfg, tmp_path / "steps")
    store = LabelStore.open(store_path)
    assert tuple(store.grid) == (4, 4)  # moved from tiny-clip's 8x8 grid
    cfg = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"max_steps": 3})})
    result, reports = train(cfg, tmp_path / "dino", store_path)
    assert result["steps"] == 3
    assert all(r["metrics"]["stage1/pairs"] > 0 for r in reports)


def test_labels_command_builds_each_store_once(tmp_path: Path, capsys) -> None:
    from grid.cli import main

    spec = tmp_path / "labels.yaml"
    spec.write_text(
        "name: lab\n"
        "base:\n"
        "  method: {name: sea, sea: {labels_from: tiny-clip, top_n: 3}}\n"
        "  data: {stage1: {source: synthetic, synthetic: {num_samples: 16, seed: 9}}}\n"
        "grid: {axes: {model.encoder: [tiny-clip, tiny-dinov2], seed: [0, 1]}}\n"
    )
    assert main(["labels", str(spec)]) == 0
    out = capsys.readouterr().out
    paths = [line.rsplit(": ", 1)[-1] for line in out.splitlines() if line.startswith("labels for")]
    assert len(paths) == 2  # one store per target grid (8x8 for tiny-clip, 4x4 moved for tiny-dinov2)
    grids = sorted(tuple(LabelStore.open(p).grid) for p in paths)
    assert grids == [(4, 4), (8, 8)]
    plain = tmp_path / "plain.yaml"
    plain.write_text("name: plain\n")
    assert main(["labels", str(plain)]) == 0
    assert "no trial uses SEA" in capsys.readouterr().out

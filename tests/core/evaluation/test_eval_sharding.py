"""Sharded evaluation: shards' outputs gathered and scored once equal the unsharded run exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.evaluation.config import EvalConfig
from core.evaluation.load import frozen_for_eval
from core.evaluation.run import PREDICTIONS_DIR, evaluate, evaluate_shard, gather_shards
from core.evaluation.shard import Shard, gather_outputs, write_outputs


@pytest.fixture(scope="module")
def wild():
    """A tiny VLM with large random LLM weights (float64), so its answers and option scores vary."""
    from core.models import build_vlm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vlm, tokenizer = build_vlm("tiny-llama", "tiny-clip", dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in vlm.llm.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
    vlm.eval()
    yield vlm, tokenizer
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eval_cfg() -> EvalConfig:
    # batch_size 2 over 5 items: three batches per model call, the last one short, split unevenly.
    return EvalConfig.model_validate(
        {
            "enabled": True,
            "batch_size": 2,
            "synthetic": {"num_images": 6, "num_text_questions": 8},
            "diagnostics": {"heldout_samples": 4},
            "max_new_tokens": 3,
            "benchmarks": [
                {"name": "pope", "kind": "pope", "max_samples": 5},
                {"name": "vqa", "kind": "vqa", "max_samples": 5},
                {"name": "mmbench", "kind": "mc", "max_samples": 5, "mc_mode": "generate"},
                {"name": "sqa", "kind": "mc", "max_samples": 5},
                {"name": "mmlu", "kind": "text_mc", "max_samples": 5},
            ],
        }
    )


def _files(out: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((out / PREDICTIONS_DIR).iterdir())}


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_two_shards_give_exactly_the_unsharded_metrics_and_predictions(
    wild, eval_cfg, tmp_path: Path
) -> None:
    vlm, tok = wild
    common = {"llm_id": "tiny-llama", "stage": "stage2", "log": None}
    with frozen_for_eval(vlm, inference=True):
        whole = evaluate(vlm, tok, eval_cfg, out_dir=tmp_path / "whole", **common)
        results = {}
        for count in (1, 2):
            dirs = [tmp_path / f"of{count}" / f"shard{k}" for k in range(count)]
            for k, d in enumerate(dirs):
                evaluate_shard(vlm, tok, eval_cfg, Shard(k, count), out_dir=d, **common)
            results[count] = gather_shards(eval_cfg, dirs, out_dir=tmp_path / f"out{count}", **common)
    for count in (1, 2):
        assert results[count] == whole  # exact: the same batches ran, floats round-trip through JSON
        assert _files(tmp_path / f"out{count}") == _files(tmp_path / "whole")
        summary = json.loads((tmp_path / f"out{count}" / "metrics.json").read_text())
        assert summary["metrics"] == whole and summary["counts"]["pope"] == 15
        assert (tmp_path / f"out{count}" / "pca.png").is_file()
    # The answers vary (the comparison is not between constant outputs), and each shard ran its batches only.
    answers = [json.loads(line)["answer"] for line in _files(tmp_path / "whole")["vqa.jsonl"].splitlines()]
    assert len(set(answers)) > 1
    rows = [
        json.loads((tmp_path / "of2" / f"shard{k}" / "outputs" / "vqa.json").read_text())["0"] for k in (0, 1)
    ]
    assert [r is not None for r in rows[0]] == [True, True, False, False, True]
    assert [r is not None for r in rows[1]] == [False, False, True, True, False]


def test_gather_refuses_rows_computed_twice_or_never(tmp_path: Path) -> None:
    write_outputs(tmp_path / "a.json", {"0": ["x", None, None]})
    write_outputs(tmp_path / "b.json", {"0": ["y", "z", None]})
    with pytest.raises(ValueError, match="row 0 of model call 0 computed by two shards"):
        gather_outputs([tmp_path / "a.json", tmp_path / "b.json"])
    write_outputs(tmp_path / "b.json", {"0": [None, "z", None]})
    merged = gather_outputs([tmp_path / "a.json", tmp_path / "b.json"])
    from core.evaluation.shard import replayed

    with pytest.raises(ValueError, match=r"rows \[2\] computed by no shard"):
        replayed(merged, "0", 3)


def test_frozen_for_eval_keeps_no_autograd_state_and_restores_flags(wild) -> None:
    vlm, _ = wild
    vlm.requires_grad_(False)
    vlm.adapter.requires_grad_(True)
    vlm.train()
    try:
        with frozen_for_eval(vlm, inference=True):
            assert not any(p.requires_grad for p in vlm.parameters())
            assert torch.is_inference_mode_enabled() and not vlm.training
            out = vlm.adapter(torch.zeros(1, 2, vlm.vision.spec.feature_dim, dtype=torch.float64))
            assert out.grad_fn is None
        assert all(p.requires_grad for p in vlm.adapter.parameters()) and vlm.training
        assert not any(p.requires_grad for p in vlm.llm.parameters())
    finally:
        vlm.requires_grad_(True)
        vlm.eval()


@pytest.mark.slow
def test_sharded_eval_step_equals_the_single_task_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The grid's flow for several workers, without Ray: a trained stage 1 is evaluated by two shard
    tasks writing under the step's work directory and gathered by the lease holder; the finished step
    equals the one-task evaluation step (which loads the model frozen, in fp32 on a CPU)."""
    from core.config import TrialConfig
    from core.evaluation.job import EvalJob
    from core.evaluation.load import load_trained
    from core.evaluation.step import evaluate_job, evaluate_shard_step, gather_shards_step, read_metrics
    from core.pipeline import trial_steps
    from core.rendezvous import RENDEZVOUS
    from core.steps import materialize
    from core.train.checkpoint import LocalCheckpoints
    from core.train.job import make_stage_job
    from core.train.stage import run_stage

    for key in RENDEZVOUS:
        monkeypatch.delenv(key, raising=False)
    evals = {
        "enabled": True,
        "batch_size": 2,
        "synthetic": {"num_images": 6, "num_text_questions": 8},
        "diagnostics": {"heldout_samples": 4, "pictures": False},
        "max_new_tokens": 2,
        "benchmarks": [
            {"name": "pope", "kind": "pope", "max_samples": 3},
            {"name": "sqa", "kind": "mc", "max_samples": 3},
        ],
    }
    cfg = TrialConfig.model_validate(
        {
            "data": {"stage1": {"source": "synthetic", "synthetic": {"num_samples": 8, "seed": 4}}},
            "stage1": {"lr": 0.01, "global_batch_size": 8, "micro_batch_size": 8, "epochs": 1},
            "eval": evals,
        }
    )
    stage_dir = tmp_path / "stage1"
    stage_dir.mkdir()
    run_stage(make_stage_job(cfg, "stage1", stage_dir), checkpoints=LocalCheckpoints())
    vlm, _ = load_trained(cfg.model, "stage1", {"stage1": str(stage_dir)})
    assert next(vlm.parameters()).dtype == torch.float32 and not any(
        p.requires_grad for p in vlm.parameters()
    )

    roots = {"single": tmp_path / "single", "sharded": tmp_path / "sharded"}
    step = trial_steps(cfg).evals["stage1"]
    job = EvalJob(config=step.config, stage_dirs={"stage1": str(stage_dir)})
    in_task = lambda out: evaluate_job(job.model_copy(update={"out_dir": str(out)}))  # noqa: E731
    single = read_metrics(materialize(step, roots["single"], in_task).path)

    def build(out: Path) -> None:
        shard_job = job.model_copy(update={"out_dir": str(out)})
        for k in (1, 0):  # any order
            evaluate_shard_step(shard_job, k, 2)
        gather_shards_step(shard_job, 2)

    done = materialize(step, roots["sharded"], build)
    assert json.loads((done.path / "metrics.json").read_text())["metrics"] == single
    assert _files(done.path) == _files(step.path(roots["single"]))
    assert not (done.path / "shards").exists()

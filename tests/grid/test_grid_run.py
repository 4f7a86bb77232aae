"""End to end: a spec through Ray Tune + Ray Train into a real MLflow store, failures isolated, reruns skip."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from grid.cli import main
from grid.expand import expand
from grid.spec import load_spec

SPEC = """\
name: e2e
base:
  model: {{llm: tiny-llama, encoder: tiny-clip}}
  data:
    stage1: {{source: synthetic, synthetic: {{num_samples: 96, seed: 3}}}}
  stage1: {{lr: 0.01, global_batch_size: 16, micro_batch_size: 8, epochs: 1, log_every: 1}}
grid:
  axes:
    data.stage1:
      - {{source: synthetic, synthetic: {{num_samples: 96, seed: 3}}}}
      - {{source: llava, name: broken, json_path: {broken_json}, image_root: {broken_root}}}
  exclude: {exclude}
output: {{root: {root}, tracking_uri: "sqlite:///{db}", max_concurrent_trials: 2}}
"""


def broken_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """A LLaVA JSON whose first image file does not exist: the trial must fail and name it. The others
    exist, so the run's pre-flight (which samples a few images, not record 0) lets the trial start."""
    root = tmp_path / "broken_images"
    root.mkdir()
    for i in range(1, 32):
        Image.new("RGB", (8, 8)).save(root / f"missing-{i}.png")
    records = [
        {
            "id": f"broken-{i}",
            "image": f"missing-{i}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe."},
                {"from": "gpt", "value": "a red star."},
            ],
        }
        for i in range(32)
    ]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(records))
    return path, root


def write_spec(tmp_path: Path, exclude: str = "[]") -> Path:
    broken_json, broken_root = (
        broken_dataset(tmp_path)
        if not (tmp_path / "broken.json").exists()
        else (
            tmp_path / "broken.json",
            tmp_path / "broken_images",
        )
    )
    text = SPEC.format(
        broken_json=broken_json,
        broken_root=broken_root,
        root=tmp_path / "results",
        db=tmp_path / "mlflow.db",
        exclude=exclude,
    )
    path = tmp_path / "e2e.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.slow
def test_grid_end_to_end(tmp_path: Path, ray_session, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = write_spec(tmp_path)
    spec = load_spec(spec_path)
    good, bad = expand(spec, str(spec_path))
    assert bad.config.data.stage1.source == "llava"

    assert main(["grid", str(spec_path)]) == 1  # a failed trial makes the command fail ...
    captured = capsys.readouterr()
    out = captured.out
    assert "failed" in out and bad.id in out
    # Ray's and Tune's own output is in the invocation's log file, not on the console.
    (log,) = (tmp_path / "results" / "logs").glob("e2e-*.log")
    noise = ("Configuration for experiment", "View detailed results here", "tensorboard --logdir")
    assert all(n in log.read_text() for n in noise[:2])
    assert not any(n in captured.out + captured.err for n in noise)
    assert f"Ray's output: {log}" in out
    # Before its first step a trial's row says what it is doing (grid/trial.py reports the phases).
    assert "preparing the models" in out and "stage1: waiting for resources, starting workers" in out

    client = MlflowClient(tracking_uri=spec.output.tracking_uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("seagrid.role") == "grid"]
    children = {r.data.tags.get("trial_id"): r for r in runs if r.data.tags.get("seagrid.role") == "trial"}
    assert len(parents) == 1 and parents[0].data.tags["grid"] == "e2e"
    assert parents[0].info.status == "FAILED"  # the invocation ended with a failed trial
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    # ... but the other trial went on and is complete in MLflow.
    run = children[good.id]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("stage1=#") and run.data.tags["trial_id"] == good.id
    assert run.data.tags["grid"] == "e2e" and run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert run.data.params["stage1.lr"] == "0.01" and run.data.params["model.encoder"] == "tiny-clip"
    history = client.get_metric_history(run.info.run_id, "stage1/loss")
    assert [m.step for m in history] == list(range(1, 7))  # 96 samples / 16 per step = 6 steps
    assert {"stage1/lr", "stage1/samples_per_s"} <= set(run.data.metrics)
    assert history[-1].value < history[0].value, "stage-1 loss did not go down"
    config = yaml.safe_load(
        Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text()
    )
    assert config == good.config.model_dump(mode="json")
    adapter_dir = Path(run.data.tags["result.stage1/dir"]) / "adapter"
    assert (adapter_dir / "adapter.safetensors").is_file()

    failed = children[bad.id]
    assert failed.info.status == "FAILED"
    tb = Path(client.download_artifacts(failed.info.run_id, "traceback.txt", str(tmp_path))).read_text()
    assert "broken-0" in tb and "missing-0.png" in tb

    # A rerun without the broken cell starts nothing: the finished trial is found by its id.
    rerun = write_spec(tmp_path, exclude="[{data.stage1.source: llava}]")
    assert main(["grid", str(rerun)]) == 0
    out = capsys.readouterr().out
    assert "1 already done, 0 to run" in out
    # The rerun reopened the grid's parent run and ended it: every trial of this spec is done.
    assert client.get_run(parents[0].info.run_id).info.status == "FINISHED"
    assert (
        len([r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("trial_id") == good.id])
        == 1
    )


@pytest.mark.slow
def test_two_gloo_workers_train_sea(tmp_path: Path, ray_session) -> None:
    """num_workers from the spec: two CPU workers (gloo) run one SEA trial through both stages, stage 1 under
    DeepSpeed ZeRO-2 (a checkpoint written by both ranks into one Ray checkpoint), stage 2 under ZeRO-3
    (the LLM partitioned across the two ranks, gathered to be saved); rank 0 logs."""
    spec_path = tmp_path / "ddp.yaml"
    spec_path.write_text(
        textwrap.dedent(
            f"""\
            name: ddp
            base:
              method: {{name: sea, sea: {{top_n: 3}}}}
              data: {{stage1: {{source: synthetic, synthetic: {{num_samples: 64, seed: 11}}}}}}
              stage1: {{lr: 0.01, global_batch_size: 16, micro_batch_size: 8, epochs: 1, checkpoint_every: 2,
                        deepspeed: {{zero: 2}}}}
              stage2: {{enabled: true, lr: 0.001, global_batch_size: 8, micro_batch_size: 4, max_steps: 3,
                        deepspeed: {{zero: 3}}}}
              resources: {{num_workers: 2, cpus_per_worker: 0.5}}
            output: {{root: {tmp_path / "results"}, tracking_uri: "sqlite:///{tmp_path / "mlflow.db"}"}}
            """
        )
    )
    assert main(["grid", str(spec_path)]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
        if r.data.tags.get("seagrid.role") == "trial"
    ]
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "stage1/loss/align")
    assert [m.step for m in history] == [1, 2, 3, 4]  # 64 samples / (8 per worker x 2 workers) = 4 steps
    assert run.data.params["resources.num_workers"] == "2"
    # Stage 2 ran after stage 1, from its adapter, on the same two workers.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "stage2/loss")] == [1, 2, 3]
    assert run.data.metrics["stage2/steps"] == 3
    assert (run.data.metrics["stage1/zero"], run.data.metrics["stage2/zero"]) == (2, 3)
    # The step-2 checkpoint holds rank 0's and rank 1's parts, merged by Ray.
    (ckpt,) = [p for p in (tmp_path / "results" / "ray").glob("stage1-*/checkpoint_*") if p.is_dir()]
    names = {p.name for p in ckpt.iterdir()}
    assert {"position.json", "rng-rank0.pt", "rng-rank1.pt", "deepspeed"} <= names
    shards = {p.name for p in (ckpt / "deepspeed" / "state").iterdir()}
    assert {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    } <= shards
    llm = json.loads((Path(run.data.tags["result.stage2/dir"]) / "llm" / "config.json").read_text())
    assert llm["num_hidden_layers"] >= 1


def _killer_callback():
    """A Ray Train callback (on the controller) that SIGKILLs a training worker's process once, right after
    the first checkpoint is reported: a real dead rank, from outside the training code."""
    import os
    import signal

    import psutil
    from ray.train import UserCallback

    class KillRankAfterFirstCheckpoint(UserCallback):
        def __init__(self) -> None:
            self.killed = False

        def after_report(self, run_context, metrics, checkpoint) -> None:
            if checkpoint is None or self.killed:
                return
            raylet = os.getppid()  # this run's workers are this controller's siblings (other sessions' not)
            for proc in psutil.process_iter(["cmdline", "ppid"]):
                cmd = proc.info["cmdline"] or [""]
                if proc.info["ppid"] == raylet and cmd[0].startswith("ray::RayTrainWorker"):
                    os.kill(proc.pid, signal.SIGKILL)
                    self.killed = True
                    return

    return KillRankAfterFirstCheckpoint()


@pytest.mark.slow
def test_killed_rank_restarts_from_its_ray_checkpoint(tmp_path: Path, ray_session) -> None:
    """A TorchTrainer (DeepSpeed ZeRO-2) whose rank is SIGKILLed after its step-4 checkpoint restarts from it
    (`resources.max_failures: 1`) and ends with exactly the adapter of an uninterrupted run. (A relaunch in
    a new grid process, through the same Ray checkpoints, is tests/grid/test_interrupt.py.)"""

    import torch
    from safetensors.torch import load_file

    from core.train.checkpoint import LocalCheckpoints
    from core.train.job import make_stage_job
    from core.train.launch import fit_stage
    from core.train.stage import run_stage
    from grid.spec import TrialConfig

    cfg = TrialConfig.model_validate(
        {
            "data": {"stage1": {"source": "synthetic", "synthetic": {"num_samples": 40, "seed": 21}}},
            "stage1": {
                "lr": 0.01,
                "global_batch_size": 8,
                "micro_batch_size": 4,
                "epochs": 2,
                "checkpoint_every": 4,
                "deepspeed": {"zero": 2},
            },
            "resources": {"max_failures": 1},
        }
    )
    for name in ("killed", "straight"):
        (tmp_path / name).mkdir()
    killed = make_stage_job(
        cfg, "stage1", tmp_path / "killed", run_name="kill-test", storage_path=str(tmp_path / "ray-runs")
    )
    fit_stage(killed, callbacks=[_killer_callback()])
    run_stage(make_stage_job(cfg, "stage1", tmp_path / "straight"), checkpoints=LocalCheckpoints())
    resumed = json.loads((tmp_path / "killed" / "result.json").read_text())["resumed_from_step"]
    assert resumed in (4, 8), resumed  # the rank died after the step-4 report; step 8's may have landed

    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "adapter.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key

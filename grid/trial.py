"""One trial as a Ray Tune driver function: its steps in order, each in a content-addressed directory."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path
from typing import Any

from core.cache import DONE_MARKER, is_built
from grid.identity import content_hash, identity_dict
from grid.spec import DatasetConfig, TrialConfig

# Ray Tune gives each trial this much (a token amount, so trials are limited by their workers'
# resources, not by the driver that only waits on them).
DRIVER_RESOURCES = {"cpu": 0, "memory": 1}


def stage_identity(cfg: TrialConfig, stage: str) -> dict[str, Any]:
    """What defines a stage's result; trials that agree on it share one step directory.

    Stage 2 includes everything that defines the stage 1 it starts from (when stage 1 runs).
    """
    ident = identity_dict(cfg.model_copy(update={"stage2": cfg.stage2.model_copy(update={"enabled": True})}))
    out = {
        "step": stage,
        "model": ident["model"],
        "data": ident["data"][stage],
        stage: ident[stage],
        "seed": ident["seed"],
    }
    if stage == "stage1":
        out["method"] = ident["method"]
    elif cfg.stage1.enabled:
        out["stage1"] = stage_identity(cfg, "stage1")
    return out


def stage_dir(results_root: Path, cfg: TrialConfig, stage: str) -> Path:
    """results/steps/<stage>-<hash of what defines it>."""
    return Path(results_root) / "steps" / f"{stage}-{content_hash(stage_identity(cfg, stage))}"


def resolve_dataset(ds: DatasetConfig, stage: str = "stage1") -> tuple[Path, Path]:
    """(json path, image root) of a stage's dataset, generating synthetic data on first use
    (captions for stage 1, instruction conversations for stage 2)."""
    if ds.source == "synthetic":
        if stage == "stage2":
            from core.data.synthetic_instruct import InstructSpec, ensure_instruct

            return ensure_instruct(InstructSpec(**ds.synthetic.model_dump()))
        from core.data.synthetic import SyntheticSpec, ensure_synthetic

        return ensure_synthetic(SyntheticSpec(**ds.synthetic.model_dump()))
    assert ds.json_path and ds.image_root
    json_path, image_root = Path(ds.json_path).expanduser(), Path(ds.image_root).expanduser()
    if not json_path.is_file():
        raise FileNotFoundError(f"data.{stage}.json_path: {json_path} does not exist")
    if not image_root.is_dir():
        raise FileNotFoundError(f"data.{stage}.image_root: {image_root} is not a directory")
    return json_path, image_root


def prepare_labels(
    cfg: TrialConfig,
    json_path: Path,
    image_root: Path,
    *,
    progress: bool = False,
    parallel: int | str | None = None,
) -> Path:
    """SEA's label step: the word list, the label store (built once, shared) and its view on the trial's grid.

    ``parallel`` is ``ensure_store``'s: ``None`` extracts in this process, ``K`` in K Ray tasks (one GPU
    each when the cluster has GPUs), ``"auto"`` by cluster and dataset size. Pass it from the driver
    (``just labels``); inside a trial that holds the GPUs, the shards would wait for them.
    """
    from core.labels import caption_words, ensure_store, labels_for_grid, read_word_list
    from core.models.vision import ENCODERS

    sea = cfg.method.sea
    if sea.words.source == "file":
        assert sea.words.path
        words = read_word_list(Path(sea.words.path).expanduser())
    else:
        words = caption_words(json_path, min_count=sea.words.min_count, max_words=sea.words.max_words)
    store = ensure_store(
        sea.labels_from or cfg.model.encoder,
        words,
        json_path,
        image_root,
        top_n=sea.top_n,
        negate=sea.sign == "negated",
        batch_size=sea.label_batch_size,
        chunk_size=sea.label_chunk_words,
        on_missing_image=cfg.data.stage1.on_missing_image,
        progress=progress,
        parallel=parallel,
    )
    view = labels_for_grid(store, ENCODERS[cfg.model.encoder].grid, sea.top_n, precompute=True)
    return Path(view.path)


def fit_stage(cfg: TrialConfig, payload: dict[str, Any], callbacks: list[Any] | None = None) -> None:
    """`payload["stage"]` in a Ray Train TorchTrainer; a relaunch under the same run name resumes from its
    latest checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from core.train.stage import train_stage

    res = cfg.resources
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_stage,
        train_loop_config=payload,
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"{payload['trial_id']}-{payload['stage']}",
            storage_path=payload["storage_path"],
            callbacks=callbacks or [],
        ),
    )
    trainer.fit()


def run_step(
    cfg: TrialConfig, cell: dict[str, Any], stage: str, extra: dict[str, Any]
) -> tuple[Path, dict[str, Any]]:
    """Run (or reuse) one training stage in its content-addressed directory; returns it and its summary."""
    from ray.tune.integration.ray_train import TuneReportCallback

    json_path, image_root = resolve_dataset(getattr(cfg.data, stage), stage)
    step_dir = stage_dir(Path(cell["results_root"]), cfg, stage)
    step_dir.parent.mkdir(parents=True, exist_ok=True)
    # Trials sharing a stage result wait for each other instead of training it twice.
    with open(step_dir.parent / f".{step_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reused = is_built(step_dir)
        if not reused:
            if step_dir.exists():
                shutil.rmtree(step_dir)
            step_dir.mkdir(parents=True)
            (step_dir / "step.json").write_text(
                json.dumps(stage_identity(cfg, stage), indent=2, sort_keys=True)
            )
            payload = {
                **cell,
                **extra,
                "stage": stage,
                "step_dir": str(step_dir),
                "data": {"json_path": str(json_path), "image_root": str(image_root)},
            }
            fit_stage(cfg, payload, [TuneReportCallback()])
            (step_dir / DONE_MARKER).write_text("ok\n")
    result = json.loads((step_dir / "result.json").read_text())
    summary = {f"{stage}/{k}": v for k, v in result.items()}
    summary.update({f"{stage}/reused": reused, f"{stage}/dir": str(step_dir)})
    return step_dir, summary


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: run (or reuse) stage 1, then stage 2 from its adapter; report a summary."""
    import os

    import ray.tune

    cell = config["cell"]
    os.environ["SEAGRID_CACHE"] = cell["cache_dir"]
    cfg = TrialConfig.model_validate(cell["trial"])
    summary: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if cfg.stage1.enabled:
        stage1, part = run_step(cfg, cell, "stage1", {})
        summary.update(part)
        extra["stage1_dir"] = str(stage1)
    if cfg.stage2.enabled:
        summary.update(run_step(cfg, cell, "stage2", extra)[1])
    ray.tune.report({"seagrid": {"final": summary}})

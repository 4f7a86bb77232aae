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


def stage1_identity(cfg: TrialConfig) -> dict[str, Any]:
    """What defines a stage-1 result; trials that agree on it share one adapter."""
    ident = identity_dict(cfg)
    return {
        "step": "stage1",
        "model": ident["model"],
        "method": ident["method"],
        "data": ident["data"]["stage1"],
        "stage1": ident["stage1"],
        "seed": ident["seed"],
    }


def stage1_dir(results_root: Path, cfg: TrialConfig) -> Path:
    """results/steps/stage1-<hash of what defines it>."""
    return Path(results_root) / "steps" / f"stage1-{content_hash(stage1_identity(cfg))}"


def resolve_dataset(ds: DatasetConfig) -> tuple[Path, Path]:
    """(json path, image root) of a dataset, generating synthetic data on first use."""
    if ds.source == "synthetic":
        from core.data.synthetic import SyntheticSpec, ensure_synthetic

        return ensure_synthetic(SyntheticSpec(**ds.synthetic.model_dump()))
    assert ds.json_path and ds.image_root
    json_path, image_root = Path(ds.json_path).expanduser(), Path(ds.image_root).expanduser()
    if not json_path.is_file():
        raise FileNotFoundError(f"data.stage1.json_path: {json_path} does not exist")
    if not image_root.is_dir():
        raise FileNotFoundError(f"data.stage1.image_root: {image_root} is not a directory")
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


def fit_stage1(cfg: TrialConfig, payload: dict[str, Any], callbacks: list[Any] | None = None) -> None:
    """Stage 1 in a Ray Train TorchTrainer; a relaunch under the same run name resumes from its checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from core.train.stage1 import train_stage1

    res = cfg.resources
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_stage1,
        train_loop_config=payload,
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.num_workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"{payload['trial_id']}-stage1",
            storage_path=payload["storage_path"],
            callbacks=callbacks or [],
        ),
    )
    trainer.fit()


def run_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: prepare data, run (or reuse) stage 1, report a summary."""
    import os

    import ray.tune

    cell = config["cell"]
    os.environ["SEAGRID_CACHE"] = cell["cache_dir"]
    cfg = TrialConfig.model_validate(cell["trial"])
    results_root = Path(cell["results_root"])
    summary: dict[str, Any] = {}
    if cfg.stage1.enabled:
        json_path, image_root = resolve_dataset(cfg.data.stage1)
        step_dir = stage1_dir(results_root, cfg)
        step_dir.parent.mkdir(parents=True, exist_ok=True)
        # Trials sharing a stage-1 result wait for each other instead of training it twice.
        with open(step_dir.parent / f".{step_dir.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            reused = is_built(step_dir)
            if not reused:
                if step_dir.exists():
                    shutil.rmtree(step_dir)
                step_dir.mkdir(parents=True)
                (step_dir / "step.json").write_text(
                    json.dumps(stage1_identity(cfg), indent=2, sort_keys=True)
                )
                payload = {
                    **cell,
                    "step_dir": str(step_dir),
                    "data": {"json_path": str(json_path), "image_root": str(image_root)},
                }
                from ray.tune.integration.ray_train import TuneReportCallback

                fit_stage1(cfg, payload, [TuneReportCallback()])
                (step_dir / DONE_MARKER).write_text("ok\n")
        result = json.loads((step_dir / "result.json").read_text())
        summary.update({f"stage1/{k}": v for k, v in result.items()})
        summary.update({"stage1/reused": reused, "stage1/dir": str(step_dir)})
    ray.tune.report({"seagrid": {"final": summary}})

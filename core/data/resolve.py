"""Where a stage's dataset is: generated on first use (synthetic) or checked local files."""

from __future__ import annotations

from pathlib import Path

from core.config import DatasetConfig


def resolve_dataset(ds: DatasetConfig, stage: str = "stage1") -> tuple[Path, Path]:
    """(json path, image root) of a stage's dataset, generating synthetic data on first use
    (captions for stage 1, instruction conversations for stage 2), cut to its seeded `fraction`."""
    from core.data.subset import subset_json
    from core.paths import cache_dir

    json_path, image_root = _whole_dataset(ds, stage)
    return subset_json(json_path, ds.fraction, ds.fraction_seed, cache_dir()), image_root


def _whole_dataset(ds: DatasetConfig, stage: str) -> tuple[Path, Path]:
    if ds.source == "synthetic":
        from core.stages import STAGES

        if STAGES[stage].data_kind == "instructions":
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

"""The held-out split of a stage's data: fixed by the dataset and its own seed (the same for every trial of
a search), never trained on, its L_lm alone evaluated every N steps and kept in the stage's result."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

from core.config import TrialConfig
from core.data.holdout import split_indices
from core.train.checkpoint import LocalCheckpoints
from core.train.job import make_stage_job

HELD = {"fraction": 0.25, "every_steps": 2}


def config(**over: Any) -> TrialConfig:
    base: dict[str, Any] = {
        "data": {"stage1": {"source": "synthetic", "synthetic": {"num_samples": 48, "seed": 5}}},
        "stage1": {"lr": 0.01, "global_batch_size": 8, "micro_batch_size": 4, "epochs": 2, "heldout": HELD},
    }
    for path, value in over.items():
        node = base
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return TrialConfig.model_validate(base)


def test_split_is_the_same_for_every_trial_of_a_search() -> None:
    a = config()
    # What a search varies (a method's weight, the lr, the trial's seed) does not move the split.
    others = [
        config(**{"stage1.lr": 0.1}),
        config(seed=7),
        config(method={"name": "basic", "basic": {"das_weight": 3.0}}),
    ]
    split = split_indices(a.data.stage1, a.stage1.heldout, 48)
    train, held = split
    assert len(held) == 12 and not set(train) & set(held) and sorted(train + held) == list(range(48))
    for cfg in others:
        assert split_indices(cfg.data.stage1, cfg.stage1.heldout, 48) == split
    # Its own seed and other data do move it.
    reseeded = config(**{"stage1.heldout": {**HELD, "seed": 1}})
    assert split_indices(reseeded.data.stage1, reseeded.stage1.heldout, 48)[1] != held
    other_data = config(**{"data.stage1.synthetic.seed": 6})
    assert split_indices(other_data.data.stage1, other_data.stage1.heldout, 48)[1] != held


def test_heldout_config_keeps_existing_ids_and_needs_a_fraction() -> None:
    from grid.expand import trial_hash

    plain = TrialConfig()
    explicit = TrialConfig.model_validate({"stage1": {"heldout": {"fraction": 0.0}}})
    assert trial_hash(plain) == trial_hash(explicit)  # the default is not part of the identity
    assert trial_hash(plain) != trial_hash(config())
    with pytest.raises(ValueError, match="every_steps needs a held-out split"):
        TrialConfig.model_validate({"stage1": {"heldout": {"every_steps": 2}}})


class RecordingLoader(DataLoader):
    """The stage's own training DataLoader, remembering the sample ids of every batch it yields."""

    seen: list[str] = []

    def __iter__(self):
        for batch in super().__iter__():
            RecordingLoader.seen.extend(batch["ids"])
            yield batch


def test_stage_never_trains_on_the_heldout_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.train.setup_data as setup_data
    from core.train.stage import run_stage

    cfg = config()
    job = make_stage_job(cfg, "stage1", tmp_path / "s1")
    monkeypatch.setattr(setup_data, "DataLoader", RecordingLoader)  # where the training loader is built
    RecordingLoader.seen = []
    checkpoints = LocalCheckpoints()
    result = run_stage(job, checkpoints=checkpoints)

    ids = [str(r["id"]) for r in json.loads(Path(job.json_path).read_text())]
    train, held = split_indices(cfg.data.stage1, cfg.stage1.heldout, len(ids))
    held_ids = {ids[i] for i in held}
    assert RecordingLoader.seen and not set(RecordingLoader.seen) & held_ids
    assert set(RecordingLoader.seen) <= {ids[i] for i in train}
    assert result["samples"] == 36 and result["steps"] == 8  # 36 samples / 8 per step x 2 epochs
    curve = {
        m["step"]: m["metrics"]["stage1/heldout/lm"]
        for m in checkpoints.messages
        if "stage1/heldout/lm" in m["metrics"]
    }
    assert sorted(curve) == [2, 4, 6, 8]
    assert result["final_heldout_lm"] == curve[8]
    # L_lm alone: the training L_lm of the same step is another number (other samples), no method term.
    assert all(v > 0 for v in curve.values())

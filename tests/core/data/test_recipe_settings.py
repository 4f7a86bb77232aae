"""Recipe settings of the papers: stage-2 modality grouping by default, a seeded dataset `fraction`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import TrialConfig
from core.data.resolve import resolve_dataset
from core.data.sampler import LengthGroupedSampler
from core.data.subset import subset_indices
from core.train.job import make_stage_job
from core.train.setup_data import ResumableSampler, build_sampler
from grid.expand import expand
from grid.spec import load_spec


class _Records(list):
    """The records of a LLaVA JSON, with the `records` attribute a LlavaDataset has (all the sampler reads)."""

    @property
    def records(self) -> list:
        return self


def _sampler(cfg: TrialConfig, stage: str, out: Path):
    job = make_stage_job(cfg, stage, out)
    records = json.loads(Path(job.json_path).read_text())
    return build_sampler(job, _Records(records), world=1, rank=0, accum=1)


def test_stage2_groups_by_modality_by_default(seagrid_cache: Path, tmp_path: Path) -> None:
    cfg = TrialConfig.model_validate({"stage2": {"enabled": True, "global_batch_size": 16}})
    grouped = _sampler(cfg, "stage2", tmp_path)
    assert isinstance(grouped, LengthGroupedSampler) and grouped.balance  # LLaVA's group_by_modality_length
    assert isinstance(_sampler(cfg, "stage1", tmp_path), ResumableSampler)  # stage 1 stays random
    off = TrialConfig.model_validate(
        {"stage2": {"enabled": True, "global_batch_size": 16, "group_by_length": "off"}}
    )
    assert isinstance(_sampler(off, "stage2", tmp_path), ResumableSampler)


def test_grouping_is_in_the_id_and_off_is_not() -> None:
    from core.config.identity import identity_dict

    grouped = TrialConfig.model_validate({"stage2": {"enabled": True}})
    assert identity_dict(grouped)["stage2"]["group_by_length"] == "modality"
    off = TrialConfig.model_validate({"stage2": {"enabled": True, "group_by_length": "off"}})
    assert "group_by_length" not in identity_dict(off)["stage2"]  # the id a stage-2 trial had before


def test_subset_indices_are_seeded_and_sized() -> None:
    picked = subset_indices(1000, 0.1, 0)
    assert len(picked) == 100 and picked == sorted(picked) and picked == subset_indices(1000, 0.1, 0)
    assert picked != subset_indices(1000, 0.1, 1)
    assert subset_indices(5, 0.01, 0) == subset_indices(5, 0.01, 0) and len(subset_indices(5, 0.01, 0)) == 1
    with pytest.raises(ValueError, match="fraction=0"):
        subset_indices(5, 0, 0)


def test_fraction_cuts_the_dataset_the_same_way_for_every_trial(seagrid_cache: Path) -> None:
    whole = TrialConfig.model_validate({"data": {"stage1": {"synthetic": {"num_samples": 40}}}})
    part = TrialConfig.model_validate(
        {"data": {"stage1": {"synthetic": {"num_samples": 40}, "fraction": 0.25}}}
    )
    full_json, root = resolve_dataset(whole.data.stage1)
    sub_json, sub_root = resolve_dataset(part.data.stage1)
    full, sub = json.loads(full_json.read_text()), json.loads(sub_json.read_text())
    assert len(full) == 40 and len(sub) == 10 and sub_root == root
    assert sub == [full[i] for i in subset_indices(40, 0.25, 0)]
    # Another trial (another method, lr, seed) of the same dataset reads the same subset file.
    other = part.model_copy(update={"seed": 7, "stage1": part.stage1.model_copy(update={"lr": 0.5})})
    assert resolve_dataset(other.data.stage1)[0] == sub_json
    reseeded = part.data.stage1.model_copy(update={"fraction_seed": 1})
    assert json.loads(resolve_dataset(reseeded)[0].read_text()) != sub


def test_fraction_is_in_the_id_only_when_set(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: f\ngrid: {axes: {data.stage1.fraction: [1.0, 0.1]}}\n")
    plain = tmp_path / "p.yaml"
    plain.write_text("name: f\n")
    hashes = [t.hash for t in expand(load_spec(spec))]  # the id's hash part (its slug names the axis)
    assert hashes[0] == expand(load_spec(plain))[0].hash and hashes[1] != hashes[0]


SEA_SEARCH = """
name: tau
base:
  method: {name: sea}
  eval: {enabled: true, diagnostics: {every_steps: 2}}
grid:
  axes:
    method.sea.tau_init: [0.07, 1.0]
search:
  space:
    method.sea.tau_init: {loguniform: [0.01, 1.0]}
    method.sea.align_weight: {loguniform: [0.1, 10.0]}
  metric: stage1/loss/lm  # not diag/label_recall: the search guard refuses what SEA trains directly
  mode: max
  num_samples: 2
"""


def test_sea_initial_temperature_is_a_grid_and_a_search_axis(tmp_path: Path) -> None:
    import math

    import torch

    from core.methods.sea_objective import SeaObjective
    from grid.search_spec import with_values
    from grid.spec import SpecError

    grid_only = tmp_path / "grid.yaml"
    grid_only.write_text(SEA_SEARCH.split("search:")[0])
    trials = expand(load_spec(grid_only))
    assert [t.config.method.sea.tau_init for t in trials] == [0.07, 1.0] and trials[0].hash != trials[1].hash
    objective = SeaObjective(
        trials[0].config.method.sea, word_embeddings=torch.zeros(3, 4), grid=(2, 2), seed=0
    )
    assert math.isclose(math.exp(objective.log_tau.item()), 0.07, rel_tol=1e-6)
    # As a search axis: the space validates against the trial config, and a sampled value lands there.
    both = tmp_path / "both.yaml"
    both.write_text(SEA_SEARCH)
    with pytest.raises(SpecError, match="method.sea.tau_init: this path is a grid axis too"):
        load_spec(both)
    searched = tmp_path / "search.yaml"
    searched.write_text(SEA_SEARCH.replace("    method.sea.tau_init: [0.07, 1.0]\n", "    seed: [0]\n"))
    spec = load_spec(searched)  # load_spec checks the search space against the trial config
    assert "method.sea.tau_init" in spec.search.space
    base = trials[0].config.model_dump()
    assert with_values(base, {"method.sea.tau_init": 0.2})["method"]["sea"]["tau_init"] == 0.2


def test_plan_estimates_a_fraction_at_its_share() -> None:
    from core.models.llm import get_llm_spec
    from grid.estimate import estimate_stage
    from grid.plan import estimates

    trials = {t.id.rsplit("-", 1)[0]: t for t in expand(load_spec("experiments/ablation_basic.yaml"))}
    full, tenth = trials["base"], trials["fraction=0.1"]
    params = get_llm_spec("vicuna-7b").params_b * 1e9
    hours = {
        n: estimate_stage("stage2", params, n, 576, 1.0, checkpointing=True).gpu_hours
        for n in (665298, 66530)
    }
    # Stage 1 is the same; stage 2 reads round(665298 * 0.1) = 66530 samples.
    drop = estimates(full)["gpu_hours"] - estimates(tenth)["gpu_hours"]
    assert drop == pytest.approx(hours[665298] - hours[66530]) and drop > 0

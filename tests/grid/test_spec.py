"""Spec validation and grid expansion: strict errors that name the YAML path, stable trial ids."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from core.config.identity import content_hash
from grid.expand import expand
from grid.spec import SpecError, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def spec_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as err:
        expand(load_spec(path), str(path))
    message = str(err.value)
    assert str(path) in message, message
    return message


BAD_SPECS = [
    # (YAML, fragments the error must contain)
    (
        "name: x\nbase: {model: {llm: tiny-lama}}\n",
        ["base.model.llm", "tiny-lama", "tiny-llama", "did you mean"],
    ),
    ("name: x\nbase: {model: {encoder: clip}}\n", ["base.model.encoder", "'clip'", "tiny-clip"]),
    ("name: x\nbase: {modle: {}}\n", ["base.modle", "unknown key", "did you mean 'model'"]),
    ("name: x\nbase: {stage1: {lr: -1}}\n", ["base.stage1.lr", "greater than 0", "-1"]),
    ("name: x\nbase: {stage1: {lr: fast}}\n", ["base.stage1.lr", "'fast'"]),
    (
        "name: x\nbase: {stage1: {global_batch_size: 30, micro_batch_size: 16}}\n",
        ["global_batch_size 30", "multiple"],
    ),
    ("name: x\nbase: {method: {name: sae}}\n", ["base.method.name", "'llava'", "sae"]),
    (
        "name: x\nbase: {resources: {num_workers: 0}}\n",
        ["base.resources.num_workers", "greater than or equal to 1"],
    ),
    ("name: x\ngrid: {axes: {model.lm: [a]}}\n", ["grid.axes", "model.lm", "did you mean 'model.llm'"]),
    (
        "name: x\ngrid: {axes: {model.llm: [tiny-llama, tiny-lama]}}\n",
        ["model.llm", "tiny-lama", "did you mean"],
    ),
    ("name: x\ngrid: {zip: [{seed: [1, 2], stage1.lr: [0.1]}]}\n", ["grid.zip[0]", "equal lengths"]),
    ("name: 'bad name!'\n", ["name", "pattern"]),
    ("name: x\nbase: {data: {stage1: {source: llava}}}\n", ["base.data.stage1", "json_path", "image_root"]),
    ("name: x\nbase: {stage1: {warmup_ratio: 1.5}}\n", ["base.stage1.warmup_ratio", "1.5"]),
    (
        "name: x\nbase: {method: {name: basic, basic: {das_weight: 0, sds_weight: 0}}}\n",
        ["base.method.basic", "both 0", "use method llava"],
    ),
    ("name: x\nbase: {method: {basic: {weighting: quadratic}}}\n", ["base.method.basic.weighting", "'inc'"]),
    ("name: x\nbase: {method: {name: sea+basci}}\n", ["base.method.name", "'sea+basic'", "sea+basci"]),
    (
        "name: x\nbase: {eval: {enabled: true, benchmarks: [{name: p, kind: pope, source: files}]}}\n",
        ["base.eval.benchmarks[0]", "annotation_dir", "image_root"],
    ),
    ("name: x\nbase: {stage2: {enabled: true, template: vicuna}}\n", ["base.stage2.template", "vicuna_v1"]),
    ("name: x\nbase: {stage1: {enabled: false}}\n", ["both false"]),
    ("name: x\ngrid: {axes: {seed: []}}\n", ["grid.axes.seed", "at least one value"]),
    ("name: x\ngrid: {axes: {stage1.lr.value: [1]}}\n", ["stage1.lr.value", "value, not a section"]),
    (
        "name: x\nbase: {model: {encoder: tiny-dinov2}, method: {name: sea}}\n",
        ["method.sea.labels_from", "tiny-dinov2", "no text tower", "tiny-clip"],
    ),
    (
        "name: x\nbase: {method: {name: sea, sea: {labels_from: tiny-dinov2}}}\n",
        ["base.method.sea.labels_from", "no text tower"],
    ),
    (
        "name: x\nbase: {method: {name: sea, sea: {sign: negative}}}\n",
        ["base.method.sea.sign", "'negated'", "'plain'"],
    ),
    (
        "name: x\nbase: {method: {name: sea, sea: {words: {source: file}}}}\n",
        ["base.method.sea.words", "path"],
    ),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_SPECS)
def test_bad_spec_names_path_and_value(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = spec_error(tmp_path, text)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_yaml_is_data_not_code(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nbase: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="YAML mapping"):
        parse_spec([1, 2], "list.yaml")


GRID = """\
name: g
base:
  stage1: {global_batch_size: 32, micro_batch_size: 16}
grid:
  axes:
    model.encoder: [tiny-clip, tiny-dinov2]
    seed: [0, 1, 2]
  zip:
    - {stage1.lr: [0.001, 0.01], stage1.warmup_ratio: [0.0, 0.1]}
  exclude:
    - {model.encoder: tiny-dinov2, seed: 2}
  include:
    - {model.encoder: tiny-clip, seed: 7, stage1.lr: 0.5}
"""


def test_expansion_counts_product_zip_include_exclude(tmp_path: Path) -> None:
    trials = expand(load_spec(write(tmp_path, GRID)))
    # 2 encoders x 3 seeds x 2 zipped pairs = 12, minus 2 excluded (dinov2, seed 2), plus 1 included.
    assert len(trials) == 11
    pairs = {(t.config.stage1.lr, t.config.stage1.warmup_ratio) for t in trials if t.config.seed != 7}
    assert pairs == {(0.001, 0.0), (0.01, 0.1)}
    assert not any(t.config.model.encoder == "tiny-dinov2" and t.config.seed == 2 for t in trials)
    extra = [t for t in trials if t.config.seed == 7]
    assert len(extra) == 1 and extra[0].config.stage1.lr == 0.5
    assert len({t.id for t in trials}) == 11


def test_ids_stable_across_key_order_and_loads(tmp_path: Path) -> None:
    a = expand(load_spec(write(tmp_path, GRID, "a.yaml")))
    data = yaml.safe_load(GRID)
    reordered = {
        "grid": {k: data["grid"][k] for k in reversed(list(data["grid"]))},
        "base": data["base"],
        "name": "g",
    }
    reordered["grid"]["axes"] = {
        "seed": data["grid"]["axes"]["seed"],
        "model.encoder": data["grid"]["axes"]["model.encoder"],
    }
    b = expand(load_spec(write(tmp_path, yaml.safe_dump(reordered, sort_keys=False), "b.yaml")))
    assert sorted(t.id for t in a) == sorted(t.id for t in b)
    assert [t.id for t in a] == [t.id for t in expand(load_spec(write(tmp_path, GRID, "c.yaml")))]


def test_ids_ignore_paths_logging_and_resources(tmp_path: Path) -> None:
    base = "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16}}\n"
    other = (
        "name: g\nbase:\n  stage1: {global_batch_size: 32, micro_batch_size: 16, log_every: 5}\n"
        "  model: {llm_path: /somewhere}\n  resources: {cpus_per_worker: 2}\noutput: {root: /elsewhere}\n"
    )
    changed = "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16, lr: 0.002}}\n"
    (t1,) = expand(load_spec(write(tmp_path, base, "1.yaml")))
    (t2,) = expand(load_spec(write(tmp_path, other, "2.yaml")))
    (t3,) = expand(load_spec(write(tmp_path, changed, "3.yaml")))
    assert t1.id == t2.id
    assert t1.hash != t3.hash


def test_id_is_slug_plus_hash_of_canonical_config(tmp_path: Path) -> None:
    trials = expand(load_spec(write(tmp_path, GRID)))
    t = next(t for t in trials if t.config.seed == 1 and t.config.model.encoder == "tiny-dinov2")
    assert t.id.startswith("encoder=tiny-dinov2_seed=1_")
    assert len(t.hash) == 10
    # An independent computation of the hash: the identity fields by hand, canonical JSON, sha256.
    ident = t.config.model_dump(mode="json")
    ident.pop("resources")
    ident.pop("export")  # what is written after training, not what is trained
    ident["model"].pop("llm_path")
    ident["model"].pop("encoder_path")
    ident["stage1"].pop("log_every")
    ident["stage1"].pop("checkpoint_every")
    ident["stage1"].pop("deepspeed")  # where state lives, not what is computed
    for how in (
        "checkpoint_minutes",
        "checkpoint_keep",
        "gradient_checkpointing",
        "loader_workers",
        "pin_memory",
    ):
        ident["stage1"].pop(how)  # how it runs, not what it computes
    for later in ("precision", "group_by_length", "heldout"):
        ident["stage1"].pop(later)  # added later: part of the identity only when set
    ident["method"].pop("sea")  # llava trials: SEA and BASIC settings are not in use
    ident["method"].pop("basic")
    ident.pop("eval")  # evaluation is off by default
    ident.pop("stage2")  # stage 2 is off by default: neither it nor its data define the result
    ident["data"].pop("stage2")
    ident["data"]["stage1"].pop("json_path")
    ident["data"]["stage1"].pop("image_root")
    ident["data"]["stage1"].pop("expected_samples")
    for later in ("fraction", "fraction_seed"):
        ident["data"]["stage1"].pop(later)  # added later: part of the identity only when set
    assert t.hash == content_hash(ident)


def test_adding_an_axis_value_keeps_existing_ids(tmp_path: Path) -> None:
    small = expand(load_spec(write(tmp_path, "name: g\ngrid: {axes: {seed: [0, 1]}}\n", "s.yaml")))
    big = expand(load_spec(write(tmp_path, "name: g\ngrid: {axes: {seed: [0, 1, 2]}}\n", "b.yaml")))
    assert {t.id for t in small} < {t.id for t in big}


def test_shipped_specs_validate() -> None:
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        trials = expand(load_spec(path), str(path))
        assert trials, path
    smoke = expand(load_spec(REPO / "experiments" / "smoke.yaml"))
    assert len(smoke) >= 4


def test_unused_method_settings_do_not_change_ids(tmp_path: Path) -> None:
    plain = "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16}}\n"
    tweaked = (
        "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16}, method: {sea: {top_n: 3}}}\n"
    )
    sea_a = "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16}, method: {name: sea}}\n"
    sea_b = "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16}, method: {name: sea, sea: {top_n: 3}}}\n"
    ids = [
        expand(load_spec(write(tmp_path, text, f"{i}.yaml")))[0].hash
        for i, text in enumerate([plain, tweaked, sea_a, sea_b])
    ]
    assert ids[0] == ids[1]  # a llava trial ignores SEA's knobs
    assert len({ids[0], ids[2], ids[3]}) == 3  # for a SEA trial they define the result


def test_basic_settings_define_only_basic_trials(tmp_path: Path) -> None:
    head = "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16}, method: "
    texts = [
        head + "{name: llava}}\n",
        head + "{name: llava, basic: {layers: 4}}}\n",
        head + "{name: basic}}\n",
        head + "{name: basic, basic: {layers: 4}}}\n",
        head + "{name: sea+basic}}\n",
        head + "{name: sea, basic: {layers: 4}}}\n",
        head + "{name: sea}}\n",
    ]
    trials = [expand(load_spec(write(tmp_path, t, f"b{i}.yaml")))[0] for i, t in enumerate(texts)]
    h = [t.hash for t in trials]
    assert h[0] == h[1] and h[5] == h[6]  # llava and sea ignore BASIC's knobs
    assert len({h[0], h[2], h[3], h[4], h[6]}) == 5
    # DeepSpeed settings say where state lives, not what is computed.
    zero = "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16, deepspeed: {zero: 3}}}\n"
    assert expand(load_spec(write(tmp_path, zero, "z.yaml")))[0].hash == h[0]


def test_disabled_stage2_does_not_change_ids(tmp_path: Path) -> None:
    base = "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16}}\n"
    tweaked = (
        "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16}, stage2: {lr: 0.1},"
        " data: {stage2: {synthetic: {seed: 4}}}}\n"
    )
    enabled = (
        "name: g\nbase: {stage1: {global_batch_size: 32, micro_batch_size: 16}, stage2: {enabled: true}}\n"
    )
    a, b, c = (
        expand(load_spec(write(tmp_path, t, f"{i}.yaml")))[0].hash
        for i, t in enumerate([base, tweaked, enabled])
    )
    assert a == b != c

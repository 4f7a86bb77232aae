"""The trial config package: core stands on its own, registry facts agree, trial ids never move."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from grid.expand import expand
from grid.spec import load_spec

REPO = Path(__file__).resolve().parents[3]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_core_never_imports_grid():
    offenders = {
        str(p.relative_to(REPO)): sorted(
            m for m in _imported_modules(p) if m == "grid" or m.startswith("grid.")
        )
        for p in (REPO / "core").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_config_is_a_leaf_package():
    for p in (REPO / "core" / "config").rglob("*.py"):
        project = {m for m in _imported_modules(p) if m.split(".")[0] in ("core", "grid")}
        assert all(m.startswith("core.config") for m in project), (p.name, project)


def test_the_import_scan_sees_lazy_imports(tmp_path):
    # The scan must catch an import inside a function body, not only at module level.
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from grid.spec import TrialConfig\n    import grid.run\n")
    assert {"grid.spec", "grid.run"} <= _imported_modules(f)


def test_registry_facts_agree_with_the_registries():
    from core.config.facts import ADAPTER_IDS, CHAT_TEMPLATES, ENCODER_FACTS, LLM_IDS
    from core.models.adapter import ADAPTERS
    from core.models.llm import LLMS
    from core.models.vision import ENCODERS

    assert set(LLM_IDS) == set(LLMS)
    assert set(ADAPTER_IDS) == set(ADAPTERS)
    assert {k: (e.has_text_tower, tuple(e.grid)) for k, e in ENCODERS.items()} == ENCODER_FACTS
    assert {s.chat_template for s in LLMS.values()} <= set(CHAT_TEMPLATES)


def test_trial_ids_of_every_spec_are_unchanged():
    """Ids committed before the steps refactor (tests/fixtures/trial_ids.json): a change here would make
    every finished trial in an existing MLflow store look new."""
    expected = json.loads((REPO / "tests" / "fixtures" / "trial_ids.json").read_text())
    specs = sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments").glob("*.yaml"))
    assert sorted(expected) == specs
    for rel, ids in expected.items():
        spec = load_spec(REPO / rel)
        assert [t.id for t in expand(spec, rel)] == ids, rel


def test_a_setting_added_later_renames_nothing_until_set():
    from core.config import TrialConfig
    from core.config.identity import identity_dict
    from core.pipeline import trial_steps

    base = TrialConfig()
    assert "group_by_length" not in identity_dict(base)["stage1"]
    grouped = TrialConfig.model_validate({"stage1": {"group_by_length": "modality"}})
    assert identity_dict(grouped)["stage1"]["group_by_length"] == "modality"
    assert trial_steps(grouped).stages["stage1"].hash != trial_steps(base).stages["stage1"].hash

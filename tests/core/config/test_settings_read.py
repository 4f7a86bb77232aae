"""No setting without an effect: every field of the trial config, the registry specs, the stage kinds and
the search block is read somewhere outside the config package and the tests."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[3]
# Where a field's effect can live: the library and the grid, not the config package that declares it.
READERS = ("core", "grid")
EXCLUDED = ("core/config",)

# Fields another change is wiring right now; each must be removed from here once it has its effect.
# Fields declared ahead of the code that reads them (none now: the encoders' resize and crop_pct are read by
# core.data.images.preprocess_for).
PENDING: set[str] = set()


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds (itself, list items, union members)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _config_fields(model: type[BaseModel], seen: set[type]) -> list[tuple[str, str]]:
    """(Class.field, field) for a model and every model below it."""
    if model in seen:
        return []
    seen.add(model)
    out = []
    for name, info in model.model_fields.items():
        out.append((f"{model.__name__}.{name}", name))
        for sub in _models_in(info.annotation):
            out += _config_fields(sub, seen)
    return out


def all_fields() -> list[tuple[str, str]]:
    from core.config import TrialConfig
    from core.models.llm import LLMSpec
    from core.models.vision import EncoderSpec
    from core.stages import StageKind
    from grid.search_spec import SearchConfig

    seen: set[type] = set()
    fields = _config_fields(TrialConfig, seen) + _config_fields(SearchConfig, seen)
    for spec in (LLMSpec, EncoderSpec, StageKind):
        fields += [(f"{spec.__name__}.{f.name}", f.name) for f in dataclasses.fields(spec)]
    return fields


def _called(node: ast.Call) -> str:
    fn = node.func
    return fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""


def _reads(tree: ast.AST) -> list[tuple[str, str | None, bool, bool]]:
    """(name, enclosing class, read through `self`, called) for every attribute or key read in a module:
    `x.name`, `getattr(x, "name")`, `x["name"]`, `x.get("name")`, `x.pop("name")`; `called` marks
    `x.name(...)`, a method (PIL's `image.resize(...)` is no read of a `resize` field)."""
    out: list[tuple[str, str | None, bool, bool]] = []

    def visit(node: ast.AST, owner: str | None) -> None:
        if isinstance(node, ast.ClassDef):
            owner = node.name
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            out.append((node.func.attr, owner, False, True))
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            is_self = isinstance(node.value, ast.Name) and node.value.id == "self"
            out.append((node.attr, owner, is_self, False))
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            out.append((str(node.slice.value), owner, False, False))
        elif isinstance(node, ast.Call) and node.args and _called(node) in ("getattr", "get", "pop"):
            key = node.args[1] if _called(node) == "getattr" and len(node.args) > 1 else node.args[0]
            if isinstance(key, ast.Constant):
                out.append((str(key.value), owner, False, False))
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.Call) and child is node.func and isinstance(child, ast.Attribute):
                visit(child.value, owner)  # the call's receiver; the method name is not a field read
                continue
            visit(child, owner)

    visit(tree, None)
    return out


def _is_validator(fn: ast.FunctionDef) -> bool:
    return fn.name == "__post_init__" or any("validator" in ast.unparse(d) for d in fn.decorator_list)


# Modules that declare the walked classes: their methods can carry a field's effect to the callers.
DECLARING = (
    "core/config",
    "core/models/llm.py",
    "core/models/vision.py",
    "core/stages.py",
    "grid/search_spec.py",
)


def declared_methods() -> dict[str, set[str]]:
    """field name -> the declaring classes' methods (validators aside) that read it as `self.<field>`:
    such a field is read when one of those methods is used outside the config package."""
    out: dict[str, set[str]] = {}
    paths = [p for d in DECLARING for p in ([ROOT / d] if d.endswith(".py") else (ROOT / d).glob("*.py"))]
    for path in paths:
        for cls in ast.walk(ast.parse(path.read_text())):
            if not isinstance(cls, ast.ClassDef):
                continue
            for fn in cls.body:
                if not isinstance(fn, ast.FunctionDef) or _is_validator(fn):
                    continue
                for sub in ast.walk(fn):
                    if (
                        isinstance(sub, ast.Attribute)
                        and isinstance(sub.value, ast.Name)
                        and sub.value.id == "self"
                    ):
                        out.setdefault(sub.attr, set()).add(fn.name)
    return out


def unread_fields() -> list[str]:
    """Qualified fields (Class.field) that nothing outside core/config and the tests reads. A read through
    `self` in the field's own class (a spec validating itself) does not count."""
    reads = [
        r
        for top in READERS
        for path in sorted((ROOT / top).rglob("*.py"))
        if not str(path.relative_to(ROOT)).startswith(EXCLUDED)
        for r in _reads(ast.parse(path.read_text()))
    ]
    used = {name for name, cls, _, _ in reads}
    methods = declared_methods()
    unread = []
    for qualified, name in all_fields():
        owner = qualified.split(".")[0]
        direct = any(n == name and not called and not (me and cls == owner) for n, cls, me, called in reads)
        through = any(m in used for m in methods.get(name, set()) if not m.startswith("__"))
        if not (direct or through):
            unread.append(qualified)
    return sorted(unread)


def test_every_setting_is_read_outside_the_config_package() -> None:
    unread = [q for q in unread_fields() if q not in PENDING]
    assert not unread, (
        f"fields nothing outside core/config and the tests reads (wire or remove them): {unread}"
    )


def test_the_pending_list_names_only_fields_still_unread() -> None:
    """Once issue 20 lands, its fields are read and must leave PENDING (the list cannot hide a field)."""
    fields = {q for q, _ in all_fields()}
    assert fields >= PENDING, sorted(PENDING - fields)
    assert set(unread_fields()) >= PENDING, "remove the now-read fields from PENDING"


def test_the_scan_sees_an_unread_field() -> None:
    """The scan itself: a field read only by its own class's validation is unread; a read elsewhere is not."""
    tree = ast.parse(
        "class EncoderSpec:\n    def check(self):\n        return self.resize\n"
        "def use(spec):\n    return spec.patch_size, spec.get('mean')\n"
    )
    reads = _reads(tree)
    assert ("resize", "EncoderSpec", True, False) in reads
    assert ("patch_size", None, False, False) in reads and ("mean", None, False, False) in reads
    assert ("resize", None, False, False) not in _reads(ast.parse("image.resize((2, 2))"))


@pytest.mark.slow  # over 4 s: outside the fast tier (just test-fast)
def test_joint_dim_is_checked_against_the_features_labels_are_scored_with() -> None:
    """EncoderSpec.joint_dim's effect: a registry entry whose joint width is wrong fails at the first
    joint features (SEA labels), naming the entry, instead of scoring words in a mismatched space."""
    import dataclasses

    import pytest
    import torch

    from core.models.encoder_loading import load_encoder

    tower = load_encoder("tiny-clip")
    pixels = torch.zeros(1, 3, tower.spec.image_size, tower.spec.image_size)
    assert tower.joint_patch_features(pixels).shape[-1] == tower.spec.joint_dim
    tower.spec = dataclasses.replace(tower.spec, joint_dim=tower.spec.joint_dim + 1)
    with pytest.raises(ValueError, match="joint_dim"):
        tower.joint_patch_features(pixels)

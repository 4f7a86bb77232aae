"""No import cycles between project modules: every import counts, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "grid")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _targets(node: ast.AST, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """The project modules an import statement runs (`from pkg import mod` names a module too)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the importer's package
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
        ]
    else:
        return set()
    return {n for n in names if n in modules and n != importer}


def _run_time_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, but those under `if TYPE_CHECKING:` (imports for annotations only, never run)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def imports_of(source: str, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """The project modules a module's source imports when it runs, anywhere in its body."""
    nodes = _run_time_nodes(ast.parse(source))
    return set().union(*(_targets(n, importer, is_package, modules) for n in nodes))


def import_graph() -> dict[str, set[str]]:
    """{module: the project modules it imports anywhere in its body}."""
    found = _project_modules()
    modules = set(found)
    return {
        name: imports_of(path.read_text(), name, path.name == "__init__.py", modules)
        for name, path in found.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_project_modules():
    assert cycles(import_graph()) == []


def test_no_cycles_between_core_packages():
    # core/evaluation and core/train, core/labels and the pipeline: one direction each.
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        graph.setdefault(package(module), set()).update(package(t) for t in targets)
    for module, targets in graph.items():
        targets.discard(module)
    assert cycles(graph) == []


def test_the_cycle_scan_sees_lazy_and_relative_imports_not_type_checking_ones():
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    modules = {"core.pipeline", "core.steps.step", "core.steps.runner", "grid.spec"}
    lazy = "def f():\n    from core.pipeline import trial_steps\n"
    assert imports_of(lazy, "core.train.stage", False, modules) == {"core.pipeline"}
    relative = "from . import step\nfrom .runner import run_step\n"
    assert imports_of(relative, "core.steps", True, modules) == {"core.steps.step", "core.steps.runner"}
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from grid.spec import X\n"
    assert imports_of(typing_only, "grid.expand", False, modules) == set()

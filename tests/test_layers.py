"""The import direction of docs/design.md ("Layers"): each layer imports only the layers below it.

Every module of stamp_onnx/ and passes/ is parsed (imports inside functions and under
TYPE_CHECKING count too) and each ``stamp_onnx...`` import is checked against the table.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# layer -> the layers it may import (itself included)
FOUNDATION = {"foundation"}
ALLOWED = {
    "foundation": FOUNDATION,
    "core": FOUNDATION | {"core"},
    "graph": FOUNDATION | {"core", "graph"},
    "passes": FOUNDATION | {"core", "graph", "passes"},
    "pipeline": FOUNDATION | {"core", "graph", "passes", "pipeline"},
    "targets": FOUNDATION | {"core", "graph", "passes", "pipeline", "targets"},
    "zoo": FOUNDATION | {"core", "graph", "zoo"},
    "evaluation": FOUNDATION | {"core", "graph", "pipeline", "targets", "zoo", "evaluation", "report"},
    "cli": FOUNDATION | {"core", "graph", "pipeline", "targets", "zoo", "evaluation", "report", "cli"},
}


def layer_of(module: str) -> str:
    """'stamp_onnx.graph.ops' -> 'graph'. Outside the passes, only the report the pipeline
    returns (stamp_onnx.passes.report) may be imported of the passes: the layer 'report'."""
    parts = module.split(".")
    if parts[0] != "stamp_onnx" or len(parts) == 1 or parts[1] in ("errors", "config"):
        return "foundation"
    if parts[1] == "passes" and parts[2:3] == ["report"]:
        return "report"
    return parts[1]


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted((ROOT / "stamp_onnx").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        found.append((".".join(p for p in rel.parts if p != "__init__"), path))
    for path in sorted((ROOT / "passes").glob("*.py")):
        found.append(("stamp_onnx.passes" + ("" if path.stem == "__init__" else f".{path.stem}"), path))
    return found


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in names if name == "stamp_onnx" or name.startswith("stamp_onnx.")]


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_follow_the_layers(module: str, path: Path) -> None:
    own = layer_of(module)
    own = "passes" if own == "report" else own
    bad = []
    for name in imports(path):
        target = layer_of(name)
        if target not in ALLOWED[own] and not (target == "report" and "passes" in ALLOWED[own]):
            bad.append(f"{name} ({target})")
    assert not bad, f"{module} ({own}) may import only {sorted(ALLOWED[own])}: {bad}"


def test_every_subpackage_has_a_layer() -> None:
    packages = {p.parent.name for p in (ROOT / "stamp_onnx").glob("*/__init__.py")}
    assert packages - {"native"} == set(ALLOWED) - {"foundation", "passes", "pipeline"}
    assert {layer_of(m) for m, _ in modules()} <= set(ALLOWED) | {"report"}

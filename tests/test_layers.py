"""Imports run one way: a module imports only from lower layers or from its own component.

The layers are those of ``docs/architecture.md`` ("Layers"), lowest first. Every import of a
``curate`` module counts, at module level or inside a function (a lazy import is still a
dependency). ``curate/__init__.py`` is the public facade above everything (``curate.score``,
``curate.register_configs``, imported lazily); ``from curate import __version__`` reads the
facade's constant and is allowed everywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# Lowest first. Components of one layer may not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("curate.schema", "curate.limits", "curate.errors"),
    ("curate.config", "curate.models", "curate.runtime", "curate.guard", "curate.io"),
    ("curate.stages", "curate.query"),
    ("curate.scoring", "curate.filters", "curate.train"),
    ("curate.evaluate", "curate.report"),
    ("curate.cli",),
]
PACKAGE = REPO / "curate"


def component(module: str) -> str | None:
    """The component (a ``LAYERS`` entry) that ``module`` belongs to."""
    for layer in LAYERS:
        for name in layer:
            if module == name or module.startswith(name + "."):
                return name
    return None


def layer_of(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def curate_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a curate module in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "curate"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "curate":
            if node.module == "curate":  # `from curate import schema as S` or `from curate import __version__`
                found += [(node.lineno, f"curate.{a.name}") for a in node.names if not a.name.startswith("__")]
            else:
                found.append((node.lineno, node.module))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_module_has_a_layer():
    assert [module_name(p) for p in MODULES if component(module_name(p)) is None] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_run_one_way(path):
    me = component(module_name(path))
    bad = []
    for line, target in curate_imports(path):
        other = component(target)
        if other is None or other == me:
            continue
        if layer_of(other) >= layer_of(me):
            bad.append(f"{path.relative_to(REPO)}:{line} imports {target} (layer {layer_of(other)}) "
                       f"from layer {layer_of(me)}")
    assert bad == []


def test_the_check_sees_a_backward_import(tmp_path):
    """The checker itself: a function-level import of a higher layer is found."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from curate.scoring.run import score\n    from curate import schema as S\n")
    assert curate_imports(src) == [(2, "curate.scoring.run"), (3, "curate.schema")]
    assert layer_of(component("curate.scoring.run")) > layer_of(component("curate.io.shards"))


def test_the_architecture_document_names_every_component():
    doc = (REPO / "docs" / "architecture.md").read_text()
    missing = [name for layer in LAYERS for name in layer if f"`{name}`" not in doc]
    assert missing == []

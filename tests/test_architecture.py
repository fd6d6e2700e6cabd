"""The package's shape, read from the source: layers whose arrows only go down, no import
circle, no private name used across modules (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import graphlib
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "radflow"

# Bottom to top; a module may import from its own folder and from any layer below it.
LAYERS = ("core", "data", "learning", "evaluation", "explain", "report")
RANK = {"core": 0, "data": 1, "learning": 2, "evaluation": 3, "explain": 3, "report": 4}
EDGE = {"radflow": -1, "radflow.cli": 5}  # the package root (version, modalities), the CLI


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    names: tuple[str, ...]  # names taken from it ('from x import a, b'), empty for 'import x'
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every radflow import in the file, at module level or inside functions; `from pkg import
    mod` counts as an import of pkg.mod."""
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "radflow":
                    found.append(Import(name, alias.name, (), node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "radflow":
                continue
            plain = []
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in known:
                    found.append(Import(name, sub, (), node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Import(name, node.module, tuple(plain), node.lineno))
    return found


def all_imports() -> list[Import]:
    mods = modules()
    return [imp for name, path in mods.items() for imp in imports(name, path, set(mods))]


def rank(module: str) -> float:
    if module in EDGE:
        return EDGE[module]
    layer = module.split(".")[1]
    return RANK[layer]


def test_every_module_lives_in_a_layer_folder() -> None:
    loose = [
        name
        for name in modules()
        if name not in EDGE and (name.count(".") < 1 or name.split(".")[1] not in LAYERS)
    ]
    assert not loose, f"modules outside the layer folders {LAYERS}: {loose}"


def test_imports_only_point_down_the_layers() -> None:
    upward = []
    for imp in all_imports():
        same_folder = imp.source.rsplit(".", 1)[0] == imp.target.rsplit(".", 1)[0]
        if imp.target == "radflow" or same_folder:
            continue
        if rank(imp.target) >= rank(imp.source):
            upward.append(f"{imp.source}:{imp.line} imports {imp.target}")
    assert not upward, "imports that do not point down a layer:\n" + "\n".join(upward)


def test_no_module_imports_another_modules_private_names() -> None:
    private = [
        f"{imp.source}:{imp.line} takes {name} from {imp.target}"
        for imp in all_imports()
        for name in imp.names
        if name.startswith("_") and not name.startswith("__")
    ]
    private += attribute_uses_of_private_names()
    assert not private, "private names used across modules:\n" + "\n".join(private)


def attribute_uses_of_private_names() -> list[str]:
    """`mod._name` where mod is an imported radflow module."""
    found = []
    mods = modules()
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in mods:
                        aliases.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_the_modules_import_each_other_without_a_circle() -> None:
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for imp in all_imports():
        if imp.target in graph and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


def test_the_checks_see_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """The checks above can fail: a made-up pair of modules trips both."""
    graph = {"radflow.core.a": {"radflow.learning.b"}, "radflow.learning.b": {"radflow.core.a"}}
    with pytest.raises(graphlib.CycleError):
        tuple(graphlib.TopologicalSorter(graph).static_order())
    up = tmp_path / "a.py"
    up.write_text(
        "def f():\n    from radflow.learning import models\n    from radflow.core import _x\n"
    )
    found = imports("radflow.core.a", up, {"radflow.learning.models"})
    assert rank(found[0].target) > rank("radflow.core.a")
    assert found[1].names == ("_x",)

"""Which code each pipeline stage runs: its modules, read from the import graph, and the
templates and schema they read. Both orchestrators list these files as the stage's
dependencies and every artifact records their digest, so a change to any of them reruns
exactly the stages that run it.

Standard library only: the Snakefile loads this file by path, before (and without) radflow
being importable, as under `snakemake --use-conda`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "radflow"
PACKAGE_DIR = Path(__file__).resolve().parents[1]

# The `radflow` subcommand each stage runs (Snakemake rule and DVC stage names).
STAGE_COMMANDS = {
    "demo": "demo",
    "ingest": "ingest",
    "anonymise": "anonymise",
    "preprocess": "preprocess",
    "split": "split",
    "train_classifier": "train",
    "train_segmenter": "train",
    "evaluate": "evaluate",
    "explain": "explain",
    "report": "report",
    "report_index": "report",
}
# `radflow train --task` imports one of these two (cli.cmd_train): each train stage runs its
# own and not the other, unless something else imports it.
TASK_MODULES = {
    "train_classifier": "radflow.learning.classifier",
    "train_segmenter": "radflow.learning.segmentation",
}
# Files other than modules that a module reads at run time, relative to the package.
# tests/test_cache.py fails when a file in the package is neither a module nor listed here.
MODULE_DATA = {
    "radflow.core.params": ("core/schemas/params.schema.yaml",),
    "radflow.report.pages": ("report/templates",),
}


def module_path(name: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The file of module `name` (a package's __init__.py), or None when it is not ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = package_dir.joinpath(*name.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _parse(path: Path) -> ast.Module:
    """path's syntax tree, parsed once per version of the file (the Snakefile asks for the
    code of every stage, and the stages share most of their modules)."""
    st = path.stat()
    return _parse_version(str(path), st.st_mtime_ns, st.st_size)


@functools.cache
def _parse_version(path: str, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)


def _imported(
    tree: ast.AST, module: str, is_package: bool, package_dir: Path = PACKAGE_DIR
) -> set[str]:
    """Every radflow module an import statement anywhere in tree names (a function's lazy
    imports too), with `from pkg import name` resolved to the submodule when it is one."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if module_path(name, package_dir) is not None}


def imports_of(name: str, package_dir: Path = PACKAGE_DIR) -> set[str]:
    path = module_path(name, package_dir)
    if path is None:
        return set()
    st = path.stat()
    return set(_module_imports(name, str(path), st.st_mtime_ns, st.st_size, package_dir))


@functools.cache
def _module_imports(
    name: str, path: str, mtime_ns: int, size: int, package_dir: Path
) -> frozenset[str]:
    tree = _parse_version(path, mtime_ns, size)
    return frozenset(_imported(tree, name, path.endswith("__init__.py"), package_dir))


def closure(roots: Iterable[str], package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The modules roots import, transitively, with the packages Python runs on the way."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or module_path(name, package_dir) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent __init__ files
        todo += sorted(imports_of(name, package_dir))
    return seen


def _cli_functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def _called_locals(func: ast.FunctionDef, local: dict[str, ast.FunctionDef]) -> set[str]:
    """The cli functions func calls, transitively (helpers like _page_context)."""
    seen: set[str] = set()
    todo = [func.name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(local[name]):
            if isinstance(node, ast.Name) and node.id in local:
                todo.append(node.id)
    return seen


def stage_modules(stage: str, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The radflow modules `radflow <command>` runs for this stage."""
    if stage not in STAGE_COMMANDS:
        raise KeyError(f"unknown stage {stage!r}: one of {', '.join(STAGE_COMMANDS)}")
    tree = _parse(package_dir / "cli.py")
    local = _cli_functions(tree)
    body = [node for node in tree.body if not isinstance(node, ast.FunctionDef)]
    roots = _imported(ast.Module(body=body, type_ignores=[]), "radflow.cli", False, package_dir)
    for name in _called_locals(local[f"cmd_{STAGE_COMMANDS[stage]}"], local):
        roots |= _imported(local[name], "radflow.cli", False, package_dir)
    roots -= {module for other, module in TASK_MODULES.items() if other != stage}
    # cli.py itself, but only the imports of the functions this stage calls
    return closure(roots, package_dir) | {"radflow.cli"}


def stage_files(stage: str, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files of a stage's code, modules then data, as paths in the package."""
    modules = stage_modules(stage, package_dir)
    files = {module_path(name, package_dir) for name in modules}
    for name in modules:
        files |= {package_dir / rel for rel in MODULE_DATA.get(name, ())}
    return sorted(files)  # type: ignore[arg-type]


def repo_paths(stage: str, repo: Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """The stage's code as paths relative to the repository root, symlinks resolved (the
    schema lives in workflow/schemas/), as the orchestrators list dependencies."""
    root = repo.resolve()
    return sorted(str(path.resolve().relative_to(root)) for path in stage_files(stage, package_dir))


def _walk(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return [path]


def digest(stage: str, package_dir: Path = PACKAGE_DIR) -> str:
    """SHA-256 over the stage's code files, named relative to the package: the same in a
    checkout and in an installed copy. Docstring and comment edits change it too."""
    h = hashlib.sha256()
    for top in stage_files(stage, package_dir):
        for path in _walk(top):
            h.update(str(path.relative_to(package_dir)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()

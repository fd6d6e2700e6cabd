"""Rewrite the code deps of every stage in dvc.yaml from the import graph.

    python workflow/scripts/sync_code_deps.py     # from the repository root

Each stage's code block starts with a `# code:` comment; the lines that follow it (paths under
src/radflow/ and workflow/schemas/) are replaced by radflow.core.codegraph.repo_paths(stage).
The Snakefile computes the same lists itself; tests/test_workflow.py fails when dvc.yaml
differs, and this script is how to bring it back in line.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from radflow.core import codegraph  # noqa: E402

STAGE = re.compile(r"^  (\w+):\s*$")
CODE = re.compile(r"^\s+(# code: .*|- (src/radflow\S*|workflow/schemas/\S*))\s*$")


def sync(text: str) -> str:
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage, i = None, 0
    while i < len(lines):
        if match := STAGE.match(lines[i]):
            stage = match[1]
        if CODE.match(lines[i]) and stage in codegraph.STAGE_COMMANDS:
            indent = re.match(r"^(\s+)", lines[i])[1]
            while i < len(lines) and CODE.match(lines[i]):
                i += 1
            command = codegraph.STAGE_COMMANDS[stage]
            out.append(f"{indent}# code: the files `radflow {command}` runs (codegraph)\n")
            out += [f"{indent}- {path}\n" for path in codegraph.repo_paths(stage, REPO)]
            continue
        out.append(lines[i])
        i += 1
    return "".join(out)


if __name__ == "__main__":
    path = REPO / "dvc.yaml"
    before = path.read_text()
    after = sync(before)
    path.write_text(after)
    print("dvc.yaml: code deps " + ("updated" if after != before else "already in line"))

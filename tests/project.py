"""A user's checkout for the end-to-end tests: a real `git clone` of this working tree.

DVC behaves differently in a git repository than in a folder made with `dvc init --no-scm`
(file links, `dvc status`, experiments), so the tests run where users run: the tracked and
untracked-but-not-ignored files of the checkout are committed into a scratch repository, which
is then cloned. The clone's params.yaml holds the TINY values, committed, so the clone is
clean the way a user's fresh clone is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from radflow.core.params import merge

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small enough for a full demo run in about two minutes on 2 cores.
TINY = {
    "demo": {
        "patients_per_modality": 12,
        "max_studies_per_patient": 2,
        "images_per_study": 2,
        "image_size": 96,
        "lesion_fraction": 0.5,
    },
    "preprocess": {"image_size": 64},
    "split": {"val_fraction": 0.25, "test_fraction": 0.25},
    "train": {
        "classifier": {"epochs": 2, "batch_size": 16},
        "segmenter": {"epochs": 2, "batch_size": 8, "channels": [8, 16, 32]},
    },
    "evaluate": {"bootstrap_samples": 50},
    "explain": {"samples": 2, "methods": ["gradcam", "saliency"]},
}

GIT_ID = {
    "GIT_AUTHOR_NAME": "radflow tests",
    "GIT_AUTHOR_EMAIL": "tests@radflow.invalid",
    "GIT_COMMITTER_NAME": "radflow tests",
    "GIT_COMMITTER_EMAIL": "tests@radflow.invalid",
}


def env(project: Path | None = None) -> dict[str, str]:
    """The running venv first on PATH; the clone's own src/ first on sys.path, so a module
    edited in the clone is the code its stages run."""
    out = dict(os.environ) | GIT_ID | {"HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    out["PATH"] = os.pathsep.join([str(BIN), out.get("PATH", "")])
    for name in ("RADFLOW_PSEUDONYM_KEY", "RADFLOW_OVERLAY", "RADFLOW_PROFILE"):
        out.pop(name, None)
    if project is not None:
        out["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(project / "src"), out.get("PYTHONPATH", "")) if p
        )
    return out


def run(
    cmd: list[str],
    cwd: Path,
    check: bool = True,
    timeout: int = 3000,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a tool of the venv (`snakemake`, `dvc`, `radflow`, `git`) in cwd."""
    tool = BIN / cmd[0]
    argv = [str(tool) if tool.exists() else cmd[0], *cmd[1:]]
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=env(cwd) | (extra_env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def checkout_files() -> list[str]:
    """What a commit of this checkout would hold: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted(p for p in listed.split("\0") if p and os.path.lexists(REPO / p))


def make_origin(dest: Path, params: dict | None = TINY) -> Path:
    """A git repository holding this checkout as one commit, params.yaml merged with params."""
    dest.mkdir(parents=True)
    for rel in checkout_files():
        src, out = REPO / rel, dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)
    if params:
        base = yaml.safe_load((dest / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(merge(base, params), sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "radflow under test"], dest)
    return dest


def clone(origin: Path, dest: Path) -> Path:
    """A fresh `git clone`, as a colleague makes one."""
    run(["git", "clone", "-q", str(origin), str(dest)], origin.parent)
    return dest


def copy_project(src: Path, dest: Path) -> Path:
    """A copy of a built clone that keeps every modification time (its own mutations then
    leave the original alone)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def edit_params(project: Path, override: dict) -> None:
    """What a user does: edit params.yaml (not committed)."""
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(merge(yaml.safe_load(path.read_text()), override),
                                   sort_keys=False))  # fmt: skip

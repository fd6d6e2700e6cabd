"""Walking an input folder: every entry is a file to read, a hidden file passed over, or a
refusal with its reason; nothing under the folder goes unaccounted.

Refused: anything that is not a regular file (a FIFO would block the reader forever, a
socket or device is no image), a symbolic link whose target lies outside `within` (the
dataset's data.root: a link must not make radflow read what the folder's owner did not put
there), and a name that is not valid UTF-8 (it could not be written to the CSV tables).
Links to files inside `within` are followed; links to folders are not (a folder would be
walked twice, or lie outside).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Walk:
    files: list[Path] = field(default_factory=list)
    hidden: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (shown path, reason)


def shown(path: Path | str) -> str:
    """A path as text that any CSV can hold: undecodable bytes as \\x escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_hidden(path: Path, root: Path) -> bool:
    """Dot files and folders (.DS_Store, .snakemake_timestamp, .git) are not data."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def inside(path: Path, within: Path) -> bool:
    """Whether path, with every link resolved, lies under within (itself resolved)."""
    target, base = path.resolve(), within.resolve()
    return target == base or base in target.parents


def walk(root: Path, within: Path | None = None, exclude: frozenset[Path] = frozenset()) -> Walk:
    """Every entry under root, sorted by path; `exclude` (resolved paths: the labels CSV,
    masks) is left out silently, since another part of the stage accounts for it."""
    within = within or root
    out = Walk()
    for path in sorted(_entries(root)):
        if is_hidden(path, root):
            out.hidden += 1
            continue
        reason = _refusal(path, within)
        if reason:
            out.refused.append((shown(path), reason))
        elif path.resolve() not in exclude:
            out.files.append(path)
    return out


def _entries(root: Path) -> list[Path]:
    """Every non-directory under root; directory links inside the walk are not descended
    (their files are reached where they lie), links to folders outside are returned."""
    found = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        for name in list(dirs):
            if (base / name).is_symlink():
                dirs.remove(name)
                found.append(base / name)
        found.extend(base / name for name in files)
    return found


def _refusal(path: Path, within: Path) -> str:
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return "the file name is not valid UTF-8: rename the file"
    if path.is_symlink() and not inside(path, within):
        return "a symbolic link to outside data.root: copy the file in, or widen data.root"
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot be read: {exc.strerror or type(exc).__name__}"
    if stat.S_ISDIR(mode):
        return "a symbolic link to a folder: folder links are not followed; move the files in"
    if not stat.S_ISREG(mode):
        return "not a regular file (a pipe, socket or device): not an image"
    return ""

"""Which other processes run a program in a folder (Linux /proc), for the Snakefile to tell
a killed run's leftover locks from a live run's. Standard library only: the Snakefile loads
it by path, as it loads codegraph."""

from __future__ import annotations

import os

PROC = os.path.join(os.sep, "proc")


def ancestors(pid: int) -> set[int]:
    """pid and its parents (the shell, pytest or make that started it)."""
    found: set[int] = set()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            with open(os.path.join(PROC, str(pid), "stat")) as fh:
                pid = int(fh.read().rpartition(")")[2].split()[1])  # field 4: the parent
        except (OSError, ValueError, IndexError):
            break
    return found


def others_running(program: bytes, folder: str) -> bool | None:
    """Whether a process other than this one and its parents runs `program` (a word of its
    command line) with `folder` as its working directory; None where /proc cannot say."""
    if not os.path.isdir(os.path.join(PROC, "self")):
        return None
    here, mine = os.path.realpath(folder), ancestors(os.getpid())
    for entry in os.listdir(PROC):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            with open(os.path.join(PROC, entry, "cmdline"), "rb") as fh:
                if program not in fh.read():
                    continue
            if os.path.realpath(os.path.join(PROC, entry, "cwd")) == here:
                return True
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return False

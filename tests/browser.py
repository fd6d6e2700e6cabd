"""Headless Chromium as the judge of the report pages: the DOM after the load event, every
console message, and the page's own load time, with no WebDriver in between.

``--dump-dom`` returns the DOM after load and ``--enable-logging=stderr`` prints each console
message (console.log/error and uncaught exceptions alike) as a ``CONSOLE`` line. The pages'
inline script sets ``data-ready`` and ``data-render-ms`` (navigation start to load) on
``<html>``. Used by the browser tests and benchmarks/report_render.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


@dataclass(frozen=True)
class PageLoad:
    dom: str
    console: list[str]
    ready: bool  # the page's script ran to its end
    render_ms: int | None  # navigation start to load, as the page measured it
    seconds: float  # wall time including the browser's start


def find_chromium() -> str | None:
    """``RADFLOW_CHROMIUM``, else the usual Chromium and Chrome names on PATH."""
    names = (os.environ.get("RADFLOW_CHROMIUM"), "chromium", "chromium-browser", "google-chrome")
    return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


def _run(chromium: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [chromium, *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=90, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{chromium} failed on {page}: {done.stderr[-2000:]}")
    return done


def load(chromium: str, page: Path, profile: Path) -> PageLoad:
    """One fresh headless load of page (profile: a scratch user-data folder)."""
    start = time.perf_counter()
    done = _run(chromium, page, profile, "--enable-logging=stderr", "--v=0", "--dump-dom")
    seconds = time.perf_counter() - start
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    tag = re.search(r"<html[^>]*>", done.stdout)
    html_tag = tag.group(0) if tag else ""
    render = re.search(r'data-render-ms="(\d+)"', html_tag)
    return PageLoad(
        done.stdout,
        console,
        'data-ready="1"' in html_tag,
        int(render.group(1)) if render else None,
        seconds,
    )


def screenshot(chromium: str, page: Path, out: Path, profile: Path, height: int = 4000) -> Path:
    _run(chromium, page, profile, f"--window-size=1280,{height}", f"--screenshot={out}")
    if not out.exists():
        raise RuntimeError(f"{chromium} wrote no screenshot of {page}")
    return out

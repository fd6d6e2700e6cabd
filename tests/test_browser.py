"""The report pages in a real browser: headless Chromium loads each page from synthetic inputs.

Chromium itself is the harness (no WebDriver): ``--dump-dom`` returns the DOM after the load
event, and ``--enable-logging=stderr`` prints every console message (``CONSOLE`` lines:
console.log/error and uncaught exceptions alike, so a page must log nothing). The pages set
``data-ready`` and ``data-render-ms`` (navigation start to load) on ``<html>`` from their
own inline script. A screenshot of each page is saved under the pytest tmp dir.

`make test` installs Debian's ``chromium`` with apt-get when it runs as root and the browser
is missing; elsewhere these tests skip with the reason. ``RADFLOW_CHROMIUM`` names another
binary.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_report import MALICIOUS, _cards, _context

from radflow import report as rp

RENDER_BUDGET_MS = 2000


def _chromium() -> str | None:
    for name in (
        os.environ.get("RADFLOW_CHROMIUM"),
        "chromium",
        "chromium-browser",
        "google-chrome",
    ):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (apt-get install chromium, or set RADFLOW_CHROMIUM); "
    "`make test` installs it when run as root",
)


def _run(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *extra,
        page.as_uri(),
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=90, check=False)


def _load(page: Path, tmp: Path) -> tuple[str, list[str], float]:
    """(DOM after load, console lines, wall seconds) for one fresh headless load."""
    start = time.perf_counter()
    done = _run(page, tmp / "profile-dom", "--enable-logging=stderr", "--v=0", "--dump-dom")
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return done.stdout, console, seconds


def _screenshot(page: Path, tmp: Path) -> Path:
    shot = tmp / f"{page.stem}.png"
    done = _run(page, tmp / "profile-shot", "--window-size=1280,4000", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
    return shot


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index and a modality page (with a hostile label) rendered from synthetic inputs."""
    folder = tmp_path_factory.mktemp("pages")
    context = _context(["benign", MALICIOUS])
    (folder / "mri.html").write_text(rp.render_modality_page(context), encoding="utf-8")
    (folder / "index.html").write_text(rp.render_index(_cards(), {}), encoding="utf-8")
    return folder


@pytest.mark.parametrize(
    "name, selectors",
    [
        (
            "mri.html",
            [
                "metrics-table",
                "confusion-table",
                "roc-figure",
                "pr-figure",
                "calibration-figure",
                "subgroup-table",
                "misclassified-table",
                "case-browser",
                "faithfulness-table",
                "data-hashes",
                "versions-table",
                "footer",
            ],
        ),
        ("index.html", ["card-mri", "card-mri-segmenter", "card-ct", "card-xray", "footer"]),
    ],
)
def test_page_renders_without_console_errors_fast(name, selectors, pages, tmp_path):
    dom, console, seconds = _load(pages / name, tmp_path)
    assert console == [], console
    html_tag = re.search(r"<html[^>]*>", dom).group(0)
    assert 'data-ready="1"' in html_tag, "the page's script did not run to the end"
    render_ms = int(re.search(r'data-render-ms="(\d+)"', html_tag).group(1))
    assert render_ms < RENDER_BUDGET_MS, f"{name} took {render_ms} ms to load"
    for element in selectors:
        assert f'id="{element}"' in dom, element
    assert "<script>alert(1)" not in dom
    shot = _screenshot(pages / name, tmp_path)
    print(f"{name}: load {render_ms} ms in page, {seconds:.2f} s with browser start; {shot}")


def test_sorting_and_case_filter_run_in_the_browser(pages, tmp_path):
    """A tiny driver script clicks a header and filters the cases, then writes the result."""
    page = (pages / "mri.html").read_text(encoding="utf-8")
    driver = """<script>
window.addEventListener("load", function () {
  var table = document.getElementById("versions-table");
  var header = table.tHead.rows[0].cells[0];
  header.click(); header.click();
  var first = table.tBodies[0].rows[0].cells[0].textContent;
  var outcome = document.getElementById("case-filter-outcome");
  outcome.value = "incorrect"; outcome.dispatchEvent(new Event("change"));
  document.body.setAttribute("data-first", first);
  document.body.setAttribute("data-sort", header.getAttribute("aria-sort"));
  document.body.setAttribute("data-shown", document.getElementById("case-count").textContent);
});
</script></body>"""
    probe = pages / "probe.html"
    probe.write_text(page.replace("</body>", driver), encoding="utf-8")
    dom, console, _ = _load(probe, tmp_path)
    assert console == [], console
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-sort="descending"' in body
    assert 'data-first="torch"' in body  # versions: timm, torch -> descending: torch first
    assert 'data-shown="1"' in body  # one misclassified case in the synthetic browser

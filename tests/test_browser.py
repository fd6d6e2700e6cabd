"""The report pages in a real browser: headless Chromium loads each page from synthetic inputs.

radflow.browser drives Chromium itself (no WebDriver): the DOM after load, every console
message (a page must log nothing), and whether the page's own script ran to its end. A
screenshot of each page is saved under the pytest tmp dir. Load time is a target, not a
test: benchmarks/report_render.py measures it on real report pages.

`make test` installs Debian's ``chromium`` with apt-get when it runs as root and the browser
is missing; elsewhere these tests skip with the reason. ``RADFLOW_CHROMIUM`` names another
binary.
"""

from __future__ import annotations

import re
from pathlib import Path

import browser
import pytest
from test_report import MALICIOUS, _cards, _context

from radflow.report.pages import render_index, render_modality_page

CHROMIUM = browser.find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium found (apt-get install chromium, or set RADFLOW_CHROMIUM); "
    "`make test` installs it when run as root",
)


def _load(page: Path, tmp: Path) -> browser.PageLoad:
    loaded = browser.load(CHROMIUM, page, tmp / "profile-dom")
    assert loaded.console == [], loaded.console
    return loaded


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index and a modality page (with a hostile label) rendered from synthetic inputs."""
    folder = tmp_path_factory.mktemp("pages")
    context = _context(["benign", MALICIOUS])
    (folder / "mri.html").write_text(render_modality_page(context), encoding="utf-8")
    (folder / "index.html").write_text(render_index(_cards(), {}), encoding="utf-8")
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
def test_page_renders_its_key_elements_without_console_errors(name, selectors, pages, tmp_path):
    loaded = _load(pages / name, tmp_path)
    assert loaded.ready, "the page's script did not run to the end"
    assert loaded.render_ms is not None, "the page did not record its load time"
    for element in selectors:
        assert f'id="{element}"' in loaded.dom, element
    assert "<script>alert(1)" not in loaded.dom
    shot = browser.screenshot(CHROMIUM, pages / name, tmp_path / f"{name}.png", tmp_path / "shot")
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
    print(f"{name}: load {loaded.render_ms} ms in page, {loaded.seconds:.2f} s with start; {shot}")


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
    body = re.search(r"<body[^>]*>", _load(probe, tmp_path).dom).group(0)
    assert 'data-sort="descending"' in body
    assert 'data-first="torch"' in body  # versions: timm, torch -> descending: torch first
    assert 'data-shown="1"' in body  # one misclassified case in the synthetic browser

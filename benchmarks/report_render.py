"""Benchmark: how fast each HTML report page loads in headless Chromium (target: under 2 s).

Loads every page under a reports folder (a finished run's ``reports/``) several times, each
in a fresh browser profile, and prints the page's own navigation-start-to-load time
(``data-render-ms``, set by its inline script), the wall time with the browser's start, the
page size, and any console messages.

    .venv/bin/python benchmarks/report_render.py --reports <run>/reports --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import browser  # noqa: E402  (the Chromium harness lives with the tests)


def measure(chromium: str, page: Path, repeats: int) -> dict[str, object]:
    loads = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="radflow-chromium-") as profile:
            loads.append(browser.load(chromium, page, Path(profile)))
    renders = [load.render_ms for load in loads if load.render_ms is not None]
    return {
        "page": page.name,
        "KiB": round(page.stat().st_size / 1024),
        "render_ms_median": statistics.median(renders) if renders else None,
        "render_ms_max": max(renders) if renders else None,
        "wall_s_median": round(statistics.median(load.seconds for load in loads), 2),
        "ready": all(load.ready for load in loads),
        "console": sum(len(load.console) for load in loads),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=Path, required=True, help="a run's reports folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    chromium = browser.find_chromium()
    if chromium is None:
        sys.exit("no Chromium found: apt-get install chromium, or set RADFLOW_CHROMIUM")
    pages = sorted(args.reports.rglob("*.html"))
    if not pages:
        sys.exit(f"no .html pages under {args.reports}")
    table = pd.DataFrame([measure(chromium, page, args.repeats) for page in pages])
    print(table.to_string(index=False))
    slowest = table["render_ms_max"].max()
    print(f"slowest load {slowest} ms over {len(pages)} pages x {args.repeats} (target < 2000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

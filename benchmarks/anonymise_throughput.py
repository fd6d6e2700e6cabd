"""De-identification throughput: radflow vs a plain pydicom read+write loop vs dicognito.

All three run in one process on the same files: the pydicom and pydicom-data test corpora
(listed from the installed package folders), restricted to the files radflow writes (it
quarantines burned-in candidates, DICOMDIR, files without PatientID and broken files, so
timing those would compare unequal work), replicated to about --files inputs. Each tool
reads every file from disk and writes its output to disk. Leaks: original names, dates,
IDs and instance UIDs (the test suite's definition) found anywhere in an output's bytes.

dicognito is a benchmark-only comparison, not a project dependency; install it with

    .venv/bin/pip install dicognito

Run:  .venv/bin/python benchmarks/anonymise_throughput.py [--files 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import data_store
import pydicom

from radflow.data import anonymise as an

KEY = b"benchmark-key-not-secret-0123456789"
PYDICOM_DIR = Path(pydicom.data.__file__).parent / "test_files"
DATA_STORE_DIR = Path(data_store.__file__).parent / "data"


def corpus() -> list[Path]:
    files = [p for p in PYDICOM_DIR.rglob("*") if p.is_file()]
    return sorted(files + [p for p in DATA_STORE_DIR.iterdir() if p.is_file()])


def usable(paths: list[Path]) -> list[Path]:
    """Files radflow de-identifies (rather than quarantines)."""
    keep = []
    for path in paths:
        try:
            an._deidentified_bytes(path, KEY, None, an.default_settings())
        except an._Quarantine:
            continue
        keep.append(path)
    return keep


def identifying(ds: pydicom.Dataset) -> set[bytes]:
    keywords = {"PatientID", "InstitutionName", "StationName", "DeviceSerialNumber",
                "StudyID", "AccessionNumber", "InstitutionalDepartmentName"}  # fmt: skip
    values = set()
    for elem in [*ds.iterall(), *ds.file_meta]:
        if elem.VR in ("SQ", "OB", "OW", "UN") or elem.tag.is_private:
            continue
        text = str(elem.value if elem.value is not None else "").strip()
        instance_uid = (
            elem.VR == "UI"
            and not text.startswith("1.2.840.10008.")
            and not elem.keyword.endswith("ClassUID")
        )
        if len(text) >= 5 and (
            elem.VR in ("PN", "DA", "DT") or instance_uid or elem.keyword in keywords
        ):
            values.add(text.encode())
    return values


def leaks(pairs: list[tuple[Path, Path]]) -> int:
    """Identifying values of the original found in the output and in no kept element."""
    count = 0
    for source, output in pairs:
        after = pydicom.dcmread(output)
        kept = [str(e.value) for e in [*after.iterall(), *after.file_meta] if e.VR != "SQ"]
        data = output.read_bytes()
        for value in identifying(pydicom.dcmread(source)):
            if value in data and not any(value.decode() in k for k in kept):
                count += 1
    return count


def run_plain(sources: list[Path], out: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for i, src in enumerate(sources):
        ds = pydicom.dcmread(src)
        dest = out / f"{i}.dcm"
        pydicom.dcmwrite(dest, ds, enforce_file_format=True)
        pairs.append((src, dest))
    return pairs


def run_radflow(sources: list[Path], out: Path) -> list[tuple[Path, Path]]:
    settings = an.Settings()
    pairs = []
    for i, src in enumerate(sources):
        data, _ = an._deidentified_bytes(src, KEY, None, settings)
        dest = out / f"{i}.dcm"
        an._store_bytes(dest, data)  # temp name then rename, as the stage does
        pairs.append((src, dest))
    return pairs


def run_dicognito(sources: list[Path], out: Path) -> list[tuple[Path, Path]]:
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer(seed="benchmark")
    pairs = []
    for i, src in enumerate(sources):
        ds = pydicom.dcmread(src)
        anonymizer.anonymize(ds)
        dest = out / f"{i}.dcm"
        pydicom.dcmwrite(dest, ds, enforce_file_format=True)
        pairs.append((src, dest))
    return pairs


def timed(
    tools: dict[str, Callable[[list[Path], Path], list[tuple[Path, Path]]]],
    sources: list[Path],
    repeats: int,
) -> dict[str, tuple[float, int]]:
    """Best rate (files/s) and leaked values per tool.

    The tools take turns within each repeat (A B C, A B C, ...), so a change in the load
    of a shared machine affects all of them alike and the ratios of one run stay fair.
    """
    best = dict.fromkeys(tools, float("inf"))
    leaked = dict.fromkeys(tools, 0)
    for _ in range(repeats):
        for name, fn in tools.items():
            out = Path(tempfile.mkdtemp(prefix="rf-bench-"))
            try:
                start = time.perf_counter()
                pairs = fn(sources, out)
                best[name] = min(best[name], time.perf_counter() - start)
                # one check per distinct input; the most found in any repeat
                leaked[name] = max(leaked[name], leaks(pairs[: len(set(sources))]))
            finally:
                shutil.rmtree(out)
    return {name: (len(sources) / best[name], leaked[name]) for name in tools}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500, help="replicate inputs to about N")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs per tool")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    distinct = usable(corpus())
    sources = [distinct[i % len(distinct)] for i in range(max(args.files, len(distinct)))]
    tools: dict[str, Callable] = {"pydicom read+write (limit)": run_plain, "radflow": run_radflow}
    try:
        import dicognito  # noqa: F401

        tools["dicognito"] = run_dicognito
    except ImportError:
        print("dicognito not installed (.venv/bin/pip install dicognito); skipped", file=sys.stderr)
    results = timed(tools, sources, args.repeats)
    limit = results["pydicom read+write (limit)"][0]
    print(f"{len(sources)} files ({len(distinct)} distinct) from pydicom + pydicom-data, "
          f"best of {args.repeats}\n")  # fmt: skip
    print("| tool | files/s | vs pydicom loop | vs dicognito | leaked values |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rate_dicognito = results.get("dicognito", (float("nan"), 0))[0]
    for name, (rate, leaked) in results.items():
        leak_text = "n/a (no de-identification)" if name.startswith("pydicom") else str(leaked)
        print(
            f"| {name} | {rate:.0f} | {rate / limit:.2f}x | {rate / rate_dicognito:.2f}x "
            f"| {leak_text} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

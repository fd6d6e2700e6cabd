"""Benchmark: one bad file in ten thousand. A folder of N good CT DICOM slices and one
damaged one (and, with --corpus, the whole generated hostile corpus of tests/hostile.py
beside them) goes through `radflow ingest`, `anonymise` and `preprocess --modality ct` as a
user runs them; prints, per stage, files in (out + quarantined: the table is built from the
stage's own outputs), out and quarantined, seconds and peak memory, and where the damaged
file ended up. preprocess reads the CT rows of the anonymised manifest only.

    .venv/bin/python benchmarks/hostile_scale.py [--files 10000] [--corpus] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import dicom_dataset  # noqa: E402

KEY = "hostile-scale-benchmark-key-3c1f2a"


def write_folder(root: Path, files: int, seed: int) -> str:
    """N good CT slices of 64 x 64 (20 per patient) and one truncated in the middle of them;
    returns the damaged file's path relative to root."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(files):
        ds = dicom_dataset(rng.integers(0, 2000, (64, 64)), "CT", f"P{i // 20:05d}")
        ds.preamble = b"\0" * 128
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        rel = f"p{i // 20:05d}/{i:06d}.dcm"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(buffer.getvalue())
        rows.append({"path": rel, "label": ("no_nodule", "nodule")[i % 2]})
    middle = Path(rows[files // 2]["path"])
    damaged = (middle.parent / "damaged.dcm").as_posix()
    (root / damaged).write_bytes((root / middle).read_bytes()[:-1000])  # cut pixel data
    rows.append({"path": damaged, "label": "nodule"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return damaged


def radflow(args: list[str], cwd: Path) -> tuple[float, float, str]:
    """(seconds, peak MiB, stderr) of one radflow command in its own process."""
    env = {**os.environ, "RADFLOW_PSEUDONYM_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with open(cwd / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "radflow.cli", *args], cwd=cwd, env=env,
                                stdout=err, stderr=err)  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        err.seek(0)
        text = err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"radflow {args[0]} failed:\n{text[-3000:]}")
    return time.perf_counter() - start, usage.ru_maxrss / 1024, text


def count(path: Path) -> int:
    return len(pd.read_csv(path, dtype=str, keep_default_na=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--corpus", action="store_true", help="add tests/hostile.py's corpus")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: temporary)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="radflow-hostile-"))
    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    damaged = write_folder(data, args.files, args.seed)
    if args.corpus:
        import hostile

        corpus = hostile.build(data / "hostile", args.seed)
        labels = pd.read_csv(corpus.labels_csv, dtype=str, keep_default_na=False)
        labels["path"] = "hostile/" + labels["path"]
        merged = pd.concat([pd.read_csv(data / "labels.csv", dtype=str), labels])
        merged.fillna("").to_csv(data / "labels.csv", index=False)
        corpus.labels_csv.unlink()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] |= {"source": "folder", "root": str(data), "raw_dir": str(data),
                       "labels_csv": str(data / "labels.csv")}  # fmt: skip
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    stages = [
        ("ingest", ["ingest", "--out", "interim"],
         "interim/manifest.csv", "interim/quarantine.csv"),
        ("anonymise", ["anonymise", "--manifest", "interim/manifest.csv", "--out", "anon"],
         "anon/manifest.csv", "anon/quarantine.csv"),
        ("preprocess ct", ["preprocess", "--modality", "ct", "--manifest", "anon/manifest.csv",
                           "--out", "processed/ct"],
         "processed/ct/index.csv", "processed/ct/quarantine.csv"),
    ]  # fmt: skip
    print(f"{args.files} good CT slices + 1 truncated ({damaged})"
          + (" + the hostile corpus" if args.corpus else "") + f"; work: {work}\n")  # fmt: skip
    print("| stage | in | out | quarantined | s | peak MiB |")
    print("|---|---|---|---|---|---|")
    for name, argv, out, quarantine in stages:
        seconds, peak, _ = radflow(argv, work)
        n_out, n_q = count(work / out), count(work / quarantine)
        print(f"| {name} | {n_out + n_q} | {n_out} | {n_q} | {seconds:.1f} | {peak:.0f} |")
    held = pd.read_csv(work / "interim/quarantine.csv", dtype=str, keep_default_na=False)
    row = held[held["path"] == str(data / damaged)]
    reason = row["reason"].iloc[0] if len(row) else "NOT QUARANTINED"
    print(f"\n{damaged}: {reason}")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

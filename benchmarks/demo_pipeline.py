"""Benchmark: the whole Snakemake workflow on the demo cohort, in a scratch copy.

Prints the wall time and a table of per-modality test metrics with 95% CIs.

    .venv/bin/python benchmarks/demo_pipeline.py [--cores 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def copy_workflow(target: Path) -> None:
    for name in ("Snakefile", "dvc.yaml", ".dvcignore", "params.yaml"):
        shutil.copy(ROOT / name, target / name)
    shutil.copytree(ROOT / "workflow", target / "workflow")


def run(cmd: list[str], cwd: Path) -> None:
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "DVC_NO_ANALYTICS": "1",
    }
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def fmt(metric: dict | None) -> str:
    if not metric or metric.get("value") is None:
        return "n/a"
    lo, hi = metric.get("ci_low"), metric.get("ci_high")
    ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else ""
    return f"{metric['value']:.3f}{ci}"


def table(work: Path, modalities: list[str]) -> str:
    head = ["modality", "n_test", "AUC", "accuracy", "sensitivity", "specificity", "Dice (lesion)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in modalities:
        metrics = json.loads((work / f"reports/evaluation/{m}/metrics.json").read_text())
        c, seg = metrics["classification"], metrics.get("segmentation") or {}
        cells = [
            m,
            str(metrics["n_test"]),
            fmt(c["auc"]),
            fmt(c["accuracy"]),
            fmt(c["sensitivity"]),
            fmt(c["specificity"]),
            fmt(seg.get("dice_lesion")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cores", default="2")
    parser.add_argument("--keep", help="run in this folder and keep it")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="radflow-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    copy_workflow(work)
    start = time.perf_counter()
    run([str(BIN / "snakemake"), "--cores", args.cores, "--quiet", "rules"], work)
    wall = time.perf_counter() - start
    import yaml

    modalities = yaml.safe_load((work / "params.yaml").read_text())["modalities"]
    print(f"\ndemo pipeline: {wall:.0f} s wall on {args.cores} cores ({os.cpu_count()} visible)\n")
    print(table(work, modalities))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

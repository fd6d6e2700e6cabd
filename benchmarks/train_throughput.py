"""Benchmark: classifier training throughput (images/s) through `radflow train`.

Writes a synthetic processed-data folder (uint8 images at 224 px, two classes, a fixed
patient-free split: images.npy, masks.npy, index.csv, split.csv) in a scratch folder and
times `radflow train --task classifier` on it. Only the command line and the files are
used, so the same script measures any version of the package: the one on PYTHONPATH runs,
with the params.yaml of its own checkout (two folders above the package).

images/s = n_train x epochs / the sum of the epochs' `seconds` in the model's training
history (each epoch's training steps and its validation pass: dvclive/plots/metrics/
seconds.tsv, or history.csv from versions before DVCLive); "steady" leaves epoch 1 (warm-up)
out.

    PYTHONPATH=src .venv/bin/python benchmarks/train_throughput.py [--epochs 3]
        [--images 256] [--num-workers 0] [--repeat 1] [--keep DIR]

--num-workers sets train.num_workers (versions with the DataLoader pipeline only; left out,
the checkout's params.yaml decides).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

BIN = Path(sys.executable).parent
SIZE = 224
MODALITY = "xray"


def code_checkout() -> Path:
    """The project folder of the radflow that the `radflow` command will import."""
    import radflow

    return Path(radflow.__file__).resolve().parents[2]


def write_data(folder: Path, n: int, seed: int = 0) -> tuple[int, int]:
    """n images; the positives carry a bright disc. 7/8 train, 1/8 val."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, (n, SIZE, SIZE)).astype(np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    labels = np.arange(n) % 2
    for i in np.flatnonzero(labels):
        cy, cx, r = rng.integers(50, SIZE - 50), rng.integers(50, SIZE - 50), rng.integers(8, 30)
        images[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 200
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    np.save(folder / "masks.npy", np.zeros_like(images))
    names = np.array(["normal", "opacity"])[labels]
    ids = [f"img{i:04d}" for i in range(n)]
    index = pd.DataFrame(
        {"array_index": range(n), "image_id": ids, "patient_key": ids, "label": names,
         "has_mask": 0, "modality": MODALITY}
    )  # fmt: skip
    index.to_csv(folder / "index.csv", index=False)
    n_val = max(2, n // 8)
    split = index[["array_index", "image_id", "patient_key", "label"]].copy()
    split["split"] = ["val" if i >= n - n_val else "train" for i in range(n)]
    split.to_csv(folder / "split.csv", index=False)
    return n - n_val, n_val


def write_params(work: Path, epochs: int, num_workers: int | None) -> Path:
    params = yaml.safe_load((code_checkout() / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["preprocess"]["image_size"] = SIZE
    params["train"]["device"] = "cpu"
    params["train"]["classifier"]["epochs"] = epochs
    if num_workers is not None:
        params["train"]["num_workers"] = num_workers
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def epoch_seconds(model_dir: Path) -> np.ndarray:
    """Each epoch's seconds, from DVCLive's file or the history.csv of older versions."""
    tsv = model_dir / "dvclive" / "plots" / "metrics" / "seconds.tsv"
    if tsv.exists():
        return pd.read_csv(tsv, sep="\t")["seconds"].to_numpy()
    return pd.read_csv(model_dir / "history.csv")["seconds"].to_numpy()


def train_once(work: Path, run: int) -> tuple[float, np.ndarray]:
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    env.pop("RADFLOW_PROFILE", None)
    out = work / f"models/run{run}"
    cmd = [str(BIN / "radflow"), "train", "--params", str(work / "params.yaml"),
           "--modality", MODALITY, "--task", "classifier", "--data", str(work / "data"),
           "--split", str(work / "data/split.csv"), "--out", str(out)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, cwd=work, env=env, check=True, capture_output=True)
    return time.perf_counter() - start, epoch_seconds(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--num-workers", type=int, help="train.num_workers (new pipeline only)")
    parser.add_argument("--repeat", type=int, default=1, help="runs, each a fresh process")
    parser.add_argument("--keep", help="work in this folder and keep it")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="radflow-thru-"))
    n_train, n_val = write_data(work / "data", args.images)
    write_params(work, args.epochs, args.num_workers)
    workers = "params" if args.num_workers is None else str(args.num_workers)
    print(
        f"code: {code_checkout()}; {n_train} train / {n_val} val images at {SIZE} px, "
        f"{args.epochs} epochs, num_workers {workers}, {os.cpu_count()} CPUs visible\n"
    )
    head = ["run", "wall s", "epoch s (each)", "images/s (all epochs)", "images/s (steady)"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for run in range(args.repeat):
        wall, seconds = train_once(work, run)
        rate = n_train * len(seconds) / seconds.sum()
        steady = n_train * (len(seconds) - 1) / seconds[1:].sum() if len(seconds) > 1 else rate
        each = " / ".join(f"{s:.1f}" for s in seconds)
        print(f"| {run + 1} | {wall:.1f} | {each} | {rate:.2f} | {steady:.2f} |", flush=True)
    if not args.keep:
        import shutil

        shutil.rmtree(work)


if __name__ == "__main__":
    main()

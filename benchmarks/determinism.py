"""Benchmark: same seed, same bytes? Fresh `radflow train` (classifier and segmenter) and
`radflow evaluate` runs on the same small demo arrays, quiet, again, beside a CPU load, and
with other thread counts; compares the weights and metrics.json byte for byte.

The data: `radflow demo` (few patients, small images), ingest, anonymise, preprocess and
split for one modality, once, in a scratch folder, with a copy of the checkout's params.yaml
made small (image size, epochs, bootstrap samples). Every run is its own processes (the
three `radflow` commands) with its own output folder; only the environment and
train.num_threads change between runs. Only the command lines and the files are used, so
the script measures whichever radflow is on PYTHONPATH.

A run is named THREADS[/OMP][wWORKERS][+load][+cold]: `0` (train.num_threads 0,
OMP_NUM_THREADS unset: torch's default, the cores), `1/2` (train.num_threads 1,
OMP_NUM_THREADS=2), `0/1` (what Snakemake gives a job that declares 1 thread), `0w1`
(train.num_workers 1). `+load` starts --load-procs background processes that keep every core
busy with multi-threaded torch work (a small conv net trained in a loop, OpenMP threads =
the cores) for the whole run, and stops them afterwards. `+cold` trains with an empty
converted-weights cache (RADFLOW_CACHE), as the first training on a machine does; every
other run finds the cache filled before the first run.

The classifier trains with the lesion-attention loss (on the demo's lesion masks) at batch
32 and output stride 16 by default, the Cheng MRI overlay's settings, whose same-seed runs
drifted: the backward of its `head.weight[targets]` accumulates batch x 1280 index_put_
elements, at or above torch's GRAIN_SIZE (32768) from batch 26 on. --lesion-attention 0
trains the plain classifier.

    PYTHONPATH=src .venv/bin/python benchmarks/determinism.py
        [--runs 0 0 0+load 0+cold 1] [--modality ct] [--patients 24] [--size 64]
        [--epochs 2] [--batch 32] [--lesion-attention 2.0] [--output-stride 16]
        [--load-procs 2] [--grad-trainings 3] [--keep DIR]

The first table: per run the seconds, the load average at its end, the classifier's and
the segmenter's model.pt SHA-256 (first 12 hex digits), the largest absolute difference of
a floating-point weight from the first run, the largest difference of a training loss (the
model's DVCLive history), and metrics.json's SHA-256 and largest difference of a number
(params_hash and versions left out: train.num_threads is a parameter, so the hash differs
with it).

Then the gradient check (--grad-trainings N, 0 skips it): N same-seed trainings of the
classifier in one process (classifier.train_stage on the same arrays and params) beside the
load, the gradients of every optimiser step hashed (a global optimiser step pre-hook; the
last step is the temperature fit). It shows whether the steps agree bit for bit before the
rounding of the weight updates can absorb a difference in the last bits: at this size it
does, so the weights can agree although steps did not; the Cheng MRI overlay's 10 epochs of
224 px images did not absorb them.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

BIN = Path(sys.executable).parent

LOAD = """
import torch
torch.set_num_threads({threads})
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
    torch.nn.Conv2d(32, 32, 3, padding=1, groups=32), torch.nn.Conv2d(32, 64, 1),
    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10),
).to(memory_format=torch.channels_last)
opt = torch.optim.SGD(net.parameters(), lr=1e-3)
x = torch.randn(16, 3, 96, 96).to(memory_format=torch.channels_last)
a = torch.randn(384, 384)
while True:
    opt.zero_grad()
    net(x).square().mean().backward()
    opt.step()
    (a @ a).sum()
"""


def code_checkout() -> Path:
    """The project folder of the radflow that the `radflow` command will import."""
    import radflow

    return Path(radflow.__file__).resolve().parents[2]


def env_for(omp: str | None, cache: Path | None = None) -> dict[str, str]:
    """The environment of a command: OMP_NUM_THREADS as given (else unset), the converted
    weights cache (RADFLOW_CACHE) in the scratch folder."""
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    for name in ("RADFLOW_PROFILE", "RADFLOW_OVERLAY", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    if cache is not None:
        env["RADFLOW_CACHE"] = str(cache)
    return env


def radflow(work: Path, *args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [str(BIN / "radflow"), *args], cwd=work, env=env or env_for(None), capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"radflow {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def write_params(
    work: Path, args: argparse.Namespace, num_threads: int = 0, workers: int = 0
) -> Path:
    params = copy.deepcopy(yaml.safe_load((code_checkout() / "params.yaml").read_text()))
    params["modalities"] = [args.modality]
    params["demo"] |= {"patients_per_modality": args.patients, "image_size": args.size}
    params["preprocess"]["image_size"] = args.size
    params["train"] |= {"device": "cpu", "num_threads": num_threads, "num_workers": workers}
    params["train"]["classifier"] |= {
        "epochs": args.epochs, "batch_size": args.batch,
        "lesion_attention": args.lesion_attention, "output_stride": args.output_stride,
    }  # fmt: skip
    params["train"]["segmenter"] |= {"epochs": args.epochs, "batch_size": 8}
    params["evaluate"]["bootstrap_samples"] = 200
    path = work / f"params-{num_threads}-{workers}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def prepare(work: Path, args: argparse.Namespace) -> None:
    m = args.modality
    p = str(write_params(work, args).name)
    radflow(work, "demo", "--params", p, "--out", "data/raw/demo")
    radflow(work, "ingest", "--params", p, "--out", "data/interim")
    radflow(work, "anonymise", "--params", p, "--manifest", "data/interim/manifest.csv",
            "--out", "data/anonymised")  # fmt: skip
    radflow(work, "preprocess", "--params", p, "--modality", m, "--manifest",
            "data/anonymised/manifest.csv", "--out", f"data/processed/{m}")  # fmt: skip
    radflow(work, "split", "--params", p, "--modality", m, "--index",
            f"data/processed/{m}/index.csv", "--out", f"data/split/{m}.csv")  # fmt: skip


def warm_cache(work: Path) -> None:
    """The converted packaged weights in the scratch cache, before any run."""
    code = "from radflow.learning import weights; weights.packaged_lite0()"
    env = env_for(None, work / "cache")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


def parse_run(name: str) -> tuple[int, str | None, int, set[str]]:
    """THREADS[/OMP][wWORKERS][+load][+cold] -> (train.num_threads, OMP_NUM_THREADS,
    train.num_workers, the + flags)."""
    spec, *flags = name.split("+")
    if set(flags) - {"load", "cold"}:
        raise SystemExit(f"run {name}: the flags are +load and +cold")
    spec, _, workers = spec.partition("w")
    threads, _, omp = spec.partition("/")
    return int(threads), (omp or None), int(workers or 0), set(flags)


def start_load(procs: int) -> list[subprocess.Popen]:
    threads = os.cpu_count() or 1
    code = LOAD.format(threads=threads)
    env = env_for(str(threads))
    out = [
        subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
        for _ in range(procs)
    ]
    time.sleep(3)  # let them spin up
    return out


def stop_load(load: list[subprocess.Popen]) -> None:
    for proc in load:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in load:
        proc.wait()


def run_once(work: Path, args: argparse.Namespace, name: str, k: int) -> dict:
    threads, omp, workers, flags = parse_run(name)
    m = args.modality
    params = write_params(work, args, threads, workers).name
    out = work / f"runs/{k}"
    cache = work / "cache"
    if "cold" in flags:  # an empty weights cache, as on a machine that never trained
        cache = work / f"runs/cold-cache-{k}"
        shutil.rmtree(cache, ignore_errors=True)
    env = env_for(omp, cache)
    load = start_load(args.load_procs) if "load" in flags else []
    start = time.perf_counter()
    try:
        for task in ("classifier", "segmenter"):
            radflow(work, "train", "--params", params, "--modality", m, "--task", task,
                    "--data", f"data/processed/{m}", "--split", f"data/split/{m}.csv",
                    "--out", str(out / f"models/{m}/{task}"), env=env)  # fmt: skip
        radflow(work, "evaluate", "--params", params, "--modality", m, "--data",
                f"data/processed/{m}", "--split", f"data/split/{m}.csv", "--models",
                str(out / f"models/{m}"), "--out", str(out / "eval"), env=env)  # fmt: skip
        loadavg = os.getloadavg()[0]
    finally:
        stop_load(load)
    return {"name": name, "dir": out, "seconds": time.perf_counter() - start, "load": loadavg}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def max_weight_diff(a: Path, b: Path) -> float:
    import torch

    sa = torch.load(a, map_location="cpu", weights_only=True)
    sb = torch.load(b, map_location="cpu", weights_only=True)
    sa, sb = sa.get("state_dict", sa), sb.get("state_dict", sb)
    floats = [k for k, v in sa.items() if v.is_floating_point()]  # not the BN batch counts
    return max(float((sa[k] - sb[k]).abs().max()) for k in floats)


def numbers(tree: object, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON tree by its path, params_hash and versions left out."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key not in ("params_hash", "versions"):
                out |= numbers(value, f"{prefix}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out |= numbers(value, f"{prefix}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        out[prefix] = float(tree)
    return out


def metric_diff(a: Path, b: Path) -> str:
    """The largest difference of a number both metrics.json hold; + the count of numbers
    only one holds (a calibration bin one run left empty)."""
    na, nb = numbers(json.loads(a.read_text())), numbers(json.loads(b.read_text()))
    common = [k for k in na.keys() & nb.keys() if na[k] == na[k] and nb[k] == nb[k]]
    out = f"{max((abs(na[k] - nb[k]) for k in common), default=0.0):.2g}"
    only = len(na.keys() ^ nb.keys())
    return f"{out} (+{only} unmatched)" if only else out


def loss_diff(a: Path, b: Path) -> float:
    """The largest difference of a training loss between two model directories' histories."""
    from radflow.learning import history

    ha, hb = history.read(a), history.read(b)
    return float((ha["train_loss"] - hb["train_loss"]).abs().max())


def grad_probe(work: Path, params_file: str, modality: str, trainings: int) -> None:
    """In this process: `trainings` classifier train stages, one JSON line each."""
    import numpy as np
    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from radflow.core import params as params_mod
    from radflow.learning import classifier

    params = params_mod.load(work / params_file)
    data = work / f"data/processed/{modality}"
    index = pd.read_csv(data / "index.csv")
    split = pd.read_csv(work / f"data/split/{modality}.csv")
    images, masks = np.load(data / "images.npy"), np.load(data / "masks.npy")
    steps: list[str] = []

    def hash_grads(optimizer: torch.optim.Optimizer, *_: object) -> None:
        digest = hashlib.sha256()
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    digest.update(p.grad.numpy().tobytes())
        steps.append(digest.hexdigest()[:12])

    register_optimizer_step_pre_hook(hash_grads)
    for _ in range(trainings):
        steps.clear()
        trained = classifier.train_stage(images, masks, index, split, params, modality)
        weights = hashlib.sha256(b"".join(v.numpy().tobytes() for v in trained.state.values()))
        print(json.dumps({"weights": weights.hexdigest()[:12], "steps": steps}), flush=True)


def grad_check(work: Path, args: argparse.Namespace) -> None:
    params = write_params(work, args).name
    cmd = [sys.executable, __file__, "--grad-probe", str(work), "--modality", args.modality,
           "--grad-trainings", str(args.grad_trainings), "--params-file", params]  # fmt: skip
    load = start_load(args.load_procs)
    try:
        env = env_for(None, work / "cache")
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        stop_load(load)
    if done.returncode != 0:
        raise SystemExit(f"gradient check failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    print(
        f"\ngradient check: {len(rows)} same-seed classifier trainings in one process beside "
        f"the load (load average {os.getloadavg()[0]:.1f} at the end)\n"
    )
    head = ["training", "weights sha256", "optimiser steps", "steps whose gradient differs "
            "from training 1", "which"]  # fmt: skip
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for k, row in enumerate(rows):
        pairs = zip(row["steps"], rows[0]["steps"], strict=True)
        differ = [i + 1 for i, (a, b) in enumerate(pairs) if a != b]
        which = ", ".join(map(str, differ)) or "-"
        print(f"| {k + 1} | {row['weights']} | {len(row['steps'])} | {len(differ)} | {which} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--runs", nargs="*", default=["0", "0", "0+load", "0+cold", "1"], help="none: skip"
    )
    parser.add_argument("--modality", default="ct")
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="classifier batch size")
    parser.add_argument("--lesion-attention", type=float, default=2.0)
    parser.add_argument("--output-stride", type=int, default=16, choices=(16, 32))
    parser.add_argument("--load-procs", type=int, default=2, help="background load processes")
    parser.add_argument("--grad-trainings", type=int, default=3, help="0: no gradient check")
    parser.add_argument("--keep", help="work in this folder and keep it")
    parser.add_argument("--grad-probe", help=argparse.SUPPRESS)  # the check's child process
    parser.add_argument("--params-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # a terminated benchmark still stops its load processes (the finally clauses run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if args.grad_probe:
        grad_probe(Path(args.grad_probe), args.params_file, args.modality, args.grad_trainings)
        return
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="radflow-det-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / f"data/split/{args.modality}.csv").exists():
        prepare(work, args)
    warm_cache(work)
    import numpy as np

    n = len(np.load(work / f"data/processed/{args.modality}/images.npy", mmap_mode="r"))
    print(
        f"code: {code_checkout()}; {args.modality}, {n} images at {args.size} px, "
        f"{args.epochs} epochs per task, classifier batch {args.batch}, lesion attention "
        f"{args.lesion_attention}, output stride {args.output_stride}, {os.cpu_count()} CPUs "
        "visible, load = "
        f"{args.load_procs} x torch({os.cpu_count()} threads)\n"
    )
    head = ["run", "s", "load avg", "classifier sha256", "max |dW|", "max |d loss|",
            "segmenter sha256", "max |dW|", "max |d loss|", "metrics.json sha256",
            "max |d metric|"]  # fmt: skip
    if args.runs:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head), flush=True)
    m, first = args.modality, None
    for k, name in enumerate(args.runs):
        run = run_once(work, args, name, k)
        first = first or run
        cells = [name, f"{run['seconds']:.0f}", f"{run['load']:.1f}"]
        for task in ("classifier", "segmenter"):
            model = run["dir"] / f"models/{m}/{task}"
            base = first["dir"] / f"models/{m}/{task}"
            cells += [
                sha(model / "model.pt")[:12],
                f"{max_weight_diff(model / 'model.pt', base / 'model.pt'):.2g}",
                f"{loss_diff(model, base):.2g}",
            ]
        metrics = run["dir"] / "eval/metrics.json"
        cells += [
            sha(metrics)[:12],
            metric_diff(metrics, first["dir"] / "eval/metrics.json"),
        ]
        print("| " + " | ".join(cells) + " |", flush=True)
    if args.grad_trainings:
        grad_check(work, args)
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

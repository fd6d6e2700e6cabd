"""Benchmark: train and validate radflow on one of the shared datasets, by its params overlay.

Runs the real stages (ingest, anonymise, preprocess, train) in a scratch folder, on a
patient-grouped split of the provided data (k-fold with --folds: every image is scored once by
a model that never saw its patient), and prints ACC, AUC, sensitivity and specificity with
95% bootstrap CIs and the wall time. The held-out test portions are not here; this is a
validation estimate.

    .venv/bin/python benchmarks/real_data.py --overlay params/ct-contrast.yaml --folds 5
    .venv/bin/python benchmarks/real_data.py --overlay params/xray-pneumonia.yaml \\
        --set train.classifier.epochs=3
"""

from __future__ import annotations

import argparse
import os
import secrets
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
BIN = Path(sys.executable).parent


def scratch_project(overlay_path: Path, overrides: list[str]) -> Path:
    """A throw-away project whose ../shared points at the real shared folder."""
    base = Path(tempfile.mkdtemp(prefix="radflow-real-"))
    (base / "shared").symlink_to((ROOT.parent / "shared").resolve())
    work = base / "work"
    (work / "params").mkdir(parents=True)
    shutil.copy(ROOT / "params.yaml", work / "params.yaml")
    overlay = yaml.safe_load(overlay_path.read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        node = overlay
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    (work / "params" / overlay_path.name).write_text(yaml.safe_dump(overlay, sort_keys=False))
    return work


def radflow(work: Path, env: dict[str, str], *args: str) -> None:
    subprocess.run([str(BIN / "radflow"), *args], cwd=work, env=env, check=True)


def folds(index: pd.DataFrame, k: int, seed: int) -> list[pd.DataFrame]:
    """k patient-grouped stratified folds; val is a grouped share of each training part."""
    from sklearn.model_selection import StratifiedGroupKFold

    from radflow.data import split

    outer = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    labels, groups = index["label"].to_numpy(), split.stable_groups(index)
    tables = []
    for fold, (_, test) in enumerate(outer.split(np.zeros(len(index)), labels, groups)):
        is_test = np.zeros(len(index), bool)
        is_test[test] = True
        rest = np.flatnonzero(~is_test)
        is_val = split.take_fold(labels[rest], groups[rest], 0.15, seed + fold)
        table = index[["image_id", "array_index", "patient_key", "label"]].copy()
        table["split"] = "train"
        table.loc[is_test, "split"] = "test"
        table.loc[table.index[rest[is_val]], "split"] = "val"
        tables.append(table)
    return tables


def pooled_metrics(scored: list[tuple], seed: int) -> dict:
    """Metrics over all folds' out-of-fold cases, each decided at its own fold's threshold.

    Binary: each fold's positive probability is shifted so its threshold sits at 0.5 (a
    monotone change within the fold), then one 0.5 rule decides all; AUC uses the raw
    probabilities. Multi-class: argmax.
    """
    from radflow.evaluation.classification import classification_metrics

    classes = scored[0][3]
    y_true = np.concatenate([[classes.index(v) for v in s[0]] for s in scored])
    probs = np.concatenate([s[1] for s in scored])
    metrics = classification_metrics(y_true, probs, classes, 1000, 0.95, seed)
    if len(classes) == 2:
        centred = np.concatenate(
            [np.clip(s[1][:, 1] - (0.5 if s[2] is None else s[2]) + 0.5, 0, 1) for s in scored]
        )
        decided = classification_metrics(
            y_true, np.stack([1 - centred, centred], axis=1), classes, 1000, 0.95, seed, 0.5
        )
        auc = metrics["classification"]["auc"]
        metrics = decided
        metrics["classification"]["auc"] = auc
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--overlay", "--profile", dest="overlay", required=True, type=Path,
        help="params/<name>.yaml (--profile: this option's name before issue 14)",
    )  # fmt: skip
    parser.add_argument("--folds", type=int, default=1, help="1 = the overlay's single split")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE over the overlay")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()

    from radflow.core import params
    from radflow.learning import classifier, models

    params.check_overlay_path(args.overlay)  # profiles/<name>.yaml: names params/<name>.yaml
    work = scratch_project(args.overlay, args.set)
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        params.OVERLAY_ENV: str(work / "params" / args.overlay.name),
        "RADFLOW_PSEUDONYM_KEY": secrets.token_hex(16),  # fresh per run, never stored
    }
    p = params.load(work / "params.yaml", environ=env)
    (modality,) = p["modalities"]
    start = time.perf_counter()
    radflow(work, env, "ingest", "--out", "data/interim")
    radflow(work, env, "anonymise", "--manifest", "data/interim/manifest.csv",
            "--out", "data/anonymised")  # fmt: skip
    radflow(work, env, "preprocess", "--modality", modality, "--manifest",
            "data/anonymised/manifest.csv", "--out", f"data/processed/{modality}")  # fmt: skip
    index = pd.read_csv(work / f"data/processed/{modality}/index.csv", keep_default_na=False)
    if args.folds > 1:
        tables = folds(index, args.folds, p["seed"])
    else:
        index_csv = f"data/processed/{modality}/index.csv"
        radflow(work, env, "split", "--modality", modality, "--index", index_csv,
                "--out", "data/split/fold0.csv")  # fmt: skip
        tables = [pd.read_csv(work / "data/split/fold0.csv", keep_default_na=False)]
    images = np.load(work / f"data/processed/{modality}/images.npy")
    scored, fold_aucs = [], []
    for fold, table in enumerate(tables):
        split_csv = work / f"data/split/fold{fold}.csv"
        split_csv.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(split_csv, index=False)
        out = f"models/fold{fold}"
        radflow(work, env, "train", "--modality", modality, "--task", "classifier", "--data",
                f"data/processed/{modality}", "--split", str(split_csv), "--out", out)  # fmt: skip
        model, meta = models.load_model(work / out)
        test = table[table["split"] == "test"]
        probs = classifier.predict_probs(model, images[test["array_index"].to_numpy()],
                                         temperature=meta.get("temperature", 1.0),
                                         tta=meta.get("tta", False))  # fmt: skip
        scored.append((test["label"].to_numpy(), probs, meta.get("threshold"), meta["classes"]))
        fold_auc = classifier.roc_auc(
            np.array([meta["classes"].index(v) for v in test["label"]]), probs
        )
        fold_aucs.append(fold_auc)
        print(f"fold {fold}: best epoch {meta.get('best_epoch')}, val AUC "
              f"{meta.get('best_val_metric', float('nan')):.3f}, test AUC {fold_auc:.3f} "
              f"(n={len(test)})", flush=True)  # fmt: skip
    wall = time.perf_counter() - start
    metrics = pooled_metrics(scored, p["seed"])
    c = metrics["classification"]

    def fmt(m):
        if m["value"] is None:
            return "n/a"
        return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"

    n = sum(len(s[0]) for s in scored)
    print(f"\n{args.overlay.name}: {n} validation images, {args.folds} fold(s), "
          f"patient-grouped; wall {wall / 60:.1f} min on {os.cpu_count()} cores\n")  # fmt: skip
    print("| metric | value [95% CI] |\n|---|---|")
    for name in ("accuracy", "auc", "sensitivity", "specificity", "balanced_accuracy"):
        print(f"| {name} | {fmt(c[name])} |")
    if len(fold_aucs) > 1:
        print(f"\nAUC per fold: {', '.join(f'{a:.3f}' for a in fold_aucs)}; "
              f"mean {np.nanmean(fold_aucs):.3f} (the table pools all folds' cases)")  # fmt: skip
    if args.keep:
        print(f"\nkept: {work}")
    else:
        shutil.rmtree(work.parent)


if __name__ == "__main__":
    main()

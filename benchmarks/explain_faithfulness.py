"""Benchmark: how faithful and how well localised is each explanation method?

For every method of radflow.explain it prints one row: pointing-game hit rate and mean energy
inside the lesion (masks of the demo cohort, or tumour boxes of the Cheng MRI set), and
deletion / insertion AUC with the random-order baseline and the difference.

    # a finished demo run (masks from data/processed/<m>/masks.npy, test split):
    .venv/bin/python benchmarks/explain_faithfulness.py --dataset demo --run /tmp/bench1 \\
        --modality mri
    # a classifier trained on the Cheng set (classes glioma, meningioma, pituitary):
    .venv/bin/python benchmarks/explain_faithfulness.py --dataset cheng \\
        --model DIR --data ../shared/datasets/mri-brain-tumour --limit 100

Localisation explains the lesion class: for the demo the positive (last) class on images
with a non-empty mask; for Cheng the true tumour type (every image has a tumour box). The
faithfulness curves explain the same class. Boxes are (centre x, centre y, w, h) in pixels
of the original image, mapped through radflow's preprocessing (centred pad to a square,
then resize).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from radflow.core import imaging
from radflow.data import preprocess  # noqa: E402
from radflow.explain import faithfulness, stage
from radflow.explain.methods import EXPLAINERS, explain
from radflow.learning import models


def demo_cases(run: Path, modality: str, limit: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8, lesion masks, labels) of test images with a non-empty lesion mask."""
    processed = run / "data" / "processed" / modality
    images, masks = np.load(processed / "images.npy"), np.load(processed / "masks.npy")
    split = pd.read_csv(run / "data" / "split" / f"{modality}.csv")
    idx = split.loc[split["split"] == "test", "array_index"].to_numpy()
    idx = np.array([i for i in idx if masks[i].any()])[:limit]
    labels = split.set_index("array_index").loc[idx, "label"].astype(str).tolist()
    return images[idx], masks[idx] > 0, labels


def cheng_cases(
    data: Path, size: int, pp: dict, limit: int, seed: int, only: set[str] | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8, box masks, labels) for a seeded sample of the Cheng set (of the files
    in `only` when given: the images the model never trained on)."""
    table = pd.read_csv(data / "labels.csv")
    if only is not None:
        table = table[table["file"].isin(only)]
    table = table.sample(n=min(limit, len(table)), random_state=seed).reset_index(drop=True)
    images, lesions = [], []
    for row in table.itertuples(index=False):
        pixels = imaging.load_pixels(data / "images" / row.file)
        h, w = pixels.shape
        side = max(h, w)
        images.append(preprocess.prepare_image(pixels, "mri", pp))
        scale = size / side
        box = np.array(
            [
                (row.box_x + (side - w) / 2) * scale,
                (row.box_y + (side - h) / 2) * scale,
                row.box_w * scale,
                row.box_h * scale,
            ]
        )
        lesions.append(lesions.boxes_to_mask((size, size), box[None]))
    return np.stack(images), np.stack(lesions), table["label_name"].astype(str).tolist()


def evaluate(
    model: torch.nn.Module,
    classes: list[str],
    images: np.ndarray,
    lesions: np.ndarray,
    targets: list[int],
    methods: list[str],
    seed: int,
    steps: int,
    tolerance: float,
    cam_layer: str = "auto",
    curves: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per method, one row per method and image: hit and energy)."""
    x = models.normalise_batch(torch.from_numpy(images))
    nan = [{"deletion_auc": np.nan, "insertion_auc": np.nan}] * len(x)
    baselines = [
        faithfulness.random_baseline(model, x[j], targets[j], seed + j, 3, steps)
        for j in range(len(x))
    ] if curves else nan  # fmt: skip
    rows, per_image = [], []
    for method in methods:
        start = time.perf_counter()
        maps = np.concatenate(
            [
                explain(
                    model, x[i : i + 16], targets[i : i + 16], method, seed, cam_layer=cam_layer
                )
                for i in range(0, len(x), 16)
            ]
        )
        seconds = time.perf_counter() - start
        hits = [faithfulness.pointing_game(maps[j], lesions[j], tolerance) for j in range(len(x))]
        energy = [faithfulness.energy_in_lesion(maps[j], lesions[j]) for j in range(len(x))]
        per_image += [
            {"method": method, "image": j, "hit": hits[j], "energy": energy[j]}
            for j in range(len(x))
        ]
        deletion, insertion = [np.nan], [np.nan]
        if curves:
            deletion = [
                faithfulness.deletion_auc(model, x[j], targets[j], maps[j], steps)
                for j in range(len(x))
            ]
            insertion = [
                faithfulness.insertion_auc(model, x[j], targets[j], maps[j], steps)
                for j in range(len(x))
            ]
        rnd_del = float(np.mean([b["deletion_auc"] for b in baselines]))
        rnd_ins = float(np.mean([b["insertion_auc"] for b in baselines]))
        defined = [h for h in hits if h is not None]
        rows.append(
            {
                "method": method,
                "n": len(x),
                "pointing": float(np.mean(defined)) if defined else float("nan"),
                "energy": float(np.mean([e for e in energy if e is not None] or [np.nan])),
                "area": float(lesions.mean()),
                "deletion": float(np.mean(deletion)),
                "del_random": rnd_del,
                "del_gain": rnd_del - float(np.mean(deletion)),
                "insertion": float(np.mean(insertion)),
                "ins_random": rnd_ins,
                "ins_gain": float(np.mean(insertion)) - rnd_ins,
                "s_per_image": seconds / len(x),
            }
        )
    return pd.DataFrame(rows).sort_values("pointing", ascending=False), pd.DataFrame(per_image)


def pointing_by_group(per_image: pd.DataFrame, labels: list[str], lesions: np.ndarray) -> str:
    """Pointing per class and per quarter of lesion size (the side of a square of its area,
    in model pixels), one column per method: where the hits are lost."""
    side = np.sqrt(lesions.reshape(len(lesions), -1).sum(1))
    quarter = pd.qcut(side, 4, labels=False, duplicates="drop")
    frames = []
    for name, key in (("class", np.asarray(labels)), ("size quarter", quarter)):
        table = per_image.assign(group=key[per_image["image"].to_numpy()]).dropna(subset=["hit"])
        table = table.assign(hit=table["hit"].astype(float))
        grouped = table.pivot_table(index="group", columns="method", values="hit", aggfunc="mean")
        medians = pd.Series(side).groupby(key).median()
        grouped.index = [f"{name} {g} (median side {medians[g]:.0f} px)" for g in grouped.index]
        frames.append(grouped)
    return pd.concat(frames).to_string(float_format=lambda v: f"{v:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["demo", "cheng"], required=True)
    parser.add_argument("--run", type=Path, help="demo: a finished pipeline run folder")
    parser.add_argument("--modality", default="mri", help="demo: the modality")
    parser.add_argument("--model", type=Path, help="classifier dir (demo default: the run's)")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/mri-brain-tumour"))
    parser.add_argument("--limit", type=int, default=60, help="most images to explain")
    parser.add_argument(
        "--only", type=Path, help="cheng: a text file of file names (one per line) to draw from"
    )
    parser.add_argument("--methods", default=",".join(EXPLAINERS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tolerance", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cam-layer", default="auto", help="Grad-CAM layer: auto, features or a module name"
    )
    parser.add_argument(
        "--localisation-only",
        action="store_true",
        help="pointing and energy only, no deletion / insertion curves (seconds, not minutes)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.dataset == "demo":
        if not args.run:
            parser.error("--dataset demo needs --run")
        args.model = args.model or args.run / "models" / args.modality / "classifier"
        model, meta = models.load_model(args.model)
        images, lesions, labels = demo_cases(args.run, args.modality, args.limit)
        targets = [len(meta["classes"]) - 1] * len(images)  # the lesion (positive) class
    else:
        if not args.model:
            parser.error("--dataset cheng needs --model")
        model, meta = models.load_model(args.model)
        only = set(args.only.read_text().split()) if args.only else None
        images, lesions, labels = cheng_cases(
            args.data, meta["image_size"], meta["preprocess"], args.limit, args.seed, only
        )
        missing = sorted(set(labels) - set(meta["classes"]))
        if missing:
            parser.error(f"model classes {meta['classes']} lack {missing}")
        targets = [meta["classes"].index(lab) for lab in labels]
    if not len(images):
        print("no images with a lesion to explain", file=sys.stderr)
        return 1
    table, per_image = evaluate(
        model,
        meta["classes"],
        images,
        lesions,
        targets,
        args.methods.split(","),
        args.seed,
        args.steps,
        args.tolerance,
        stage.cam_layer_for(args.cam_layer, meta),
        curves=not args.localisation_only,
    )
    print(f"dataset {args.dataset}, {len(images)} lesion images, model {args.model}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\npointing game by group:")
    print(pointing_by_group(per_image, labels, lesions))
    return 0


if __name__ == "__main__":
    sys.exit(main())

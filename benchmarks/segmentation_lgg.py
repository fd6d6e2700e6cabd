"""Benchmark: the LGG FLAIR tumour segmenter within a wall-time budget on the CPU.

Reads ../shared/datasets/mri-lgg-segmentation through the overlay's data adapter (the same
ingest and preprocess code as the pipeline), splits the patients three ways (held-out
patients for the table, a few validation patients for choosing the best epoch, the rest for
training; no patient in two parts), sizes the number of epochs to the budget by timing a few
training steps, trains the overlay's segmenter (train.segmenter + train.augment) and prints
Dice, IoU and HD95 with 95% patient-bootstrap CIs, per slice and per patient, the
false-positive rate on tumour-free slices and the wall time. The held-out patients are
never used for any choice; the dataset's withheld test patients are not in the folder.

    .venv/bin/python benchmarks/segmentation_lgg.py                    # 30 min, 2 threads
    .venv/bin/python benchmarks/segmentation_lgg.py --budget-min 3 --threads 1   # smoke run
    .venv/bin/python benchmarks/segmentation_lgg.py --folds 4          # every patient held out once

With --folds K the patients are split into K patient-grouped, tumour-stratified folds; each
fold is held out once while the others train (with the overlay's epochs, or --epochs), and
the table pools the held-out predictions of all folds: every patient is scored once, by a
model that never saw them, instead of 5 patients by one model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_arrays(params: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The segmenter's input (uint8, N x S x S, or N x C x S x S with context slices), masks
    (N x S x S), tumour flag and patient code per slice."""
    from radflow.core import imaging
    from radflow.data import ingest, preprocess, sources
    from radflow.learning import segmentation

    result = ingest.ingest(sources.from_params(params["data"]))
    reasons = result.quarantine["reason"].astype(str)
    duplicate = reasons.str.startswith("byte-identical duplicate")
    if (~duplicate).any():
        raise SystemExit(f"{int((~duplicate).sum())} files quarantined by ingest; check the data")
    if duplicate.any():  # blank slices stored twice: the pipeline keeps one copy too
        print(f"ingest: {int(duplicate.sum())} byte-identical duplicate slices left out")
    rows = result.manifest.sort_values("source_path").reset_index(drop=True)
    images, masks, index, quarantined = preprocess.build_arrays(
        rows, params["preprocess"], imaging.load_pixels, imaging.load_mask
    )
    if quarantined:
        print(f"preprocess: {len(quarantined)} slices quarantined")
    inputs = segmentation.model_input(images, index, params["train"]["segmenter"])
    _, patients = np.unique(index["patient_key"].to_numpy(), return_inverse=True)
    tumour = masks.reshape(len(masks), -1).any(axis=1)
    return inputs, masks, tumour, patients  # patient codes only: no names leave here


def split_patients(
    tumour: np.ndarray, patients: np.ndarray, n_test: int, n_val: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient-grouped, tumour-stratified train / val / held-out slice indices."""
    from radflow.data.split import take_fold

    n_patients = len(np.unique(patients))
    held = take_fold(tumour, patients, n_test / n_patients, seed)
    train, val = carve_val(np.flatnonzero(~held), tumour, patients, n_val, seed)
    return train, val, np.flatnonzero(held)


def carve_val(
    rest: np.ndarray, tumour: np.ndarray, patients: np.ndarray, n_val: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """About n_val patients of `rest` for validation, the others for training."""
    from radflow.data.split import take_fold

    share = n_val / len(np.unique(patients[rest]))
    is_val = take_fold(tumour[rest], patients[rest], share, seed + 1)
    return rest[~is_val], rest[is_val]


def patient_folds(
    tumour: np.ndarray, patients: np.ndarray, folds: int, n_val: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """K (train, val, held-out) index triples; every patient is held out exactly once."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    triples = []
    for rest, held in splitter.split(np.zeros(len(tumour)), tumour, patients):
        train, val = carve_val(rest, tumour, patients, n_val, seed)
        triples.append((train, val, held))
    return triples


def seconds_per_epoch(
    images: np.ndarray, masks: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
    train_params: dict, seed: int, steps: int = 6,
) -> float:  # fmt: skip
    """Measured: a few training steps (after one warm-up) scaled to an epoch, plus one
    validation pass."""
    import torch
    from monai.losses import DiceCELoss

    from radflow.learning import engine, models, pipeline, segmentation

    cfg = train_params["segmenter"]
    engine.seed_everything(seed)
    model, _ = models.build_segmenter(cfg, pretrained=True)
    transform = pipeline.augmentations(train_params["augment"], with_mask=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
    criterion = DiceCELoss(sigmoid=True, batch=True)
    order = segmentation.epoch_indices(train_idx, masks, float(cfg.get("tumour_oversample", 1)))
    crop = segmentation.patch_sampler(cfg, images.shape[-1], seed)
    dataset = pipeline.ArrayDataset(images, order, transform, masks=masks, crop=crop)
    rng = np.random.default_rng(seed)
    model.train()
    times = []
    for i in range(steps + 1):
        batch = rng.choice(len(order), cfg["batch_size"], replace=False)
        start = time.perf_counter()
        items = [dataset[int(j)] for j in batch]
        x01 = torch.stack([item["image"] for item in items])
        mm = torch.stack([item["mask"] for item in items])
        optimizer.zero_grad()
        criterion(model(pipeline.to_model(x01)), mm).backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - start)
    start = time.perf_counter()
    segmentation.predict_masks(model, images[val_idx], segmentation.settings(cfg))
    val_seconds = time.perf_counter() - start
    return float(np.mean(times)) * math.ceil(len(order) / cfg["batch_size"]) + val_seconds


def table(summary: dict, pp_summary: dict | None, wall: float, info: dict) -> str:
    def cell(interval: dict | None, digits: int = 3) -> str:
        if not interval or interval.get("value") is None:
            return "n/a"
        ci = ""
        if interval.get("ci_low") is not None:
            ci = f" [{interval['ci_low']:.{digits}f}, {interval['ci_high']:.{digits}f}]"
        return f"{interval['value']:.{digits}f}{ci}"

    pat = summary["per_patient"]
    lines = [
        "| metric (held-out patients) | value [95% CI] |",
        "| --- | --- |",
        f"| Dice, tumour slices (n={summary['n_lesion']}) | {cell(summary['dice_lesion'])} |",
        f"| IoU, tumour slices | {cell(summary['iou_lesion'])} |",
        f"| HD95 px, slices with truth and prediction (n={summary['n_hd95']}) "
        f"| {cell(summary['hd95'], 2)} |",
        f"| Dice, all slices (n={summary['n_images']}; both empty = 1) | {cell(summary['dice'])} |",
        f"| IoU, all slices | {cell(summary['iou'])} |",
        f"| FP rate, tumour-free slices (n={summary['n_empty']}) "
        f"| {cell(summary['fp_rate_empty'])} |",
        f"| missed tumour slices (empty prediction) | {cell(summary['fn_rate_lesion'])} |",
        f"| Dice per patient (n={pat['n_patients']}, volume overlap) | {cell(pat['dice'])} |",
        f"| IoU per patient | {cell(pat['iou'])} |",
        f"| HD95 px per patient (mean of slices) | {cell(pat['hd95'], 2)} |",
    ]
    if pp_summary is not None:
        lines.append(
            f"| (threshold only, no post-processing: IoU tumour slices "
            f"{cell(pp_summary['iou_lesion'])}, FP rate {cell(pp_summary['fp_rate_empty'])}) | |"
        )
    lines.append(
        f"| wall time | {wall / 60:.1f} min ({info['epochs']} epochs x "
        f"{info['sec_per_epoch']:.0f} s, {info['threads']} threads, {info['device']}) |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--overlay", "--profile", dest="overlay",
        default=str(ROOT / "params" / "mri-lgg-segmentation.yaml"),
        help="params/<name>.yaml (--profile: this option's name before issue 14)",
    )  # fmt: skip
    parser.add_argument("--budget-min", type=float, default=30.0, help="whole run, minutes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, help="fix the epochs instead of fitting the budget")
    parser.add_argument("--held-out", type=int, default=5, help="held-out patients")
    parser.add_argument("--folds", type=int, help="K patient folds, each held out once")
    parser.add_argument("--val", type=int, default=3, help="best-epoch validation patients")
    parser.add_argument("--arch", help="override train.segmenter.arch")
    parser.add_argument("--size", type=int, help="override preprocess.image_size")
    parser.add_argument("--patch", type=int, help="override train.segmenter.patch_size")
    parser.add_argument("--keep", choices=["best", "last"], help="override train.segmenter.keep")
    parser.add_argument("--context", type=int, help="override train.segmenter.context_slices")
    parser.add_argument("--json", help="also write the metrics here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)

    import torch

    from radflow.core import params as params_mod
    from radflow.evaluation.segmentation import segmentation_metrics
    from radflow.learning import models, segmentation

    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the overlay's ../shared paths are relative to the project root
    params_mod.check_overlay_path(args.overlay)  # profiles/<name>.yaml: names params/<name>.yaml
    params = params_mod.merge(
        params_mod.read_yaml(ROOT / "params.yaml"), params_mod.read_yaml(Path(args.overlay))
    )
    if args.arch:
        params["train"]["segmenter"]["arch"] = args.arch
    if args.size:
        params["preprocess"]["image_size"] = args.size
    if args.patch is not None:
        params["train"]["segmenter"]["patch_size"] = args.patch
    if args.keep:
        params["train"]["segmenter"]["keep"] = args.keep
    if args.context is not None:
        params["train"]["segmenter"]["context_slices"] = args.context
    params = params_mod.validate(params, args.overlay)  # with the schema's defaults
    seed, cfg = params["seed"], params["train"]["segmenter"]
    images, masks, tumour, patients = load_arrays(params)
    if args.folds:
        triples = patient_folds(tumour, patients, args.folds, args.val, seed)
        cfg["epochs"] = args.epochs or cfg["epochs"]
    else:
        triples = [split_patients(tumour, patients, args.held_out, args.val, seed)]
    for k, (train_idx, val_idx, held_idx) in enumerate(triples):
        label = f"fold {k}: " if args.folds else ""
        print(
            f"{label}{len(images)} slices, {len(np.unique(patients))} patients: train "
            f"{len(np.unique(patients[train_idx]))}, val {len(np.unique(patients[val_idx]))}, "
            f"held-out {len(np.unique(patients[held_idx]))} patients "
            f"({len(held_idx)} slices, {int(tumour[held_idx].sum())} with tumour)",
            flush=True,
        )
    if not args.folds:
        train_idx, val_idx, _ = triples[0]
        per_epoch = seconds_per_epoch(images, masks, train_idx, val_idx, params["train"], seed)
        elapsed = time.perf_counter() - start
        reserve = 90.0  # evaluation, bootstrap, model build
        spare = 0.93  # the estimate from a few steps runs a little fast
        budget = (args.budget_min * 60 - elapsed - reserve) * spare
        cfg["epochs"] = args.epochs or max(1, int(budget / per_epoch))
        print(f"about {per_epoch:.0f} s per epoch -> {cfg['epochs']} epochs", flush=True)
    stored, ev = segmentation.settings(cfg), params["evaluate"]
    held_all = np.concatenate([held for _, _, held in triples])
    pred = np.zeros(masks.shape, dtype=bool)
    probs = np.zeros(masks.shape, dtype=np.float32)
    kept, seconds = [], []
    for k, (train_idx, val_idx, held_idx) in enumerate(triples):
        result, origin = segmentation.train_segmenter(
            images, masks, train_idx, val_idx, params["train"], seed,
            num_workers=params["train"]["num_workers"],
        )  # fmt: skip
        model, _ = models.build_segmenter(cfg, pretrained=False)
        model.load_state_dict(result.state)
        pred[held_idx], probs[held_idx] = segmentation.predict_masks(
            model, images[held_idx], stored
        )
        kept.append(f"{result.best_epoch} (val Dice {result.best_metric:.3f})")
        seconds.append(float(result.history["seconds"].mean()))
        if args.folds:
            fold, _ = segmentation_metrics(
                pred[held_idx], masks[held_idx] > 0, 0, ev["ci_level"], seed
            )
            print(f"fold {k}: IoU tumour slices {fold['iou_lesion']['value']:.3f}", flush=True)
    truth, groups = masks[held_all] > 0, patients[held_all]
    summary, _ = segmentation_metrics(
        pred[held_all], truth, ev["bootstrap_samples"], ev["ci_level"], seed, patients=groups
    )
    raw = None
    if stored["postprocess"]["min_size"] or stored["postprocess"]["largest_component"]:
        plain = probs[held_all] >= stored["postprocess"]["threshold"]
        raw, _ = segmentation_metrics(
            plain, truth, ev["bootstrap_samples"], ev["ci_level"], seed, patients=groups
        )
    wall = time.perf_counter() - start
    info = {
        "epochs": cfg["epochs"], "sec_per_epoch": float(np.mean(seconds)),
        "threads": args.threads, "device": result.device, "folds": len(triples),
    }  # fmt: skip
    design = f"{len(triples)}-fold, pooled" if args.folds else "one split"
    print(
        f"\nLGG FLAIR segmentation ({design}), {stored['arch']} ({origin}), "
        f"{params['preprocess']['image_size']} px, context slices {stored['context_slices']}, "
        f"kept epoch {', '.join(kept)} of {cfg['epochs']}, "
        f"post-processing {stored['postprocess']}\n"
    )
    print(table(summary, raw, wall, info))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"summary": summary, "no_postprocess": raw, "wall_s": wall, **info}, indent=1
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

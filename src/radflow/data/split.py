"""Split: patient-grouped, label-stratified train / val / test assignment.

Grouping by patient is the point: slices of one patient in two sets would leak and
flatter every metric.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

SPLITS = ("train", "val", "test")


def stable_groups(index: pd.DataFrame) -> np.ndarray:
    """Each row's patient named by the smallest image_id among its images (a hash of the
    source file, kept by anonymisation), so the split depends on the images and the seed
    only: a new pseudonymisation key renames the patients but moves no image."""
    return index.groupby("patient_key")["image_id"].transform("min").to_numpy()


def take_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of one stratified group fold holding about `fraction` of the rows."""
    n_groups = len(np.unique(groups))
    n_splits = int(min(max(2, round(1 / fraction)), n_groups))
    # Stratification needs at least n_splits members per class; fewer is still grouped.
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(folds.split(np.zeros(len(labels)), labels, groups))
    chosen = np.zeros(len(labels), dtype=bool)
    chosen[held] = True
    return chosen


def _assign_once(
    labels: np.ndarray, groups: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    split = np.full(len(labels), "train", dtype=object)
    is_test = take_fold(labels, groups, test_fraction, seed)
    split[is_test] = "test"
    rest = ~is_test
    val_share = val_fraction / (1 - test_fraction)
    is_val = take_fold(labels[rest], groups[rest], val_share, seed + 1)
    split[np.flatnonzero(rest)[is_val]] = "val"
    return split


def _coverage(labels: np.ndarray, split: np.ndarray) -> int:
    """How many (split, class) cells hold at least one image."""
    return len({(s, lab) for s, lab in zip(split, labels, strict=True)})


def assign_splits(
    index: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    attempts: int = 50,
) -> pd.DataFrame:
    """One row per image with its split; raises when there are too few patients.

    With few patients a single stratified group fold can leave a class out of val or test
    (metrics then undefined), so seeded re-draws are tried until every split holds every
    class, keeping the best draw when none does.
    """
    patients = index["patient_key"].nunique()
    if patients < 3:
        raise ValueError(
            f"{patients} patient(s) cannot be split into train/val/test without sharing; "
            "add data or lower the number of modalities"
        )
    labels = index["label"].to_numpy()
    groups = stable_groups(index)
    full = len(SPLITS) * len(np.unique(labels))
    best, best_cover = None, -1
    for attempt in range(attempts):
        split = _assign_once(labels, groups, val_fraction, test_fraction, seed + 7919 * attempt)
        cover = _coverage(labels, split)
        if cover > best_cover:
            best, best_cover = split, cover
        if cover == full:
            break
    out = index[["image_id", "array_index", "patient_key", "label"]].copy()
    out["split"] = best
    return out.reset_index(drop=True)


def missing_cells(table: pd.DataFrame) -> list[str]:
    """(split, class) pairs with no image, for a warning in the log."""
    present = set(zip(table["split"], table["label"], strict=True))
    return [
        f"{s}/{lab}"
        for s in SPLITS
        for lab in sorted(table["label"].unique())
        if (s, lab) not in present
    ]

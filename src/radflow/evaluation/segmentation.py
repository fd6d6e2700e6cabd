"""Segmentation metrics of the evaluation stage: Dice, IoU and HD95 per slice and per
patient with bootstrap intervals, and the test-set scoring of a trained segmenter (the
per-image table and the best, median and worst cases with their overlays).

Conventions (see docs/CONTRACTS.md, metrics.json):

- Dice and IoU are :mod:`radflow.learning.overlap`'s (MONAI), the ones the segmenter
  validates with. Empty-truth rule (MONAI ``ignore_empty=False``): truth and prediction
  both empty -> Dice = IoU = 1.0; truth empty but prediction not -> 0.0.
- HD95 (MONAI, pixels of the evaluated grid) is defined only where truth and prediction are
  both non-empty; the empty cases are reported apart: ``fp_rate_empty`` (lesion-free slices
  with any predicted pixel) and ``fn_rate_lesion`` (lesion slices with an empty prediction).
- Per patient: Dice and IoU of the patient's slices pooled (sums of overlaps and sizes,
  i.e. the volume overlap), HD95 the mean of the patient's per-slice HD95. With patients
  given, every CI is a patient-cluster bootstrap (patients resampled with replacement),
  since slices of one patient are not independent.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_hausdorff_distance

from radflow.evaluation.bootstrap import (
    Interval,
    check_ci,
    cluster_interval,
    finite_or_none,
    grouped,
    mean_interval,
)
from radflow.evaluation.render import mask_overlay_png
from radflow.learning.overlap import dice_per_image, iou_per_image
from radflow.learning.segmentation import centre_slice, model_input, predict_masks, with_masks


def _as_binary_masks(masks: np.ndarray, what: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"{what} must have shape (N, H, W), got {masks.shape}")
    if masks.dtype != bool and not np.isin(masks, (0, 1)).all():
        raise ValueError(f"{what} must be binary (bool or 0/1); threshold probabilities first")
    return masks.astype(bool)


def hd95_per_image(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """95th-percentile symmetric Hausdorff distance (MONAI) per image, in pixels; NaN where
    truth or prediction is empty."""
    out = np.full(pred.shape[0], np.nan)
    both = pred.reshape(len(pred), -1).any(1) & true.reshape(len(true), -1).any(1)
    if both.any():
        y_pred = torch.from_numpy(pred[both][:, None]).float()
        y = torch.from_numpy(true[both][:, None]).float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # MONAI-internal deprecation
            dist = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95)
        out[both] = dist[:, 0].numpy()
    return out


def segmentation_metrics(
    pred_masks: np.ndarray,
    true_masks: np.ndarray,
    n_boot: int,
    ci_level: float,
    seed: int,
    patients: np.ndarray | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Per-image Dice/IoU/HD95 (MONAI), their means with bootstrap CIs, empty-case rates and
    (with ``patients``, one key per image) per-patient metrics.

    Returns ``({"dice", "iou", "dice_lesion", "iou_lesion", "hd95", "fp_rate_empty",
    "fn_rate_lesion": {"value", "ci_low", "ci_high"}, "n_images", "n_lesion", "n_empty",
    "n_hd95", "per_patient": {"dice", "iou", "hd95", "n_patients"} | None, "bootstrap"},
    table)`` where ``*_lesion`` average only images whose truth is non-empty (null when
    there are none) and ``table`` has columns ``index, dice, iou, hd95, truth_empty,
    pred_empty`` (index = position in the input arrays). Empty truth: both empty -> 1.0,
    truth empty and prediction not -> 0.0; HD95 only where both are non-empty. Without
    patients the bootstrap resamples images within the empty / non-empty strata.
    """
    check_ci(n_boot, ci_level)
    pred = _as_binary_masks(pred_masks, "pred_masks")
    true = _as_binary_masks(true_masks, "true_masks")
    if pred.shape != true.shape:
        raise ValueError(f"pred_masks {pred.shape} and true_masks {true.shape} differ")
    if patients is not None and len(patients) != pred.shape[0]:
        raise ValueError(f"{len(patients)} patient keys for {pred.shape[0]} masks")
    dice, iou = dice_per_image(pred, true), iou_per_image(pred, true)
    hd95 = hd95_per_image(pred, true)
    empty = ~true.reshape(true.shape[0], -1).any(axis=1)
    pred_empty = ~pred.reshape(pred.shape[0], -1).any(axis=1)
    lesion = ~empty
    false_pos = (empty & ~pred_empty).astype(np.float64)
    missed = (lesion & pred_empty).astype(np.float64)
    everything = np.ones(len(dice), dtype=bool)
    if patients is None:

        def interval(values: np.ndarray, members: np.ndarray) -> Interval:
            values = values[members]
            keep = np.isfinite(values)
            return mean_interval(values[keep], empty[members][keep], n_boot, ci_level, seed)

        per_patient = None
        method = "images, stratified by empty truth"
    else:
        keys, codes = np.unique(np.asarray(patients).astype(str), return_inverse=True)
        n = len(keys)

        def interval(values: np.ndarray, members: np.ndarray) -> Interval:
            return cluster_interval(*grouped(values, members, codes, n), n_boot, ci_level, seed)

        inter = np.bincount(codes, weights=(pred & true).reshape(len(pred), -1).sum(1), minlength=n)
        p_size = np.bincount(codes, weights=pred.reshape(len(pred), -1).sum(1), minlength=n)
        t_size = np.bincount(codes, weights=true.reshape(len(true), -1).sum(1), minlength=n)
        total, union = p_size + t_size, p_size + t_size - inter
        p_dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
        p_iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        h_sum, h_count = grouped(hd95, everything, codes, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            p_hd95 = np.where(h_count > 0, h_sum / np.maximum(h_count, 1), np.nan)
        ones = np.ones(n)
        per_patient = {
            "dice": cluster_interval(p_dice, ones, n_boot, ci_level, seed),
            "iou": cluster_interval(p_iou, ones, n_boot, ci_level, seed),
            "hd95": cluster_interval(
                np.nan_to_num(p_hd95), np.isfinite(p_hd95).astype(float), n_boot, ci_level, seed
            ),
            "n_patients": int(n),
        }
        method = "patients (cluster bootstrap)"
    result: dict[str, Any] = {
        "dice": interval(dice, everything),
        "iou": interval(iou, everything),
        "dice_lesion": interval(dice, lesion),
        "iou_lesion": interval(iou, lesion),
        "hd95": interval(hd95, everything),
        "fp_rate_empty": interval(false_pos, empty),
        "fn_rate_lesion": interval(missed, lesion),
        "n_images": int(pred.shape[0]),
        "n_lesion": int(lesion.sum()),
        "n_empty": int(empty.sum()),
        "n_hd95": int(np.isfinite(hd95).sum()),
        "per_patient": per_patient,
        "bootstrap": method,
    }
    table = pd.DataFrame(
        {
            "index": np.arange(pred.shape[0]),
            "dice": dice.astype(float),
            "iou": iou.astype(float),
            "hd95": hd95.astype(float),
            "truth_empty": empty,
            "pred_empty": pred_empty,
        }
    )
    return result, table


# ------------------------------------------------------------ a trained segmenter


@dataclass
class Case:
    """One of the best, median and worst lesion cases: its rank, row position and scores."""

    rank: str
    position: int
    dice: float
    iou: float


def pick_cases(dice: np.ndarray, iou: np.ndarray, lesion: np.ndarray) -> list[Case]:
    """Best, median and worst lesion-bearing cases by Dice (ties: lower position)."""
    candidates = np.flatnonzero(lesion)
    if candidates.size == 0:
        return []
    order = candidates[np.lexsort((candidates, -dice[candidates]))]
    picks = {"best": order[0], "median": order[(len(order) - 1) // 2], "worst": order[-1]}
    return [Case(k, int(v), float(dice[v]), float(iou[v])) for k, v in picks.items()]


def score_test_cases(
    model: torch.nn.Module,
    meta: Mapping[str, Any],
    images: np.ndarray,
    masks: np.ndarray,
    rows: pd.DataFrame,
    n_boot: int,
    ci_level: float,
    seed: int,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, bytes]]:
    """Segmentation metrics (per slice and per patient) for the test rows (image_id,
    patient_key, array_index), the per-image table and overlay PNGs of the best, median and
    worst lesion cases. `images` is the model input of every array row (model_input)."""
    idx = rows["array_index"].to_numpy()
    pred, _ = predict_masks(model, images[idx], meta)
    truth = masks[idx] > 0
    summary, table = segmentation_metrics(
        pred, truth, n_boot, ci_level, seed, patients=rows["patient_key"].to_numpy()
    )
    table = table.drop(columns="index")
    table.insert(0, "patient_key", rows["patient_key"].to_numpy())
    table.insert(0, "image_id", rows["image_id"].to_numpy())
    overlays, cases = {}, []
    dice, iou = table["dice"].to_numpy(), table["iou"].to_numpy()
    for case in pick_cases(dice, iou, ~table["truth_empty"].to_numpy()):
        name = f"overlays/{case.rank}.png"
        i = case.position
        overlays[name] = mask_overlay_png(centre_slice(images[idx[i]]), truth[i], pred[i])
        cases.append(
            {"rank": case.rank, "image_id": str(rows["image_id"][i]), "dice": case.dice,
             "iou": case.iou, "hd95": finite_or_none(table["hd95"][i]), "file": name}
        )  # fmt: skip
    summary["cases"] = cases
    summary["settings"] = {k: meta.get(k) for k in ("arch", "inference", "postprocess")}
    return summary, table, overlays


SEGMENTATION_TABLE_COLUMNS = (
    "image_id", "patient_key", "dice", "iou", "hd95", "truth_empty", "pred_empty",
)  # fmt: skip


def evaluate_segmenter(
    model: torch.nn.Module | None,
    meta: Mapping[str, Any],
    images: np.ndarray,
    masks: np.ndarray,
    index: pd.DataFrame,
    test: pd.DataFrame,
    n_boot: int,
    ci_level: float,
    seed: int,
) -> tuple[dict[str, Any] | None, pd.DataFrame, dict[str, bytes]]:
    """Test-set segmentation metrics (per slice and per patient), the per-image table and
    overlay PNGs of the best, median and worst lesion cases.

    ``model`` and ``meta`` are the segmenter's (models/<modality>/segmenter); ``model`` is
    None when meta.json says it was not trained. Scores the test rows that have a mask; with
    none (or no trained model) the summary is None and the table empty.
    """
    empty = pd.DataFrame(columns=list(SEGMENTATION_TABLE_COLUMNS))
    if model is None or not meta.get("trained", False):
        return None, empty, {}
    rows = test[test["array_index"].isin(with_masks(test["array_index"], index))]
    rows = rows.reset_index(drop=True)
    if rows.empty:
        return None, empty, {}
    inputs = model_input(images, index, meta)
    return score_test_cases(model, meta, inputs, masks, rows, n_boot, ci_level, seed)

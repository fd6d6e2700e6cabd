"""Calibration of the test probabilities: the reliability diagram's bins and the expected
calibration error with a bootstrap interval.

The ECE is :func:`radflow.learning.calibration.expected_calibration_error`'s (top-label
confidence, equal-width bins ``(low, high]``, Guo et al. 2017), the one training records
as meta.json's val_ece; the diagram plots the same confidences in the same bins, so its
gaps add up to the ECE it is titled with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from radflow.evaluation.bootstrap import check_ci, interval, stratified_resamples
from radflow.evaluation.classification import validate_classification
from radflow.learning.calibration import batched_ece, bin_ids, top_label

KIND = "top-label confidence"


def calibration(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    n_bins: int,
    n_boot: int,
    ci_level: float,
    seed: int,
) -> dict[str, Any]:
    """metrics.json's ``calibration``: reliability bins and the ECE with a bootstrap CI.

    Top-label confidence (the probability of the argmax class) against accuracy, for binary
    and multi-class tasks alike, in ``n_bins`` equal-width bins ``(low, high]``; ECE = sum
    over bins of (bin size / N) * |mean confidence - accuracy|. Returns ``{"kind", "n_bins",
    "ece": {"value", "ci_low", "ci_high"}, "bins": [{"low", "high", "count",
    "mean_confidence", "observed"}]}`` (empty bins: means None). The bootstrap resamples
    within each true class, as the classification metrics do.
    """
    check_ci(n_boot, ci_level)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y_true, probs = validate_classification(y_true, probs, classes)
    conf, correct = top_label(probs, y_true)
    bins = bin_ids(conf, n_bins)
    point = float(batched_ece(conf[None], correct[None], bins[None], n_bins)[0])
    samples = np.empty(0)
    if n_boot:
        idx = stratified_resamples(y_true, n_boot, seed)
        samples = batched_ece(conf[idx], correct[idx], bins[idx], n_bins)
    rows = []
    for b in range(n_bins):
        members = bins == b
        count = int(members.sum())
        rows.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "count": count,
                "mean_confidence": float(conf[members].mean()) if count else None,
                "observed": float(correct[members].mean()) if count else None,
            }
        )
    return {
        "kind": KIND,
        "n_bins": int(n_bins),
        "ece": interval(point, samples, ci_level),
        "bins": rows,
    }

"""Evaluation stage: classification and segmentation metrics with bootstrap confidence intervals.

Point estimates come from scikit-learn (classification) and MONAI (segmentation). The
bootstrap recomputes the same quantities from batched confusion matrices and rank sums in
numpy, because calling scikit-learn 6 x 1000 times costs seconds; a test checks that both
routes agree on the full sample.

Conventions (see docs/CONTRACTS.md, metrics.json):

- ``probs[:, k]`` is the probability of ``classes[k]``. The operating point decides the
  predicted class: binary with a ``threshold`` (from the classifier's meta.json), positive
  when ``probs[:, 1] >= threshold``; otherwise (no threshold, or multi-class) the argmax.
  metrics.json records which as ``operating_point``.
- Binary (2 classes): sensitivity, specificity, F1 and AUC are for the positive class, which
  is the last class (``classes[-1]``).
- Multi-class: sensitivity = macro recall (= balanced accuracy), specificity = macro
  one-vs-rest specificity, F1 = macro F1, AUC = macro one-vs-rest AUC.
- Confidence intervals: stratified bootstrap (resampling within each true class, so every
  resample keeps the class counts), percentile interval at ``ci_level``. A metric that is
  undefined on a resample is skipped for that resample; a metric undefined on the full data
  has value, ci_low and ci_high ``None`` (JSON null).
- Segmentation empty-truth rule (MONAI ``ignore_empty=False``): truth and prediction both
  empty -> Dice = IoU = 1.0; truth empty but prediction not -> 0.0. HD95 (MONAI, pixels of
  the evaluated grid) is defined only where truth and prediction are both non-empty; the
  empty cases are reported apart: ``fp_rate_empty`` (lesion-free slices with any predicted
  pixel) and ``fn_rate_lesion`` (lesion slices with an empty prediction). Per patient:
  Dice and IoU of the patient's slices pooled (sums of overlaps and sizes, i.e. the volume
  overlap), HD95 the mean of the patient's per-slice HD95. With patients given, every CI
  is a patient-cluster bootstrap (patients resampled with replacement), since slices of
  one patient are not independent.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou
from scipy.stats import rankdata
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1")

Interval = dict[str, float | None]


# --------------------------------------------------------------------------- helpers


def _finite_or_none(x: float) -> float | None:
    """JSON has no NaN: an undefined metric is written as null."""
    x = float(x)
    return x if np.isfinite(x) else None


def _interval(value: float, samples: np.ndarray, ci_level: float) -> Interval:
    """Percentile interval of the defined bootstrap samples around a point estimate."""
    point = _finite_or_none(value)
    samples = samples[np.isfinite(samples)]
    if point is None or samples.size == 0:
        return {"value": point, "ci_low": None, "ci_high": None}
    tail = 100.0 * (1.0 - ci_level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return {"value": point, "ci_low": float(low), "ci_high": float(high)}


def _check_ci(n_boot: int, ci_level: float) -> None:
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")


def stratified_resamples(strata: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, N) row indices, each row resampling with replacement inside every stratum.

    Keeping stratum sizes fixed keeps every class present in every resample, so metrics
    defined on the full data (AUC, sensitivity...) stay defined on the resamples.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        blocks.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    if not blocks:
        return np.empty((n_boot, 0), dtype=np.int64)
    return np.concatenate(blocks, axis=1)


def _validate_classification(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(classes)
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes, got {classes}")
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must have shape (N, {n_classes}), got {probs.shape}")
    if y_true.shape != (probs.shape[0],):
        raise ValueError(f"y_true must have shape ({probs.shape[0]},), got {y_true.shape}")
    if y_true.size == 0:
        raise ValueError("no cases to evaluate")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true holds indices outside 0..{n_classes - 1}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs holds NaN or infinite values")
    return y_true.astype(np.int64), probs


# ------------------------------------------------------- point estimates (scikit-learn)


def _sklearn_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUC of the last class, or macro one-vs-rest AUC; NaN when undefined."""
    n_classes = probs.shape[1]
    present = np.unique(y_true)
    if present.size < n_classes:
        return float("nan")
    if n_classes == 2:
        return float(skm.roc_auc_score(y_true == 1, probs[:, 1]))
    # Per-class binary AUC averaged = sklearn's macro OvR, without its sum-to-one check.
    return float(np.mean([skm.roc_auc_score(y_true == k, probs[:, k]) for k in range(n_classes)]))


def decide(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted class indices at the operating point (see the module docstring).

    Works on (N, C) and batched (B, N, C) probabilities.
    """
    probs = np.asarray(probs)
    if threshold is None or probs.shape[-1] != 2:
        return probs.argmax(axis=-1)
    return (probs[..., 1] >= threshold).astype(np.int64)


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")


def _sklearn_point_estimates(
    y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    n_classes = probs.shape[1]
    labels = list(range(n_classes))
    y_pred = decide(probs, threshold)
    mcm = skm.multilabel_confusion_matrix(y_true, y_pred, labels=labels)
    tn, fp = mcm[:, 0, 0], mcm[:, 0, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        specificity = np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics become NaN, reported as null
        balanced = skm.balanced_accuracy_score(y_true, y_pred)
        if n_classes == 2:
            sens = skm.recall_score(y_true, y_pred, pos_label=1, zero_division=np.nan)
            f1 = skm.f1_score(y_true, y_pred, pos_label=1, zero_division=np.nan)
            spec = specificity[1]
        else:
            sens = skm.recall_score(
                y_true, y_pred, labels=labels, average="macro", zero_division=np.nan
            )
            f1 = skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=np.nan)
            spec = np.nan if np.all(np.isnan(specificity)) else np.nanmean(specificity)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "auc": _sklearn_auc(y_true, probs),
        "sensitivity": float(sens),
        "specificity": float(spec),
        "f1": float(f1),
    }


# ------------------------------------------------------------ batched metrics (numpy)


def _batched_confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(B, N) labels and predictions -> (B, C, C) confusion matrices (rows actual)."""
    n_batch = y_true.shape[0]
    flat = (np.arange(n_batch)[:, None] * n_classes + y_true) * n_classes + y_pred
    counts = np.bincount(flat.ravel(), minlength=n_batch * n_classes * n_classes)
    return counts.reshape(n_batch, n_classes, n_classes)


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    defined = np.isfinite(x)
    total = np.where(defined, x, 0.0).sum(axis=1)
    count = defined.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _metrics_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Threshold metrics for a batch of confusion matrices, NaN where undefined."""
    n_classes = cm.shape[1]
    tp = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)
    actual = cm.sum(axis=2).astype(np.float64)
    predicted = cm.sum(axis=1).astype(np.float64)
    total = cm.sum(axis=(1, 2)).astype(np.float64)
    fp, fn = predicted - tp, actual - tp
    tn = total[:, None] - tp - fp - fn
    recall = _ratio(tp, actual)
    specificity = _ratio(tn, tn + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    balanced = _nanmean_rows(recall)
    if n_classes == 2:
        sens, spec, f1_out = recall[:, 1], specificity[:, 1], f1[:, 1]
    else:
        sens, spec, f1_out = balanced, _nanmean_rows(specificity), _nanmean_rows(f1)
    return {
        "accuracy": tp.sum(axis=1) / total,
        "balanced_accuracy": balanced,
        "sensitivity": sens,
        "specificity": spec,
        "f1": f1_out,
    }


def _batched_binary_auc(is_pos: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per row (ties count one half); NaN where a row lacks a class."""
    ranks = rankdata(scores, axis=1)
    n_pos = is_pos.sum(axis=1).astype(np.float64)
    n_neg = is_pos.shape[1] - n_pos
    rank_sum = np.where(is_pos, ranks, 0.0).sum(axis=1)
    return _ratio(rank_sum - n_pos * (n_pos + 1) / 2.0, n_pos * n_neg)


def _batched_auc(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(B, N) labels, (B, N, C) probs -> (B,) AUC with the same definition as the point one."""
    n_classes = probs.shape[2]
    if n_classes == 2:
        return _batched_binary_auc(y_true == 1, probs[:, :, 1])
    per_class = np.stack(
        [_batched_binary_auc(y_true == k, probs[:, :, k]) for k in range(n_classes)], axis=1
    )
    # Macro OvR AUC needs every class: one undefined class makes the average undefined.
    return np.where(np.isfinite(per_class).all(axis=1), per_class.mean(axis=1), np.nan)


def _batched_metrics(
    y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> dict[str, np.ndarray]:
    """All metrics for a batch of samples: y_true (B, N), probs (B, N, C)."""
    n_classes = probs.shape[2]
    cm = _batched_confusion(y_true, decide(probs, threshold), n_classes)
    out = _metrics_from_confusion(cm)
    out["auc"] = _batched_auc(y_true, probs)
    return out


def _bootstrap(
    y_true: np.ndarray,
    probs: np.ndarray,
    n_boot: int,
    seed: int,
    chunk: int = 250,
    threshold: float | None = None,
) -> dict[str, np.ndarray]:
    """Metric samples over n_boot stratified resamples, in chunks to bound memory."""
    idx = stratified_resamples(y_true, n_boot, seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in METRICS}
    for start in range(0, n_boot, chunk):
        rows = idx[start : start + chunk]
        batch = _batched_metrics(y_true[rows], probs[rows], threshold)
        for name in METRICS:
            parts[name].append(batch[name])
    return {
        name: np.concatenate(values) if values else np.empty(0) for name, values in parts.items()
    }


# ---------------------------------------------------------------------- public API


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    n_boot: int,
    ci_level: float,
    seed: int,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The ``classification`` and ``confusion_matrix`` parts of metrics.json.

    ``threshold`` is the binary operating point (probability of the positive class at
    which to call positive); None = argmax. The bootstrap uses the same decision rule.

    Returns ``{"classification": {metric: {"value", "ci_low", "ci_high"}},
    "confusion_matrix": {"labels": classes, "matrix": [[...]]}}`` with rows of the
    matrix = actual class, columns = predicted class, in ``classes`` order. Values are
    plain Python floats or None, ready for ``json.dumps(..., allow_nan=False)``.
    """
    _check_ci(n_boot, ci_level)
    _check_threshold(threshold)
    y_true, probs = _validate_classification(y_true, probs, classes)
    points = _sklearn_point_estimates(y_true, probs, threshold)
    samples = _bootstrap(y_true, probs, n_boot, seed, threshold=threshold)
    y_pred = decide(probs, threshold)
    matrix = skm.confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    return {
        "classification": {
            name: _interval(points[name], samples[name], ci_level) for name in METRICS
        },
        "confusion_matrix": {"labels": list(classes), "matrix": matrix.tolist()},
    }


def positive_class(classes: list[str]) -> str | None:
    """metrics.json's ``positive_class``: the last class when binary, else None."""
    return classes[-1] if len(classes) == 2 else None


def roc_table(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """ROC points (fpr, tpr, threshold) for roc.csv.

    Binary: the positive (last) class. Multi-class: micro-average one-vs-rest (every
    case-class pair is one binary decision). Empty table when the ROC is undefined (only
    one class present). The first threshold is +inf (no case called positive), as in
    scikit-learn.
    """
    pairs = _curve_inputs(y_true, probs, classes)
    if pairs is None:
        return pd.DataFrame({"fpr": [], "tpr": [], "threshold": []}, dtype=float)
    fpr, tpr, thresholds = skm.roc_curve(*pairs)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})


def _curve_inputs(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """(is positive, score) pairs for ROC and PR curves; None when only one class is present.

    Binary: the positive (last) class. Multi-class: micro-average one-vs-rest.
    """
    y_true, probs = _validate_classification(y_true, probs, classes)
    if np.unique(y_true).size < 2:
        return None
    if len(classes) == 2:
        return y_true == 1, probs[:, 1]
    truth = label_binarize(y_true, classes=list(range(len(classes)))).ravel().astype(bool)
    return truth, probs.ravel()


def confusion_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per case with the actual and predicted class names (confusion.csv)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D")
    names = np.asarray(classes, dtype=object)
    for arr, what in ((y_true, "y_true"), (y_pred, "y_pred")):
        if arr.size and (arr.min() < 0 or arr.max() >= len(classes)):
            raise ValueError(f"{what} holds indices outside 0..{len(classes) - 1}")
    return pd.DataFrame(
        {"actual": names[y_true.astype(int)], "predicted": names[y_pred.astype(int)]}
    )


# -------------------------------------------------------------------- segmentation


def _as_binary_masks(masks: np.ndarray, what: str) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"{what} must have shape (N, H, W), got {masks.shape}")
    if masks.dtype != bool and not np.isin(masks, (0, 1)).all():
        raise ValueError(f"{what} must be binary (bool or 0/1); threshold probabilities first")
    return masks.astype(bool)


def _per_image(fn: Callable[..., torch.Tensor], pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """One score per image from a MONAI metric on (N, 1, H, W) foreground channels."""
    y_pred = torch.from_numpy(pred[:, None]).float()
    y = torch.from_numpy(true[:, None]).float()
    return fn(y_pred, y, include_background=True, ignore_empty=False)[:, 0].numpy()


def _mean_interval(
    values: np.ndarray, strata: np.ndarray, n_boot: int, ci_level: float, seed: int
) -> Interval:
    if values.size == 0:
        return {"value": None, "ci_low": None, "ci_high": None}
    idx = stratified_resamples(strata, n_boot, seed)
    return _interval(float(values.mean()), values[idx].mean(axis=1), ci_level)


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


def _cluster_interval(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, ci_level: float, seed: int
) -> Interval:
    """Ratio of per-patient sums (mean over the pooled units) with a patient bootstrap."""
    if counts.sum() == 0:
        return {"value": None, "ci_low": None, "ci_high": None}
    point = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    n = len(sums)
    draws = rng.integers(0, n, size=(n_boot, n))
    weights = np.stack([np.bincount(row, minlength=n) for row in draws]) if n_boot else None
    samples = np.empty(0)
    if weights is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            samples = (weights @ sums) / (weights @ counts)
    return _interval(point, samples, ci_level)


def _grouped(values: np.ndarray, members: np.ndarray, codes: np.ndarray, n: int):
    """Per-patient (sum, count) of values over the members (NaNs excluded)."""
    use = members & np.isfinite(values)
    sums = np.bincount(codes[use], weights=values[use], minlength=n)
    counts = np.bincount(codes[use], minlength=n).astype(np.float64)
    return sums, counts


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
    _check_ci(n_boot, ci_level)
    pred = _as_binary_masks(pred_masks, "pred_masks")
    true = _as_binary_masks(true_masks, "true_masks")
    if pred.shape != true.shape:
        raise ValueError(f"pred_masks {pred.shape} and true_masks {true.shape} differ")
    if patients is not None and len(patients) != pred.shape[0]:
        raise ValueError(f"{len(patients)} patient keys for {pred.shape[0]} masks")
    if pred.shape[0]:
        dice, iou = _per_image(compute_dice, pred, true), _per_image(compute_iou, pred, true)
    else:
        dice = iou = np.empty(0)
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
            return _mean_interval(values[keep], empty[members][keep], n_boot, ci_level, seed)

        per_patient = None
        method = "images, stratified by empty truth"
    else:
        keys, codes = np.unique(np.asarray(patients).astype(str), return_inverse=True)
        n = len(keys)

        def interval(values: np.ndarray, members: np.ndarray) -> Interval:
            return _cluster_interval(*_grouped(values, members, codes, n), n_boot, ci_level, seed)

        inter = np.bincount(codes, weights=(pred & true).reshape(len(pred), -1).sum(1), minlength=n)
        p_size = np.bincount(codes, weights=pred.reshape(len(pred), -1).sum(1), minlength=n)
        t_size = np.bincount(codes, weights=true.reshape(len(true), -1).sum(1), minlength=n)
        total, union = p_size + t_size, p_size + t_size - inter
        p_dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
        p_iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        h_sum, h_count = _grouped(hd95, everything, codes, n)
        with np.errstate(divide="ignore", invalid="ignore"):
            p_hd95 = np.where(h_count > 0, h_sum / np.maximum(h_count, 1), np.nan)
        ones = np.ones(n)
        per_patient = {
            "dice": _cluster_interval(p_dice, ones, n_boot, ci_level, seed),
            "iou": _cluster_interval(p_iou, ones, n_boot, ci_level, seed),
            "hd95": _cluster_interval(
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


def predictions_table(
    cases: pd.DataFrame, probs: np.ndarray, classes: list[str], threshold: float | None = None
) -> pd.DataFrame:
    """One row per test case: ids, truth, predicted label (at the operating point), one
    prob_<class> each."""
    table = cases[["image_id", "array_index", "patient_key", "label"]].copy()
    table["pred_label"] = [classes[i] for i in decide(probs, threshold)]
    for i, name in enumerate(classes):
        table[f"prob_{name}"] = probs[:, i]
    return table.reset_index(drop=True)


# ------------------------------------------------------------------ operating point


def operating_point(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float | None
) -> dict[str, Any]:
    """metrics.json's ``operating_point``: the decision rule and where it sits on the curves.

    ``rule`` is "threshold" (binary, threshold from the classifier's meta.json) or "argmax".
    ``fpr``/``tpr`` locate the point on roc.csv's curve and ``precision``/``recall`` on
    pr.csv's: for the positive class when binary, micro-averaged one-vs-rest otherwise
    (every case-class pair one decision, as in roc_table). None where undefined.
    """
    _check_threshold(threshold)
    y_true, probs = _validate_classification(y_true, probs, classes)
    binary = len(classes) == 2
    rule = "threshold" if threshold is not None and binary else "argmax"
    y_pred = decide(probs, threshold)
    if binary:
        truth, called = y_true == 1, y_pred == 1
    else:
        onehot = np.arange(len(classes))[None, :]
        truth = (y_true[:, None] == onehot).ravel()
        called = (y_pred[:, None] == onehot).ravel()
    tp = float(np.sum(truth & called))
    fp = float(np.sum(~truth & called))
    pos, neg = float(truth.sum()), float((~truth).sum())
    return {
        "rule": rule,
        "threshold": float(threshold) if rule == "threshold" else None,
        "source": "classifier meta.json threshold" if rule == "threshold" else "argmax",
        "fpr": fp / neg if neg else None,
        "tpr": tp / pos if pos else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / pos if pos else None,
    }


def pr_table(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Precision-recall points (precision, recall, threshold) for pr.csv, same scores as ROC.

    The last point (recall 0, precision 1) has no threshold in scikit-learn: NaN here.
    """
    pairs = _curve_inputs(y_true, probs, classes)
    if pairs is None:
        return pd.DataFrame({"precision": [], "recall": [], "threshold": []}, dtype=float)
    precision, recall, thresholds = skm.precision_recall_curve(*pairs)
    return pd.DataFrame(
        {"precision": precision, "recall": recall, "threshold": np.append(thresholds, np.nan)}
    )


# --------------------------------------------------------------------- calibration


def _calibration_inputs(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, outcome): P(positive) and is-positive when binary, else top-label."""
    if probs.shape[1] == 2:
        return probs[:, 1], (y_true == 1).astype(np.float64)
    top = probs.argmax(axis=1)
    return probs.max(axis=1), (top == y_true).astype(np.float64)


def _bin_ids(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip((confidence * n_bins).astype(np.int64), 0, n_bins - 1)


def _batched_ece(
    conf: np.ndarray, outcome: np.ndarray, bins: np.ndarray, n_bins: int
) -> np.ndarray:
    """(B, N) confidences, outcomes and bin ids -> (B,) expected calibration errors."""
    n_batch, n = conf.shape
    flat = (np.arange(n_batch)[:, None] * n_bins + bins).ravel()
    size = n_batch * n_bins
    conf_sum = np.bincount(flat, weights=conf.ravel(), minlength=size).reshape(n_batch, n_bins)
    out_sum = np.bincount(flat, weights=outcome.ravel(), minlength=size).reshape(n_batch, n_bins)
    return np.abs(conf_sum - out_sum).sum(axis=1) / n


def calibration(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    n_bins: int,
    n_boot: int,
    ci_level: float,
    seed: int,
) -> dict[str, Any]:
    """Reliability diagram bins and the expected calibration error with a bootstrap CI.

    Binary: the predicted probability of the positive class against the observed fraction
    of positives. Multi-class: top-label confidence against accuracy. Equal-width bins on
    [0, 1]; ECE = sum over bins of (bin size / N) * |mean confidence - observed rate|.
    Returns ``{"kind", "n_bins", "ece": {"value", "ci_low", "ci_high"}, "bins": [{"low",
    "high", "count", "mean_confidence", "observed"}]}`` (empty bins: means None).
    """
    _check_ci(n_boot, ci_level)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y_true, probs = _validate_classification(y_true, probs, classes)
    conf, outcome = _calibration_inputs(y_true, probs)
    bins = _bin_ids(conf, n_bins)
    point = float(_batched_ece(conf[None], outcome[None], bins[None], n_bins)[0])
    samples = np.empty(0)
    if n_boot:
        idx = stratified_resamples(y_true, n_boot, seed)
        samples = _batched_ece(conf[idx], outcome[idx], bins[idx], n_bins)
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
                "observed": float(outcome[members].mean()) if count else None,
            }
        )
    kind = f"P({classes[-1]})" if len(classes) == 2 else "top-label confidence"
    return {
        "kind": kind,
        "n_bins": int(n_bins),
        "ece": _interval(point, samples, ci_level),
        "bins": rows,
    }


# ----------------------------------------------------------------------- subgroups

# Manifest/index columns that define subgroups, when present (other stages may add them).
SUBGROUP_COLUMNS = ("sex", "age_band", "age", "site", "scanner", "manufacturer")
AGE_BANDS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 60, "40-59"), (60, 80, "60-79"))
SUBGROUP_METRICS = ("accuracy", "auc", "sensitivity", "specificity")


def age_band(age: object) -> str:
    """ "0-17", "18-39", "40-59", "60-79", "80+" or "unknown" (DICOM "045Y" is read too)."""
    text = str(age).strip().upper().rstrip("Y")
    try:
        years = float(text)
    except ValueError:
        return "unknown"
    if not np.isfinite(years) or years < 0:
        return "unknown"
    for low, high, name in AGE_BANDS:
        if low <= years < high:
            return name
    return "80+"


def subgroup_columns(frame: pd.DataFrame) -> list[str]:
    """The subgroup columns the table has with at least one non-empty value."""
    found = []
    for column in SUBGROUP_COLUMNS:
        if column not in frame.columns:
            continue
        if column == "age" and "age_band" in found:
            continue
        values = frame[column].astype(str).str.strip()
        if (values != "").any() and frame[column].notna().any():
            found.append("age_band" if column == "age" else column)
    return found


def subgroup_metrics(
    groups: pd.DataFrame,
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    n_boot: int,
    ci_level: float,
    seed: int,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Metrics with bootstrap CIs per value of each subgroup column of ``groups``.

    ``groups`` has one row per case, aligned with y_true. Columns come from
    :data:`SUBGROUP_COLUMNS` (``age`` is banded into ``age_band``); an empty value is the
    group "unknown". Returns ``{"columns": [...], "groups": [{"column", "group", "n",
    "n_per_class", "metrics": {name: interval}}]}``; ``columns`` is empty when the table
    has none of them (the report then says so).
    """
    y_true, probs = _validate_classification(y_true, probs, classes)
    groups = groups.reset_index(drop=True)
    if len(groups) != len(y_true):
        raise ValueError(f"{len(groups)} subgroup rows for {len(y_true)} cases")
    columns = subgroup_columns(groups)
    rows = []
    for column in columns:
        if column == "age_band" and "age_band" not in groups.columns:
            values = groups["age"].map(age_band)
        else:
            values = (
                groups[column].astype(str).str.strip().replace({"": "unknown", "nan": "unknown"})
            )
        for value in sorted(values.unique()):
            members = (values == value).to_numpy()
            result = classification_metrics(
                y_true[members], probs[members], classes, n_boot, ci_level, seed, threshold
            )["classification"]
            rows.append(
                {
                    "column": column,
                    "group": str(value),
                    "n": int(members.sum()),
                    "n_per_class": {
                        name: int(np.sum(y_true[members] == k)) for k, name in enumerate(classes)
                    },
                    "metrics": {name: result[name] for name in SUBGROUP_METRICS},
                }
            )
    return {"columns": columns, "groups": rows}


def misclassified(predictions: pd.DataFrame, limit: int = 50) -> pd.DataFrame:
    """Wrong predictions, most confident first: image_id, label, pred_label, confidence."""
    wrong = predictions[predictions["label"] != predictions["pred_label"]].copy()
    if wrong.empty:
        return pd.DataFrame(columns=["image_id", "label", "pred_label", "confidence"])
    wrong["confidence"] = [float(row[f"prob_{row['pred_label']}"]) for _, row in wrong.iterrows()]
    wrong = wrong.sort_values(["confidence", "image_id"], ascending=[False, True], kind="stable")
    return (
        wrong[["image_id", "label", "pred_label", "confidence"]].head(limit).reset_index(drop=True)
    )

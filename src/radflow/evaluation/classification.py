"""Classification metrics of the evaluation stage: point estimates (scikit-learn) with
bootstrap intervals, the ROC / PR / confusion tables, the predictions table and the
operating point.

The bootstrap recomputes the same quantities from batched confusion matrices and rank sums
in numpy, because calling scikit-learn 6 x 1000 times costs seconds; a test checks that both
routes agree on the full sample.

Conventions (see docs/CONTRACTS.md, metrics.json):

- ``probs[:, k]`` is the probability of ``classes[k]``. The operating point decides the
  predicted class (:func:`radflow.learning.calibration.decide`): binary with a
  ``threshold`` (from the classifier's meta.json), positive when ``probs[:, 1] >=
  threshold``; otherwise (no threshold, or multi-class) the argmax. metrics.json records
  which as ``operating_point``.
- Binary (2 classes): sensitivity, specificity, F1 and AUC are for the positive class, which
  is the last class (``classes[-1]``).
- Multi-class: sensitivity = macro recall (= balanced accuracy), specificity = macro
  one-vs-rest specificity, F1 = macro F1, AUC = macro one-vs-rest AUC.
- Confidence intervals: stratified bootstrap (:mod:`radflow.evaluation.bootstrap`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from radflow.evaluation.bootstrap import check_ci, interval, stratified_resamples
from radflow.learning.calibration import decide

METRICS = ("accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity", "f1")


def validate_classification(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(int64 labels, float64 probs), or a clear error before any metric is computed on
    misshapen, empty, out-of-range or non-finite input (also used by calibration, subgroups)."""
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


def check_threshold(threshold: float | None) -> None:
    """Refuse an operating threshold that is not a probability."""
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")


def sklearn_point_estimates(
    y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """The metrics on the full sample by scikit-learn: the reference the batched numpy
    route (:func:`batched_metrics`, used by the bootstrap) is tested against."""
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


def batched_metrics(
    y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> dict[str, np.ndarray]:
    """All metrics for a batch of samples: y_true (B, N), probs (B, N, C)."""
    n_classes = probs.shape[2]
    cm = _batched_confusion(y_true, decide(probs, threshold), n_classes)
    out = _metrics_from_confusion(cm)
    out["auc"] = _batched_auc(y_true, probs)
    return out


def _bootstrap_samples(
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
        batch = batched_metrics(y_true[rows], probs[rows], threshold)
        for name in METRICS:
            parts[name].append(batch[name])
    return {
        name: np.concatenate(values) if values else np.empty(0) for name, values in parts.items()
    }


# ---------------------------------------------------------------------- metrics.json


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
    check_ci(n_boot, ci_level)
    check_threshold(threshold)
    y_true, probs = validate_classification(y_true, probs, classes)
    points = sklearn_point_estimates(y_true, probs, threshold)
    samples = _bootstrap_samples(y_true, probs, n_boot, seed, threshold=threshold)
    y_pred = decide(probs, threshold)
    matrix = skm.confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    return {
        "classification": {
            name: interval(points[name], samples[name], ci_level) for name in METRICS
        },
        "confusion_matrix": {"labels": list(classes), "matrix": matrix.tolist()},
    }


def positive_class(classes: list[str]) -> str | None:
    """metrics.json's ``positive_class``: the last class when binary, else None."""
    return classes[-1] if len(classes) == 2 else None


def operating_point(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str], threshold: float | None
) -> dict[str, Any]:
    """metrics.json's ``operating_point``: the decision rule and where it sits on the curves.

    ``rule`` is "threshold" (binary, threshold from the classifier's meta.json) or "argmax".
    ``fpr``/``tpr`` locate the point on roc.csv's curve and ``precision``/``recall`` on
    pr.csv's: for the positive class when binary, micro-averaged one-vs-rest otherwise
    (every case-class pair one decision, as in roc_table). None where undefined.
    """
    check_threshold(threshold)
    y_true, probs = validate_classification(y_true, probs, classes)
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


# ---------------------------------------------------------------------- tables


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


def _curve_inputs(
    y_true: np.ndarray, probs: np.ndarray, classes: list[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """(is positive, score) pairs for ROC and PR curves; None when only one class is present.

    Binary: the positive (last) class. Multi-class: micro-average one-vs-rest.
    """
    y_true, probs = validate_classification(y_true, probs, classes)
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

"""The report's figures: matplotlib PNGs (Agg on a bare Figure, no pyplot state, no
metadata, so the same data gives the same bytes) of the ROC and precision-recall curves,
the reliability diagram, the confusion matrix and the training curves.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from radflow.report.formatting import format_interval, operating_label


def _mpl_text(text: object) -> str:
    """Matplotlib reads $...$ as mathtext (and fails on a lone $): print it literally."""
    return str(text).replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    """PNG bytes without metadata, so identical figures give identical bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    return buffer.getvalue()


def _mark(ax: Any, x: float | None, y: float | None, label: str) -> None:
    if x is not None and y is not None:
        ax.plot([x], [y], marker="o", markersize=9, color="tab:red", linestyle="none", label=label)


def roc_png(
    roc_df: pd.DataFrame, auc: float | None, point: Mapping[str, Any] | None = None
) -> bytes:
    """ROC curve (fpr vs tpr) with the chance diagonal; AUC in the title when defined.

    ``point`` (metrics.json's operating_point) is marked on the curve.
    """
    fig = _figure(4.2, 4.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    if len(roc_df):
        ax.plot(roc_df["fpr"], roc_df["tpr"], color="tab:blue", linewidth=2, label="model")
    else:
        ax.text(0.5, 0.5, "ROC undefined\n(one class only)", ha="center", va="center")
    if point:
        _mark(ax, point.get("fpr"), point.get("tpr"), operating_label(point))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title("ROC" if auc is None else f"ROC (AUC = {auc:.3f})")
    ax.legend(loc="lower right")
    return _png(fig)


def pr_png(pr_df: pd.DataFrame, prevalence: float | None, point: Mapping[str, Any] | None) -> bytes:
    """Precision-recall curve with the no-skill line (prevalence) and the operating point."""
    fig = _figure(4.2, 4.0)
    ax = fig.add_subplot()
    if prevalence is not None:
        ax.axhline(prevalence, linestyle="--", color="grey", linewidth=1, label="no skill")
    if len(pr_df):
        ax.plot(pr_df["recall"], pr_df["precision"], color="tab:blue", linewidth=2, label="model")
    else:
        ax.text(0.5, 0.5, "PR curve undefined\n(one class only)", ha="center", va="center")
    if point:
        _mark(ax, point.get("recall"), point.get("precision"), operating_label(point))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (PPV)")
    ax.set_title("Precision-recall")
    ax.legend(loc="lower left")
    return _png(fig)


def reliability_png(calibration: Mapping[str, Any]) -> bytes:
    """Reliability diagram: accuracy (observed rate) against mean confidence per bin, the bin
    counts below; the bins and ECE are metrics.json's calibration (top-label confidence)."""
    fig = _figure(4.2, 4.6)
    ax, hist = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    bins = [b for b in calibration.get("bins", []) if b.get("count")]
    if bins:
        ax.plot(
            [b["mean_confidence"] for b in bins],
            [b["observed"] for b in bins],
            marker="o",
            color="tab:blue",
            label="model",
        )
    all_bins = calibration.get("bins", [])
    hist.bar(
        [(b["low"] + b["high"]) / 2 for b in all_bins],
        [b["count"] for b in all_bins],
        width=[(b["high"] - b["low"]) * 0.9 for b in all_bins],
        color="tab:blue",
    )
    ece = calibration.get("ece") or {}
    ax.set_title("Reliability (ECE " + format_interval(ece) + ")")
    top_label = calibration.get("kind") == "top-label confidence"
    ax.set_ylabel("Accuracy" if top_label else "Observed rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(loc="upper left")
    hist.set_xlabel(_mpl_text(calibration.get("kind", "confidence")))
    hist.set_ylabel("cases")
    return _png(fig)


def confusion_png(matrix: Sequence[Sequence[int]] | np.ndarray, labels: Sequence[str]) -> bytes:
    """Confusion matrix heat map with counts; rows actual, columns predicted."""
    counts = np.asarray(matrix)
    fig = _figure(1.6 + 0.9 * len(labels), 1.2 + 0.9 * len(labels))
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues", vmin=0)
    threshold = counts.max() / 2.0 if counts.size else 0
    for (i, j), count in np.ndenumerate(counts):
        colour = "white" if count > threshold else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=colour)
    ticks = range(len(labels))
    ax.set_xticks(ticks, [_mpl_text(lab) for lab in labels], rotation=30, ha="right")
    ax.set_yticks(ticks, [_mpl_text(lab) for lab in labels])
    ax.set_xlabel("Predicted")
    ax.set_ylabel("Actual")
    return _png(fig)


def history_png(history_df: pd.DataFrame, title: str, metric_label: str = "val metric") -> bytes:
    """Training curves: train/val loss and the validation metric per epoch (a model's history,
    radflow.learning.history)."""
    fig = _figure(8.0, 3.2)
    loss_ax, metric_ax = fig.subplots(1, 2)
    epochs = history_df["epoch"]
    for column, colour in (("train_loss", "tab:blue"), ("val_loss", "tab:orange")):
        if column in history_df:
            loss_ax.plot(epochs, history_df[column], marker="o", color=colour, label=column)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    if "val_metric" in history_df:
        metric_ax.plot(epochs, history_df["val_metric"], marker="o", color="tab:green")
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel(_mpl_text(metric_label))
    fig.suptitle(_mpl_text(title))
    return _png(fig)

"""Report stage: one self-contained HTML page per modality and an index page.

Pure functions: the CLI reads metrics.json, roc.csv, history.csv, explanations.json (and
the overlay PNG bytes), meta.json and params, puts them in the context dicts below and
writes the returned HTML. Figures are drawn here with matplotlib (Agg, no pyplot state)
and embedded as base64 data URIs; CSS is inline; there are no external links or scripts.
Jinja2 autoescaping is on for every template, so labels, ids and params from input data
cannot inject markup.

Context for :func:`render_modality_page` (:class:`ModalityContext`)::

    {
      "modality": "mri",                        # required; [A-Za-z0-9_-]+
      "metrics": {...},                         # required; metrics.json as written by evaluate
      "roc": pd.DataFrame | None,               # roc.csv (fpr, tpr, threshold)
      "histories": {"classifier": df, "segmenter": df},  # history.csv per trained model
      "explanations": [ExplanationItem, ...],   # explanations.json rows + "png": bytes
      "meta": {...},                            # classifier meta.json
      "segmenter_meta": {...} | None,           # segmenter meta.json (shows "not trained")
      "params": {...},                          # params.yaml as loaded
      "versions": {"torch": "2.4.0", ...},      # default: meta["versions"]
      "generated_at": "2024-01-01T00:00:00Z",   # default: now (UTC)
      "title": "radflow - MRI",                 # optional
    }

Cards for :func:`render_index` (:class:`IndexCard`): ``{"modality": "mri", "metrics":
metrics.json dict or None}``; the link is always ``{modality}.html`` (relative, the index
sits next to the modality pages). Context for the index (:class:`IndexContext`):
``{"title", "generated_at", "params_hash"}``, all optional.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Required, TypedDict

import numpy as np
import pandas as pd
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from radflow import __version__

TEMPLATES = Path(__file__).with_name("templates")

METRIC_LABELS = {
    "auc": "AUC (ROC)",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "f1": "F1 score",
}
SEGMENTATION_LABELS = {
    "dice": "Dice (all images)",
    "iou": "IoU (all images)",
    "dice_lesion": "Dice (images with a lesion)",
    "iou_lesion": "IoU (images with a lesion)",
}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class ExplanationItem(TypedDict):
    """A row of explanations.json (see radflow.explain) plus the overlay PNG's bytes."""

    image_id: str
    method: str
    file: str
    label: str
    pred_label: str
    prob: float
    deletion_auc: float
    png: bytes


class ModalityContext(TypedDict, total=False):
    """Input of render_modality_page; see the module docstring."""

    modality: Required[str]
    metrics: Required[dict[str, Any]]
    roc: pd.DataFrame | None
    histories: Mapping[str, pd.DataFrame]
    explanations: Sequence[ExplanationItem]
    meta: dict[str, Any]
    segmenter_meta: dict[str, Any] | None
    params: dict[str, Any]
    versions: dict[str, str]
    generated_at: str
    title: str


class IndexCard(TypedDict):
    """One modality on the index page; metrics None when it has not been evaluated."""

    modality: str
    metrics: dict[str, Any] | None


class IndexContext(TypedDict, total=False):
    title: str
    generated_at: str
    params_hash: str


# ----------------------------------------------------------------------- formatting


def format_value(value: float | None, digits: int = 3) -> str:
    """A metric value, or "n/a" for null (undefined)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_ci(interval: Mapping[str, Any] | None, digits: int = 3) -> str:
    """The CI as "[low, high]", or "n/a" when the interval is undefined."""
    if not interval or interval.get("ci_low") is None or interval.get("ci_high") is None:
        return "n/a"
    return f"[{interval['ci_low']:.{digits}f}, {interval['ci_high']:.{digits}f}]"


def format_interval(interval: Mapping[str, Any] | None, digits: int = 3) -> str:
    """Value and CI as "value [low, high]" (index cards); "n/a" when the value is null."""
    if not interval or interval.get("value") is None:
        return "n/a"
    ci = format_ci(interval, digits)
    value = format_value(interval["value"], digits)
    return value if ci == "n/a" else f"{value} {ci}"


def _safe_name(modality: str) -> str:
    """Modality names become file names and links: refuse anything but [A-Za-z0-9_-]."""
    if not _SAFE_NAME.match(str(modality)):
        raise ValueError(f"modality name {modality!r} must match [A-Za-z0-9_-]+")
    return str(modality)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -------------------------------------------------------------------------- figures


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


def data_uri(png_bytes: bytes) -> str:
    """Embed a PNG in the page itself (no file next to the HTML to lose)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def roc_png(roc_df: pd.DataFrame, auc: float | None) -> bytes:
    """ROC curve (fpr vs tpr) with the chance diagonal; AUC in the title when defined."""
    fig = _figure(4.2, 4.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    if len(roc_df):
        ax.plot(roc_df["fpr"], roc_df["tpr"], color="tab:blue", linewidth=2, label="model")
    else:
        ax.text(0.5, 0.5, "ROC undefined\n(one class only)", ha="center", va="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title("ROC" if auc is None else f"ROC (AUC = {auc:.3f})")
    ax.legend(loc="lower right")
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
    """Training curves: train/val loss and the validation metric per epoch (history.csv)."""
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


# ------------------------------------------------------------------ view models


def _metric_rows(section: Mapping[str, Any] | None, labels: Mapping[str, str]) -> list[dict]:
    if not section:
        return []
    return [
        {
            "key": key,
            "name": label,
            "value": format_value(section[key].get("value") if section[key] else None),
            "ci": format_ci(section[key]),
        }
        for key, label in labels.items()
        if key in section
    ]


def _history_figures(histories: Mapping[str, pd.DataFrame]) -> list[dict[str, str]]:
    metric_for = {"classifier": "val AUC", "segmenter": "val Dice"}
    figures = []
    for name, frame in histories.items():
        if frame is None or frame.empty:
            continue
        label = metric_for.get(name, "val metric")
        png = history_png(frame, f"{name} training", metric_label=label)
        figures.append({"name": str(name), "uri": data_uri(png)})
    return figures


def _explanation_cards(items: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    cards = []
    for item in items:
        png = item.get("png")
        if not png:
            raise ValueError(
                f"explanation {item.get('image_id')!r}/{item.get('method')!r} has no png bytes; "
                "read the overlay file named in explanations.json into 'png'"
            )
        cards.append(
            {
                "uri": data_uri(png),
                "image_id": str(item["image_id"]),
                "method": str(item["method"]),
                "label": str(item["label"]),
                "pred_label": str(item["pred_label"]),
                "prob": format_value(item.get("prob")),
                "deletion_auc": format_value(item.get("deletion_auc")),
            }
        )
    return cards


def _confusion_view(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    confusion = metrics.get("confusion_matrix")
    if not confusion:
        return None
    labels, matrix = list(confusion["labels"]), confusion["matrix"]
    return {
        "labels": [str(lab) for lab in labels],
        "rows": [
            {"label": str(lab), "counts": row} for lab, row in zip(labels, matrix, strict=True)
        ],
        "uri": data_uri(confusion_png(matrix, labels)),
    }


def _modality_view(context: ModalityContext) -> dict[str, Any]:
    modality = _safe_name(context["modality"])
    metrics = context["metrics"]
    meta = context.get("meta") or {}
    classification = metrics.get("classification") or {}
    roc = context.get("roc")
    auc = (classification.get("auc") or {}).get("value")
    seg_meta = context.get("segmenter_meta") or {}
    return {
        "title": context.get("title") or f"radflow - {modality}",
        "modality": modality,
        "n_test": metrics.get("n_test"),
        "classes": [str(c) for c in metrics.get("classes") or []],
        "positive_class": metrics.get("positive_class"),
        "ci_percent": f"{100 * float(metrics.get('ci_level', 0.95)):g}",
        "bootstrap_samples": metrics.get("bootstrap_samples"),
        "metric_rows": _metric_rows(classification, METRIC_LABELS),
        "roc_uri": data_uri(roc_png(roc, auc)) if roc is not None else None,
        "confusion": _confusion_view(metrics),
        "segmentation": metrics.get("segmentation"),
        "segmentation_rows": _metric_rows(metrics.get("segmentation"), SEGMENTATION_LABELS),
        "segmenter_reason": seg_meta.get("reason") if seg_meta.get("trained") is False else None,
        "histories": _history_figures(context.get("histories") or {}),
        "explanations": _explanation_cards(context.get("explanations") or []),
        "params_yaml": yaml.safe_dump(context.get("params") or {}, sort_keys=False),
        "versions": sorted((context.get("versions") or meta.get("versions") or {}).items()),
        "params_hash": metrics.get("params_hash") or meta.get("params_hash") or "n/a",
        "model_params_hash": meta.get("params_hash"),
        "weights_origin": meta.get("weights_origin") or "n/a",
        "arch": meta.get("arch"),
        "best_epoch": meta.get("best_epoch"),
        "generated_at": context.get("generated_at") or _now(),
        "radflow_version": __version__,
    }


def _index_card_view(card: IndexCard) -> dict[str, Any]:
    modality = _safe_name(card["modality"])
    metrics = card.get("metrics") or {}
    classification = metrics.get("classification") or {}
    segmentation = metrics.get("segmentation") or {}
    return {
        "modality": modality,
        "href": f"{modality}.html",
        "evaluated": bool(metrics),
        "n_test": metrics.get("n_test"),
        "auc": format_interval(classification.get("auc")),
        "accuracy": format_interval(classification.get("accuracy")),
        "dice": format_interval(segmentation.get("dice")) if segmentation else None,
    }


# -------------------------------------------------------------------------- render


def _environment() -> Environment:
    """Autoescape on for every template and string; a missing variable is an error."""
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_modality_page(context: ModalityContext) -> str:
    """The self-contained HTML report of one modality."""
    return _environment().get_template("modality.html").render(**_modality_view(context))


def render_index(cards: Sequence[IndexCard], context: IndexContext | None = None) -> str:
    """The index page: one card per modality with its key metrics and a link to its page."""
    context = context or {}
    return (
        _environment()
        .get_template("index.html")
        .render(
            title=context.get("title") or "radflow reports",
            generated_at=context.get("generated_at") or _now(),
            params_hash=context.get("params_hash"),
            cards=[_index_card_view(card) for card in cards],
            radflow_version=__version__,
        )
    )

"""View models of the report pages: the contexts the CLI assembles (TypedDicts) and the
plain dicts of formatted strings and figure data URIs that the templates show.

Pure functions: the CLI reads metrics.json, roc.csv, the training histories (each model's
dvclive/), explanations.json (and the overlay PNG bytes), meta.json and params, puts them
in the context dicts below and writes the HTML that radflow.report.pages returns. Figures
(radflow.report.figures) are embedded as base64 data URIs; CSS is inline; there are no
external links or scripts.

Context for ``pages.render_modality_page`` (:class:`ModalityContext`)::

    {
      "modality": "mri",                        # required; [A-Za-z0-9_-]+
      "metrics": {...},                         # required; metrics.json as written by evaluate
      "roc": pd.DataFrame | None,               # roc.csv (fpr, tpr, threshold)
      "pr": pd.DataFrame | None,                # pr.csv (precision, recall, threshold)
      "predictions": pd.DataFrame | None,       # predictions.csv (misclassified cases)
      "histories": {"classifier": df, "segmenter": df},  # per trained model (its dvclive/)
      "explanations": [ExplanationItem, ...],   # explanations.json rows + "png": bytes
      "faithfulness": {...} | None,             # faithfulness.json (per-method summary)
      "cases": [CaseItem, ...],                 # cases.json rows + "png": bytes (browser)
      "git_revision": "abc1234",                # the code that made the page
      "code_digest": "3f9a...",                 # codegraph.digest("report"): the code too
      "meta": {...},                            # classifier meta.json
      "segmenter_meta": {...} | None,           # segmenter meta.json (shows "not trained")
      "segmentation_overlays": {file: bytes},   # evaluation overlays/*.png (best/median/worst)
      "params": {...},                          # params.yaml as loaded
      "versions": {"torch": "2.4.0", ...},      # default: meta["versions"]
      "generated_at": "2024-01-01T00:00:00Z",   # default: now (UTC)
      "title": "radflow - MRI",                 # optional
    }

Cards for ``pages.render_index`` (:class:`IndexCard`): ``{"modality": "mri", "metrics":
metrics.json dict or None}``; each modality gets a classifier card and a segmenter card that
link into ``{modality}.html`` (relative, the index sits next to the modality pages). Context
for the index (:class:`IndexContext`): ``{"title", "generated_at", "params_hash",
"code_digest", "git_revision", "versions"}``, all optional.

Both pages carry a few lines of inline JavaScript (no library): click a table header of a
``table.sortable`` to sort it, filter the case browser, and on load set
``data-ready="1"`` and ``data-render-ms`` (time from navigation start) on ``<html>`` for
the browser test.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Required, TypedDict

import pandas as pd
import yaml

from radflow import __version__
from radflow.evaluation.classification import misclassified
from radflow.evaluation.subgroups import SUBGROUP_COLUMNS, SUBGROUP_METRICS
from radflow.explain.stage import ExplanationRecord
from radflow.learning.calibration import ECE_CONVENTION
from radflow.report.figures import confusion_png, history_png, pr_png, reliability_png, roc_png
from radflow.report.formatting import format_ci, format_interval, format_value, operating_label

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
    "hd95": "HD95 in pixels (images with truth and prediction)",
    "fp_rate_empty": "False-positive rate (lesion-free images with any prediction)",
    "fn_rate_lesion": "Missed lesions (lesion images with an empty prediction)",
}


PATIENT_LABELS = {
    "dice": "Dice per patient (slices pooled)",
    "iou": "IoU per patient (slices pooled)",
    "hd95": "HD95 per patient (mean over slices, pixels)",
}


_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class ExplanationItem(ExplanationRecord):
    """A row of explanations.json (see radflow.explain) plus the overlay PNG's bytes."""

    png: bytes


class CaseItem(TypedDict):
    """A row of cases.json (see radflow.explain.stage.case_browser) plus the thumbnail's bytes."""

    image_id: str
    label: str
    pred_label: str
    confidence: float
    correct: bool
    file: str
    png: bytes


class ModalityContext(TypedDict, total=False):
    """Input of render_modality_page; see the module docstring."""

    modality: Required[str]
    metrics: Required[dict[str, Any]]
    roc: pd.DataFrame | None
    pr: pd.DataFrame | None
    predictions: pd.DataFrame | None
    histories: Mapping[str, pd.DataFrame]
    explanations: Sequence[ExplanationItem]
    faithfulness: dict[str, Any] | None
    cases: Sequence[CaseItem]
    git_revision: str
    code_digest: str
    meta: dict[str, Any]
    segmenter_meta: dict[str, Any] | None
    segmentation_overlays: Mapping[str, bytes]
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
    code_digest: str
    git_revision: str
    versions: dict[str, str]


def short_digest(digest: str | None) -> str:
    """A code digest as the report shows it: its first 12 hex digits, like a git revision."""
    return digest[:12] if digest else "n/a"


def safe_name(modality: str) -> str:
    """Modality names become file names and links: refuse anything but [A-Za-z0-9_-]."""
    if not _SAFE_NAME.match(str(modality)):
        raise ValueError(f"modality name {modality!r} must match [A-Za-z0-9_-]+")
    return str(modality)


def now() -> str:
    """The page's timestamp, UTC to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def data_uri(png_bytes: bytes) -> str:
    """Embed a PNG in the page itself (no file next to the HTML to lose)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


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


def _hit_text(hit: bool | None) -> str:
    return "n/a" if hit is None else ("hit" if hit else "miss")


def explanation_cards(
    items: Sequence[Mapping[str, Any]], ranks: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Every overlay with its own faithfulness scores, grouped by method in rank order."""
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
                "insertion_auc": format_value(item.get("insertion_auc")),
                "random_deletion_auc": format_value(item.get("random_deletion_auc")),
                "random_insertion_auc": format_value(item.get("random_insertion_auc")),
                "pointing": _hit_text(item.get("pointing_hit")),
                "energy": format_value(item.get("energy_in_lesion")),
                "rank": ranks.get(str(item["method"])),
            }
        )
    order = {m: i for i, m in enumerate(sorted(ranks, key=ranks.get))}
    cards.sort(key=lambda c: (order.get(c["method"], len(order)), c["method"]))
    return cards


def _faithfulness_rows(faithfulness: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not faithfulness:
        return []
    rows = []
    for row in faithfulness.get("methods", []):
        hit = row.get("pointing_hit_rate")
        rows.append(
            {
                "rank": row.get("rank"),
                "method": str(row["method"]),
                "n": row.get("n"),
                "deletion": format_value(row.get("deletion_auc")),
                "random_deletion": format_value(row.get("random_deletion_auc")),
                "deletion_gain": format_value(row.get("deletion_gain")),
                "insertion": format_value(row.get("insertion_auc")),
                "random_insertion": format_value(row.get("random_insertion_auc")),
                "insertion_gain": format_value(row.get("insertion_gain")),
                "score": format_value(row.get("score")),
                "pointing": "n/a" if hit is None else f"{hit:.2f}",
                "n_localised": row.get("n_localised", 0),
                "energy": format_value(row.get("energy_in_lesion")),
            }
        )
    return rows


def _case_cards(cases: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    cards = []
    for case in cases:
        if not case.get("png"):
            raise ValueError(f"case {case.get('image_id')!r} has no png bytes")
        cards.append(
            {
                "uri": data_uri(case["png"]),
                "image_id": str(case["image_id"]),
                "label": str(case["label"]),
                "pred_label": str(case["pred_label"]),
                "confidence": format_value(case.get("confidence")),
                "correct": bool(case.get("correct")),
            }
        )
    return cards


def _misclassified_rows(
    predictions: pd.DataFrame | None, cases: Sequence[Mapping[str, Any]], limit: int = 50
) -> list[dict[str, Any]] | None:
    """Wrong predictions, most confident first, with the case thumbnail where there is one."""
    if predictions is None:
        return None
    thumbs = {str(c["image_id"]): data_uri(c["png"]) for c in cases if c.get("png")}
    table = misclassified(predictions, limit)
    return [
        {
            "image_id": str(row.image_id),
            "label": str(row.label),
            "pred_label": str(row.pred_label),
            "confidence": format_value(row.confidence),
            "uri": thumbs.get(str(row.image_id)),
        }
        for row in table.itertuples(index=False)
    ]


def _subgroup_view(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    sub = metrics.get("subgroups")
    if sub is None:
        return None
    rows = [
        {
            "column": str(g["column"]),
            "group": str(g["group"]),
            "n": g["n"],
            "n_per_class": ", ".join(f"{k}: {v}" for k, v in g.get("n_per_class", {}).items()),
            "cells": [
                {
                    "value": format_value((g["metrics"].get(m) or {}).get("value")),
                    "ci": format_ci(g["metrics"].get(m)),
                }
                for m in SUBGROUP_METRICS
            ],
        }
        for g in sub.get("groups", [])
    ]
    return {
        "columns": [str(c) for c in sub.get("columns", [])],
        "looked_for": ", ".join(SUBGROUP_COLUMNS),
        "metrics": [METRIC_LABELS.get(m, m) for m in SUBGROUP_METRICS],
        "rows": rows,
    }


def _data_hashes(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    return sorted((str(k), str(v)) for k, v in (metrics.get("inputs") or {}).items())


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


def modality_view(context: ModalityContext) -> dict[str, Any]:
    """Everything modality.html shows, formatted, with the figures drawn and embedded."""
    modality = safe_name(context["modality"])
    metrics = context["metrics"]
    meta = context.get("meta") or {}
    classification = metrics.get("classification") or {}
    roc, pr = context.get("roc"), context.get("pr")
    auc = (classification.get("auc") or {}).get("value")
    point = metrics.get("operating_point")
    calibration = metrics.get("calibration")
    seg_meta = context.get("segmenter_meta") or {}
    faithfulness = context.get("faithfulness")
    ranks = {
        str(r["method"]): int(r["rank"])
        for r in (faithfulness or {}).get("methods", [])
        if r.get("rank") is not None
    }
    cases = list(context.get("cases") or [])
    matrix = (metrics.get("confusion_matrix") or {}).get("matrix") or []
    n_total = sum(sum(row) for row in matrix)
    prevalence = sum(matrix[-1]) / n_total if len(matrix) == 2 and n_total else None
    metric_rows = _metric_rows(classification, METRIC_LABELS)
    if calibration:
        metric_rows.append(
            {
                "key": "ece",
                "name": "Expected calibration error (lower is better)",
                "value": format_value(calibration["ece"].get("value")),
                "ci": format_ci(calibration["ece"]),
            }
        )
    return {
        "title": context.get("title") or f"radflow - {modality}",
        "modality": modality,
        "n_test": metrics.get("n_test"),
        "classes": [str(c) for c in metrics.get("classes") or []],
        "positive_class": metrics.get("positive_class"),
        "ci_percent": f"{100 * float(metrics.get('ci_level', 0.95)):g}",
        "bootstrap_samples": metrics.get("bootstrap_samples"),
        "metric_rows": metric_rows,
        "operating_point": point,
        "operating_text": operating_label(point) if point else None,
        "roc_uri": data_uri(roc_png(roc, auc, point)) if roc is not None else None,
        "pr_uri": data_uri(pr_png(pr, prevalence, point)) if pr is not None else None,
        "calibration": calibration,
        "calibration_uri": data_uri(reliability_png(calibration)) if calibration else None,
        "ece_convention": ECE_CONVENTION,
        "confusion": _confusion_view(metrics),
        "subgroups": _subgroup_view(metrics),
        "misclassified": _misclassified_rows(context.get("predictions"), cases),
        "cases": _case_cards(cases),
        "segmentation": metrics.get("segmentation"),
        "segmentation_rows": _metric_rows(metrics.get("segmentation"), SEGMENTATION_LABELS),
        "segmentation_patient_rows": _metric_rows(
            (metrics.get("segmentation") or {}).get("per_patient"), PATIENT_LABELS
        ),
        "segmentation_cases": _segmentation_cases(
            metrics.get("segmentation"), context.get("segmentation_overlays") or {}
        ),
        "segmenter_settings": segmenter_settings(seg_meta),
        "segmenter_reason": seg_meta.get("reason") if seg_meta.get("trained") is False else None,
        "histories": _history_figures(context.get("histories") or {}),
        "faithfulness": _faithfulness_rows(faithfulness),
        "faithfulness_settings": {
            k: (faithfulness or {}).get(k) for k in ("steps", "random_orders", "pointing_tolerance")
        },
        "explanations": explanation_cards(context.get("explanations") or [], ranks),
        "params_yaml": yaml.safe_dump(context.get("params") or {}, sort_keys=False),
        "versions": sorted((context.get("versions") or meta.get("versions") or {}).items()),
        "data_hashes": _data_hashes(metrics),
        "params_hash": metrics.get("params_hash") or meta.get("params_hash") or "n/a",
        "model_params_hash": meta.get("params_hash"),
        "weights_origin": meta.get("weights_origin") or "n/a",
        "lesion_attention": meta.get("lesion_attention") or 0,
        "git_revision": context.get("git_revision") or meta.get("git_revision") or "unknown",
        "code_digest": short_digest(context.get("code_digest")),
        # the code that made each artifact on the page (codegraph.digest of its stage)
        "code_digests": [
            (stage, short_digest(digest))
            for stage, digest in (
                ("train", meta.get("code_digest")),
                ("evaluate", metrics.get("code_digest")),
                ("report", context.get("code_digest")),
            )
        ],
        "arch": meta.get("arch"),
        "best_epoch": meta.get("best_epoch"),
        "generated_at": context.get("generated_at") or now(),
        "radflow_version": __version__,
    }


def _segmentation_cases(
    segmentation: Mapping[str, Any] | None, overlays: Mapping[str, bytes]
) -> list[dict[str, Any]]:
    """The best, median and worst lesion cases with their overlay (truth green, prediction
    red); cases whose PNG is missing are left out."""
    out = []
    for case in (segmentation or {}).get("cases") or []:
        png = overlays.get(str(case.get("file")))
        if png is None:
            continue
        out.append(
            {
                "rank": str(case.get("rank")),
                "image_id": str(case.get("image_id")),
                "dice": format_value(case.get("dice")),
                "iou": format_value(case.get("iou")),
                "hd95": format_value(case.get("hd95"), 1),
                "uri": data_uri(png),
            }
        )
    return out


def segmenter_settings(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What the segmenter was and how its masks were made (meta.json)."""
    if not meta.get("trained"):
        return []
    rows = [("architecture", str(meta.get("arch"))), ("weights", str(meta.get("weights_origin")))]
    if meta.get("context_slices"):
        k = meta["context_slices"]
        rows.append(("input", f"each slice with {k} neighbouring slice(s) either side (2.5-D)"))
    for key in ("inference", "postprocess"):
        if meta.get(key):
            rows.append((key, ", ".join(f"{k}: {v}" for k, v in meta[key].items())))
    if meta.get("best_epoch") is not None:
        rows.append(
            (
                "kept epoch (val Dice)",
                f"{meta['best_epoch']} ({meta.get('best_val_metric', 0):.3f})",
            )
        )
    return rows


def index_cards_view(card: IndexCard) -> list[dict[str, Any]]:
    """A classifier card and a segmenter card for one modality."""
    modality = safe_name(card["modality"])
    metrics = card.get("metrics") or {}
    classification = metrics.get("classification") or {}
    segmentation = metrics.get("segmentation") or {}
    calibration = metrics.get("calibration") or {}
    point = metrics.get("operating_point") or {}
    status = metrics.get("segmenter") or {}
    classifier_rows = [
        ("test images", str(metrics.get("n_test"))),
        ("AUC", format_interval(classification.get("auc"))),
        ("Accuracy", format_interval(classification.get("accuracy"))),
        ("Sensitivity", format_interval(classification.get("sensitivity"))),
        ("Specificity", format_interval(classification.get("specificity"))),
    ]
    if calibration:
        classifier_rows.append(("ECE", format_interval(calibration.get("ece"))))
    if point:
        classifier_rows.append(("Operating point", operating_label(point)))
    if segmentation:
        seg_rows = [
            ("test images", str(segmentation.get("n_images"))),
            ("Dice", format_interval(segmentation.get("dice"))),
            ("Dice (lesion)", format_interval(segmentation.get("dice_lesion"))),
            ("IoU", format_interval(segmentation.get("iou"))),
        ]
        if segmentation.get("iou_lesion"):
            seg_rows.append(("IoU (lesion)", format_interval(segmentation.get("iou_lesion"))))
        if segmentation.get("per_patient"):
            per_patient = segmentation["per_patient"]
            seg_rows.append(("Dice per patient", format_interval(per_patient.get("dice"))))
        seg_note = None
    else:
        seg_rows = []
        seg_note = (
            f"Not trained: {status['reason']}"
            if status.get("reason")
            else "No segmentation results."
        )
    return [
        {
            "id": f"card-{modality}",
            "modality": modality,
            "task": "classifier",
            "href": f"{modality}.html#metrics",
            "evaluated": bool(metrics),
            "rows": classifier_rows,
            "note": None,
        },
        {
            "id": f"card-{modality}-segmenter",
            "modality": modality,
            "task": "segmenter",
            "href": f"{modality}.html#segmentation",
            "evaluated": bool(metrics),
            "rows": seg_rows,
            "note": seg_note,
        },
    ]

"""The explain stage as one call: explanation maps of a seeded sample of test cases with
their faithfulness scores and overlays, the faithfulness summary, and the case browser's
thumbnails, as plain data.

explanations.json (written by the CLI next to the overlay PNGs) is a list of
:class:`ExplanationRecord`::

    [{"image_id": str,        # split/predictions image_id
      "method": str,          # a key of radflow.explain.methods.EXPLAINERS
      "file": str,            # overlay PNG, relative to explanations.json's folder
      "label": str,           # true class name
      "pred_label": str,      # predicted class name = the class explained
      "prob": float,          # model probability of pred_label
      "deletion_auc": float,  # see faithfulness.deletion_auc; lower = more faithful
      "insertion_auc": float, # see faithfulness.insertion_auc; higher = more faithful
      "random_deletion_auc": float,   # the same curves for random pixel orders
      "random_insertion_auc": float,  #   (the baseline every method must beat)
      "pointing_hit": bool | None,    # lesion cases only (see pointing_game), else null
      "energy_in_lesion": float | None}]

faithfulness.json summarises the records per method (:func:`faithfulness.summarise`),
ranked. cases.json lists the case browser's thumbnails (:func:`render.case_thumbnail`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import pandas as pd
import torch
from torch import nn

from radflow.core.lesions import lesions_from_index
from radflow.explain.faithfulness import (
    deletion_auc,
    energy_in_lesion,
    insertion_auc,
    pointing_game,
    random_baseline,
    summarise,
)
from radflow.explain.methods import explain
from radflow.explain.render import case_thumbnail, heatmap_overlay_png, overlay_filename
from radflow.learning.models import normalise_batch


class ExplanationRecord(TypedDict):
    """One row of explanations.json."""

    image_id: str
    method: str
    file: str
    label: str
    pred_label: str
    prob: float
    deletion_auc: float
    insertion_auc: float
    random_deletion_auc: float
    random_insertion_auc: float
    pointing_hit: bool | None
    energy_in_lesion: float | None


def cam_layer_for(setting: str, meta: dict[str, Any]) -> str:
    """explain.cam_layer for one model: "auto" becomes "features" when lesion attention
    trained the model, because that training kept the map of exactly that layer on the lesion
    (Cheng boxes: pointing 0.78 there against 0.18 on blocks[-2], BENCHMARKS.md)."""
    if setting == "auto" and float(meta.get("lesion_attention") or 0) > 0:
        return "features"
    return setting


def choose_cases(predictions: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Up to n test cases, taken in turn from each true label; the same for the same seed."""
    shuffled = predictions.sample(frac=1.0, random_state=seed)
    turn = shuffled.groupby("label").cumcount()
    picked = shuffled.assign(_turn=turn).sort_values(["_turn", "label"], kind="stable").head(n)
    return picked.drop(columns="_turn").reset_index(drop=True)


@dataclass
class ExplainedCases:
    """The explained sample: explanations.json, its overlays and faithfulness.json."""

    records: list[dict[str, Any]]  # explanations.json rows (ExplanationRecord + scores)
    overlays: dict[str, bytes]  # file name -> overlay PNG
    faithfulness: dict[str, Any]  # faithfulness.json: per-method summary and settings


def explain_cases(
    model: nn.Module,
    images: np.ndarray,
    lesions: dict[int, np.ndarray],
    predictions: pd.DataFrame,
    classes: list[str],
    cfg: dict[str, Any],
    seed: int,
) -> ExplainedCases:
    """Every configured method on a seeded sample of test cases, each map with its scores.

    images are the uint8 processed arrays; lesions maps array index -> boolean lesion mask
    (radflow.core.lesions.lesions_from_index). Localisation (pointing game, energy) is scored
    only for lesion cases explained as their own (true) class, where "inside the lesion" is
    the right answer.
    """
    sample = choose_cases(predictions, cfg["samples"], seed)
    idx = sample["array_index"].astype(int).to_numpy()
    x = normalise_batch(torch.from_numpy(images[idx]))
    targets = [classes.index(p) for p in sample["pred_label"]]
    steps, tolerance = cfg["faithfulness_steps"], cfg["pointing_tolerance"]
    baselines = [
        random_baseline(model, x[j], targets[j], seed + j, cfg["random_orders"], steps)
        for j in range(len(idx))
    ]

    def lesion(j: int, row: Any) -> np.ndarray | None:
        if row.pred_label != row.label:
            return None
        return lesions.get(int(idx[j]))

    records: list[dict[str, Any]] = []
    overlays: dict[str, bytes] = {}
    for method in cfg["methods"]:
        maps = explain(
            model, x, targets, method, seed,
            num_samples=cfg["num_samples"], cam_layer=cfg["cam_layer"],
        )  # fmt: skip
        for j, row in enumerate(sample.itertuples(index=False)):
            prob = float(getattr(row, f"prob_{row.pred_label}"))
            mask = lesion(j, row)
            record = {
                "image_id": row.image_id,
                "method": method,
                "label": row.label,
                "pred_label": row.pred_label,
                "prob": prob,
                "deletion_auc": deletion_auc(model, x[j], targets[j], maps[j], steps),
                "insertion_auc": insertion_auc(model, x[j], targets[j], maps[j], steps),
                "random_deletion_auc": baselines[j]["deletion_auc"],
                "random_insertion_auc": baselines[j]["insertion_auc"],
                "pointing_hit": None if mask is None else pointing_game(maps[j], mask, tolerance),
                "energy_in_lesion": None if mask is None else energy_in_lesion(maps[j], mask),
            }
            title = (
                f"{method}: truth {row.label}, predicted {row.pred_label} ({prob:.2f})\n"
                f"deletion {record['deletion_auc']:.3f}, insertion {record['insertion_auc']:.3f}"
            )
            name = overlay_filename(row.image_id, method)
            overlays[name] = heatmap_overlay_png(images[idx[j]] / 255.0, maps[j], title, mask)
            records.append({**record, "file": name})
    faithfulness = {
        "methods": summarise(records),
        "steps": steps,
        "random_orders": cfg["random_orders"],
        "pointing_tolerance": tolerance,
        "n_cases": int(len(idx)),
    }
    return ExplainedCases(records, overlays, faithfulness)


def case_browser(
    model: nn.Module,
    images: np.ndarray,
    predictions: pd.DataFrame,
    classes: list[str],
    limit: int,
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """Thumbnails (image | Grad-CAM of the predicted class) of up to `limit` test cases, the
    misclassified first: the cases.json rows and the PNGs by file name (under cases/)."""
    table = predictions.copy()
    table["correct"] = table["label"] == table["pred_label"]
    table["confidence"] = [float(r[f"prob_{r['pred_label']}"]) for _, r in table.iterrows()]
    table = table.sort_values(["correct", "image_id"], kind="stable").head(limit)
    idx = table["array_index"].astype(int).to_numpy()
    if not len(idx):
        return [], {}
    x = normalise_batch(torch.from_numpy(images[idx]))
    maps = explain(model, x, [classes.index(p) for p in table["pred_label"]], "gradcam", 0)
    rows, pngs = [], {}
    for j, row in enumerate(table.itertuples(index=False)):
        name = "cases/" + overlay_filename(row.image_id, "case")
        pngs[name] = case_thumbnail(images[idx[j]] / 255.0, maps[j])
        rows.append(
            {
                "image_id": row.image_id,
                "label": row.label,
                "pred_label": row.pred_label,
                "confidence": float(row.confidence),
                "correct": bool(row.correct),
                "file": name,
            }
        )
    return rows, pngs


@dataclass
class Explanations:
    """What the explain stage writes, by file name relative to its output folder."""

    records: list[dict[str, Any]]  # explanations.json
    faithfulness: dict[str, Any]  # faithfulness.json
    cases: list[dict[str, Any]]  # cases.json (the case browser)
    pngs: dict[str, bytes]  # overlays and cases/ thumbnails, by file name


def explain_model(
    model: nn.Module,
    meta: Mapping[str, Any],
    images: np.ndarray,
    masks: np.ndarray,
    index: pd.DataFrame,
    predictions: pd.DataFrame,
    cfg: Mapping[str, Any],
    seed: int,
) -> Explanations:
    """Every output of the explain stage for one classifier (params ``explain``).

    ``meta`` is the classifier's meta.json (classes; lesion_attention decides the "auto"
    Grad-CAM layer, :func:`cam_layer_for`); ``masks`` and ``index`` are the processed
    arrays' masks and index.csv, from which the lesions of localisation scoring come;
    ``predictions`` is the evaluate stage's predictions.csv.
    """
    cfg = {**cfg, "cam_layer": cam_layer_for(cfg["cam_layer"], dict(meta))}
    classes = list(meta["classes"])
    lesions = lesions_from_index(masks, index)
    result = explain_cases(model, images, lesions, predictions, classes, cfg, seed)
    cases, thumbnails = case_browser(model, images, predictions, classes, cfg["case_browser_max"])
    return Explanations(
        result.records, result.faithfulness, cases, {**result.overlays, **thumbnails}
    )

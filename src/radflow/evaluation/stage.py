"""The evaluation stage as one call: test-set predictions of the trained models in, the whole
metrics.json, the CSV tables and the segmentation overlays out, as plain data.

The CLI reads the arrays, the split and the models, calls :func:`evaluate` and writes what it
returns (``reports/evaluation/<modality>/``); nothing here touches a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from radflow.core import codegraph
from radflow.core import params as params_mod
from radflow.evaluation import classification as cls
from radflow.evaluation.reliability import calibration
from radflow.evaluation.segmentation import evaluate_segmenter
from radflow.evaluation.subgroups import subgroup_metrics
from radflow.learning.calibration import decide
from radflow.learning.classifier import predict_probs


@dataclass
class Evaluation:
    """What the evaluate stage writes, by file name relative to its output folder."""

    metrics: dict[str, Any]  # metrics.json
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # predictions.csv, roc.csv...
    overlays: dict[str, bytes] = field(default_factory=dict)  # overlays/<rank>.png -> PNG


def evaluate(
    modality: str,
    images: np.ndarray,
    masks: np.ndarray,
    index: pd.DataFrame,
    split: pd.DataFrame,
    classifier: torch.nn.Module,
    classifier_meta: Mapping[str, Any],
    segmenter: torch.nn.Module | None,
    segmenter_meta: Mapping[str, Any],
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
) -> Evaluation:
    """Every test-set metric of one modality with bootstrap CIs (params ``evaluate``).

    ``index`` and ``split`` are the processed index.csv and split.csv (array_index as int);
    the classifier predicts with its meta.json temperature, TTA and threshold;
    ``segmenter`` is None when its meta.json says it was not trained. ``inputs`` maps each
    input file to its sha256, recorded in metrics.json.
    """
    test = split[split["split"] == "test"].reset_index(drop=True)
    classes = list(classifier_meta["classes"])
    threshold = classifier_meta.get("threshold")
    y_true = np.array([classes.index(lab) for lab in test["label"]])
    probs = predict_probs(
        classifier, images[test["array_index"].to_numpy()],
        temperature=classifier_meta.get("temperature", 1.0),
        tta=classifier_meta.get("tta", False),
    )  # fmt: skip
    ev, seed = params["evaluate"], params["seed"]
    n_boot, ci_level = ev["bootstrap_samples"], ev["ci_level"]
    result = cls.classification_metrics(
        y_true, probs, classes, n_boot, ci_level, seed, threshold=threshold
    )
    seg_summary, seg_table, seg_overlays = evaluate_segmenter(
        segmenter, segmenter_meta, images, masks, index, test, n_boot, ci_level, seed
    )
    groups = index.set_index("array_index").loc[test["array_index"].to_numpy()]
    metrics = {
        "modality": modality,
        "n_test": int(len(test)),
        "classes": classes,
        "positive_class": cls.positive_class(classes),
        **result,
        "operating_point": cls.operating_point(y_true, probs, classes, threshold),
        "calibration": calibration(
            y_true, probs, classes, ev["calibration_bins"], n_boot, ci_level, seed
        ),
        "subgroups": subgroup_metrics(
            groups, y_true, probs, classes, n_boot, ci_level, seed, threshold
        ),
        "segmentation": seg_summary,
        "segmenter": {
            "trained": bool(segmenter_meta.get("trained", False)),
            "reason": segmenter_meta.get("reason"),
        },
        "inputs": dict(inputs),
        "ci_level": ci_level,
        "bootstrap_samples": n_boot,
        "params_hash": params_mod.params_hash(dict(params)),
        "code_digest": codegraph.digest("evaluate"),
    }
    y_pred = decide(probs, threshold)
    tables = {
        "predictions.csv": cls.predictions_table(test, probs, classes, threshold),
        "roc.csv": cls.roc_table(y_true, probs, classes),
        "pr.csv": cls.pr_table(y_true, probs, classes),
        "confusion.csv": cls.confusion_table(y_true, y_pred, classes),
        "segmentation.csv": seg_table,
    }
    return Evaluation(metrics, tables, seg_overlays)

"""Subgroup analysis of the evaluation stage: the classification metrics with bootstrap
intervals per value of each demographic or acquisition column the index holds (sex, age
band, site, scanner...), so a gap between groups shows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from radflow.evaluation.classification import classification_metrics, validate_classification

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
    y_true, probs = validate_classification(y_true, probs, classes)
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

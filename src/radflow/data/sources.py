"""Dataset adapters: how a folder of images becomes (path, label, mask, patient, modality) rows.

Chosen in params (`data.layout`, `data.columns`, `data.patient_key`), never in code:
- `labels_csv`: a CSV names the files (DICOM or raster) with their labels, optional masks,
  patient ids and modality;
- `class_folders`: `raw_dir/<class>/**/<file>`, the folder name is the label.

The patient key comes from a params rule: a DICOM attribute, a CSV column, regular
expressions on the file name (optionally grouped into runs of consecutive numbers for
slice-numbered sets without ids), or, only when explicitly chosen, the image itself.

Two more params rules for label CSVs: `data.label_from` derives the class from a numeric
column (e.g. tumour pixels > 0 -> tumour), and `data.mask_dir` names the folder the mask
column is relative to (default raw_dir), so masks stored beside the image folder need no
path rewriting in the CSV.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CANONICAL = ("path", "label", "mask", "patient_id", "modality", "slice")

# Where each manifest row's patient key came from; anything but a real id is flagged.
TRUE_PATIENT_SOURCES = ("dicom", "column", "filename")


class SourceError(ValueError):
    """The data source cannot be read as configured; the message names the file or key."""


@dataclass(frozen=True)
class PatientRule:
    source: str = "dicom"  # dicom | column | filename | image
    dicom_attribute: str = "PatientID"
    patterns: tuple[re.Pattern[str], ...] = ()
    bucket: int | None = None

    def from_filename(self, name: str) -> str:
        """The key from the first matching pattern's group 1, or "" when none matches."""
        for pattern in self.patterns:
            match = pattern.match(name)
            if match:
                key = match.group(1)
                if self.bucket:
                    return f"run{int(key) // self.bucket:06d}"
                return key
        return ""

    @property
    def provenance(self) -> str:
        if self.source == "filename" and self.bucket:
            return "filename-run"
        return self.source


def numeric(values: pd.Series, column: str, key: str) -> tuple[pd.Series, pd.Series]:
    """A labels-CSV column as numbers (NaN where not one) and, per row, the problem ("" when
    none) naming the column and its params key."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    bad = ~np.isfinite(numbers.to_numpy())
    problems = pd.Series("", index=values.index, dtype=object)
    problems[bad] = [f"column '{column}' ({key}) holds {v!r}, not a number" for v in values[bad]]
    return numbers, problems


@dataclass(frozen=True)
class LabelRule:
    """The label from a numeric column: `above` when value > threshold, else `otherwise`."""

    column: str
    threshold: float
    above: str
    otherwise: str

    def apply(self, values: pd.Series) -> tuple[pd.Series, pd.Series]:
        """The labels ("" where the value is no number) and the rows' problems."""
        numbers, problems = numeric(values, self.column, "data.label_from.column")
        labels = numbers.map(lambda v: self.above if v > self.threshold else self.otherwise)
        return labels.where(problems == "", ""), problems


@dataclass(frozen=True)
class BoxRule:
    """A lesion box from four numeric columns, stored as corners "x0 y0 x1 y1" (source pixels)."""

    columns: tuple[str, str, str, str]
    format: str  # cxcywh | xywh | xyxy

    def apply(self, raw: pd.DataFrame, where: Path) -> tuple[pd.Series, pd.Series]:
        """The boxes ("" where a row has none) and the rows' problems."""
        missing = [c for c in self.columns if c not in raw.columns]
        if missing:
            raise SourceError(f"labels CSV {where} lacks the box column(s) {missing} (data.boxes)")
        present = raw[list(self.columns)].apply(lambda col: col.str.strip() != "").all(axis=1)
        values = raw[list(self.columns)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        bad = present.to_numpy() & ~np.isfinite(values).all(axis=1)
        problems = pd.Series(
            np.where(bad, f"a non-numeric box value in {list(self.columns)} (data.boxes)", ""),
            index=raw.index,
            dtype=object,
        )
        a, b, c, d = values.T
        if self.format == "cxcywh":
            corners = np.stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], axis=1)
        elif self.format == "xywh":
            corners = np.stack([a, b, a + c, b + d], axis=1)
        else:
            corners = values
        boxes = pd.Series(
            [
                " ".join(f"{v:g}" for v in box) if ok and not wrong else ""
                for box, ok, wrong in zip(corners, present, bad, strict=True)
            ],
            index=raw.index,
        )
        return boxes, problems


@dataclass(frozen=True)
class Source:
    raw_dir: Path
    layout: str = "labels_csv"
    labels_csv: Path | None = None
    columns: dict[str, str] = field(default_factory=dict)
    label_map: dict[str, str] = field(default_factory=dict)
    modality: str | None = None
    patient: PatientRule = PatientRule()
    label_rule: LabelRule | None = None
    mask_dir: Path | None = None
    box_rule: BoxRule | None = None
    root: Path = Path(".")  # data.root: nothing outside it is read
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)


def from_params(data: dict[str, Any]) -> Source:
    """The source params["data"] describes (validated, so the schema's defaults are filled)."""
    rule = data["patient_key"]
    try:
        patterns = tuple(re.compile(p) for p in rule["patterns"])
    except re.error as exc:
        raise SourceError(f"data.patient_key.patterns: bad regular expression: {exc}") from exc
    source = rule["source"]
    if source == "filename" and not patterns:
        raise SourceError("data.patient_key.source is filename but patterns is empty")
    label_from = data["label_from"]
    label_rule = None
    if label_from:
        if data["layout"] != "labels_csv":
            raise SourceError("data.label_from needs data.layout labels_csv")
        label_rule = LabelRule(
            column=str(label_from["column"]),
            threshold=float(label_from["threshold"]),
            above=str(label_from["above"]),
            otherwise=str(label_from["otherwise"]),
        )
    return Source(
        raw_dir=Path(data["raw_dir"]),
        layout=data["layout"],
        labels_csv=Path(data["labels_csv"]) if data["labels_csv"] else None,
        columns={c: data["columns"][c] for c in CANONICAL},
        label_map={str(k): str(v) for k, v in data["label_map"].items()},
        modality=data["modality"],
        patient=PatientRule(
            source=source,
            dicom_attribute=rule["dicom_attribute"],
            patterns=patterns,
            bucket=rule["bucket"],
        ),
        label_rule=label_rule,
        mask_dir=Path(data["mask_dir"]) if data["mask_dir"] else None,
        box_rule=_box_rule(data),
        root=Path(data.get("root") or data["raw_dir"]),  # required by the schema
        classes={m: tuple(str(c) for c in names) for m, names in data["classes"].items()},
    )


def _box_rule(data: dict[str, Any]) -> BoxRule | None:
    boxes = data["boxes"]
    if not boxes:
        return None
    if data["layout"] != "labels_csv":
        raise SourceError("data.boxes needs data.layout labels_csv")
    return BoxRule(columns=tuple(str(c) for c in boxes["columns"]), format=boxes["format"])


def labels_table(source: Source) -> pd.DataFrame:
    """Canonical labels (columns CANONICAL, box, problem) indexed by the path relative to
    raw_dir, one row per path. `problem` is why a row cannot be used ("" when it can):
    ingest quarantines that row's file with it, so one bad row never stops the stage."""
    if source.layout == "class_folders":
        table = _class_folders(source.raw_dir)
    else:
        table = _labels_csv(source)
    if source.label_map:
        known = table["label"].isin(list(source.label_map))
        unmapped = (table["label"] != "") & ~known & (table["problem"] == "")
        table.loc[unmapped, "problem"] = [
            f"label {v!r} has no entry in data.label_map: add it or remove the map"
            for v in table.loc[unmapped, "label"]
        ]
        table["label"] = table["label"].map(lambda v: source.label_map.get(v, v))
    return table.set_index("path", drop=False)


def _labels_csv(source: Source) -> pd.DataFrame:
    path = source.labels_csv
    if path is None:
        raise SourceError("data.layout is labels_csv but data.labels_csv is not set")
    if not path.exists():
        raise SourceError(f"labels CSV {path} not found; fix data.labels_csv in params.yaml")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = pd.DataFrame(index=raw.index)
    rule = source.label_rule
    label_problems = pd.Series("", index=raw.index, dtype=object)
    for canonical, column in source.columns.items():
        if canonical == "label" and rule is not None:
            if rule.column not in raw.columns:
                raise SourceError(
                    f"labels CSV {path} lacks the column '{rule.column}' (data.label_from.column)"
                )
            out["label"], label_problems = rule.apply(raw[rule.column])
        elif column in raw.columns:
            out[canonical] = raw[column].astype(str)
        elif canonical in ("path", "label"):
            raise SourceError(
                f"labels CSV {path} lacks the column '{column}' (data.columns.{canonical})"
            )
        else:
            out[canonical] = ""
    slices = out["slice"][out["slice"].str.strip() != ""]  # a slice number is optional
    _, slice_problems = numeric(slices, source.columns["slice"], "data.columns.slice")
    out["box"], box_problems = (
        source.box_rule.apply(raw, path) if source.box_rule else ("", pd.Series(dtype=object))
    )
    out["problem"] = [
        next((p for p in found if p), "")
        for found in zip(
            label_problems,
            slice_problems.reindex(raw.index, fill_value=""),
            box_problems.reindex(raw.index, fill_value=""),
            strict=True,
        )
    ]
    if source.mask_dir is not None:
        # Mask paths are relative to raw_dir downstream (ingest); rewrite them from mask_dir.
        out["mask"] = [
            Path(os.path.relpath(source.mask_dir / m, source.raw_dir)).as_posix() if m else ""
            for m in out["mask"]
        ]
    repeated = out["path"].duplicated(keep=False)
    out.loc[repeated, "problem"] = [
        f"listed in {int(n)} rows of the labels CSV: keep one"
        for n in out.loc[repeated, "path"].map(out["path"].value_counts())
    ]
    return out.drop_duplicates("path")


def _class_folders(root: Path) -> pd.DataFrame:
    if not root.is_dir():
        raise SourceError(f"input folder {root} not found; set data.raw_dir in params")
    rows = [
        {"path": p.relative_to(root).as_posix(), "label": p.relative_to(root).parts[0]}
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and len(p.relative_to(root).parts) > 1
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    table = pd.DataFrame(rows, columns=["path", "label"])
    for column in (*CANONICAL[2:], "box", "problem"):
        table[column] = ""
    return table

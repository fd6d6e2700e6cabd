"""Dataset adapters: how a folder of images becomes (path, label, mask, patient, modality) rows.

Chosen in params (`data.layout`, `data.columns`, `data.patient_key`), never in code:
- `labels_csv`: a CSV names the files (DICOM or raster) with their labels, optional masks,
  patient ids and modality;
- `class_folders`: `raw_dir/<class>/**/<file>`, the folder name is the label.

The patient key comes from a params rule: a DICOM attribute, a CSV column, regular
expressions on the file name (optionally grouped into runs of consecutive numbers for
slice-numbered sets without ids), or, only when explicitly chosen, the image itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

CANONICAL = ("path", "label", "mask", "patient_id", "modality")

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


@dataclass(frozen=True)
class Source:
    raw_dir: Path
    layout: str = "labels_csv"
    labels_csv: Path | None = None
    columns: dict[str, str] = field(default_factory=dict)
    label_map: dict[str, str] = field(default_factory=dict)
    modality: str | None = None
    patient: PatientRule = PatientRule()


def from_params(data: dict[str, Any]) -> Source:
    rule = data.get("patient_key", {}) or {}
    try:
        patterns = tuple(re.compile(p) for p in rule.get("patterns", []))
    except re.error as exc:
        raise SourceError(f"data.patient_key.patterns: bad regular expression: {exc}") from exc
    source = rule.get("source", "dicom")
    if source == "filename" and not patterns:
        raise SourceError("data.patient_key.source is filename but patterns is empty")
    return Source(
        raw_dir=Path(data["raw_dir"]),
        layout=data.get("layout", "labels_csv"),
        labels_csv=Path(data["labels_csv"]) if data.get("labels_csv") else None,
        columns={c: (data.get("columns") or {}).get(c, c) for c in CANONICAL},
        label_map={str(k): str(v) for k, v in (data.get("label_map") or {}).items()},
        modality=data.get("modality"),
        patient=PatientRule(
            source=source,
            dicom_attribute=rule.get("dicom_attribute", "PatientID"),
            patterns=patterns,
            bucket=rule.get("bucket"),
        ),
    )


def labels_table(source: Source) -> pd.DataFrame:
    """Canonical labels (columns CANONICAL) indexed by the path relative to raw_dir."""
    if source.layout == "class_folders":
        table = _class_folders(source.raw_dir)
    else:
        table = _labels_csv(source)
    if source.label_map:
        unmapped = sorted(set(table["label"]) - set(source.label_map) - {""})
        if unmapped:
            raise SourceError(
                f"labels {unmapped[:5]} have no entry in data.label_map; add them or remove the map"
            )
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
    for canonical, column in source.columns.items():
        if column in raw.columns:
            out[canonical] = raw[column].astype(str)
        elif canonical in ("path", "label"):
            raise SourceError(
                f"labels CSV {path} lacks the column '{column}' (data.columns.{canonical})"
            )
        else:
            out[canonical] = ""
    dup = out["path"][out["path"].duplicated()]
    if len(dup):
        raise SourceError(f"labels CSV {path} lists {dup.iloc[0]} more than once")
    return out


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
    for column in CANONICAL[2:]:
        table[column] = ""
    return table

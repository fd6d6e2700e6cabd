"""The manifest: the one table that every stage reads and extends.

One row per image. Columns are added over time, never repurposed. Paths are stored as
given (relative paths are relative to the working directory the pipeline runs in).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# name -> (pandas dtype, meaning). The order is the column order on disk.
COLUMNS: dict[str, tuple[str, str]] = {
    "image_id": ("string", "stable id: first 16 hex digits of the sha256 of the file"),
    "source_path": ("string", "where the image file is (after anonymise: the de-identified copy)"),
    "sha256": ("string", "sha256 of the file bytes at source_path"),
    "format": ("string", "dicom | png | jpeg | nifti"),
    "modality": ("string", "radflow modality: mri | ct | xray"),
    "patient_key": ("string", "patient identifier (after anonymise: keyed pseudonym)"),
    "patient_key_source": (
        "string",
        "how patient_key was found: dicom | column | filename | filename-run | image "
        "(the last two are not real patient ids and are flagged in reports)",
    ),
    "study_key": ("string", "study identifier (after anonymise: remapped UID)"),
    "series_key": ("string", "series identifier (after anonymise: remapped UID)"),
    "label": ("string", "class name; empty when unlabelled"),
    "mask_path": ("string", "lesion mask (NIfTI or PNG, same pixel grid); empty when none"),
    "box": (
        "string",
        "lesion box 'x0 y0 x1 y1' in source pixels (data.boxes); empty when none",
    ),
    "rows": ("Int64", "pixel rows"),
    "cols": ("Int64", "pixel columns"),
    "frames": ("Int64", "number of frames/slices (the middle one is used for 2-D models)"),
    "slice_position": (
        "string",
        "the slice's place along its volume (same patient and series): data.columns.slice, "
        "else DICOM ImagePositionPatient along the slice normal, else InstanceNumber; empty "
        "when unknown. Orders neighbouring slices (train.segmenter.context_slices)",
    ),
}

QUARANTINE_COLUMNS = ["path", "stage", "reason"]

FORMATS = ("dicom", "png", "jpeg", "nifti")


class ManifestError(ValueError):
    """A manifest does not follow the schema; the message names the column and what to do."""


@dataclass(frozen=True)
class Quarantined:
    path: str
    stage: str
    reason: str


def empty() -> pd.DataFrame:
    return conform(pd.DataFrame(columns=list(COLUMNS)))


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Order columns and cast dtypes; extra columns are kept after the schema ones."""
    frame = frame.copy()
    for added in ("patient_key_source", "box", "slice_position"):  # written before the column
        if added not in frame.columns:
            frame[added] = ""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"manifest lacks column(s) {missing}; re-run `radflow ingest`")
    extra = [c for c in frame.columns if c not in COLUMNS]
    out = frame[list(COLUMNS) + extra].copy()
    for name, (dtype, _) in COLUMNS.items():
        out[name] = out[name].astype(dtype)
    for name in (
        "label", "mask_path", "box", "study_key", "series_key", "patient_key_source",
        "slice_position",
    ):  # fmt: skip
        out[name] = out[name].fillna("")
    return out.reset_index(drop=True)


def validate(frame: pd.DataFrame) -> pd.DataFrame:
    frame = conform(frame)
    if frame["image_id"].duplicated().any():
        dup = frame.loc[frame["image_id"].duplicated(), "source_path"].iloc[0]
        raise ManifestError(f"duplicate image_id in manifest (e.g. {dup})")
    bad = frame.loc[~frame["format"].isin(FORMATS), "source_path"]
    if len(bad):
        raise ManifestError(f"unknown format for {bad.iloc[0]}; expected one of {FORMATS}")
    return frame


def read(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} not found; run the stage that writes it first")
    return validate(pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[]))


def write(frame: pd.DataFrame, path: str | Path) -> None:
    from radflow.core.fileio import atomic_write_text

    atomic_write_text(path, validate(frame).to_csv(index=False))


def quarantine_frame(entries: Iterable[Quarantined]) -> pd.DataFrame:
    return pd.DataFrame([e.__dict__ for e in entries], columns=QUARANTINE_COLUMNS)


def for_modality(frame: pd.DataFrame, modality: str) -> pd.DataFrame:
    return frame[frame["modality"] == modality].reset_index(drop=True)

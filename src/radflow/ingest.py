"""Ingest: turn a folder of DICOM / PNG / JPEG / NIfTI files and a labels CSV into the manifest.

Every file found and every labels row ends up either in the manifest or in the quarantine
table with its reason: counts in = manifest + quarantine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from radflow import imaging, manifest
from radflow.manifest import Quarantined

STAGE = "ingest"


class LabelsError(ValueError):
    """The labels CSV cannot be used; the message names the file and column."""


@dataclass
class IngestResult:
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    inputs: int
    hidden: int = 0


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_labels(path: Path | None) -> pd.DataFrame:
    """Labels keyed by path relative to the raw folder; an absent CSV means no labels."""
    if path is None:
        return pd.DataFrame(columns=["path", "label"])
    if not path.exists():
        raise LabelsError(f"labels CSV {path} not found; fix data.labels_csv in params.yaml")
    labels = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in ("path", "label"):
        if column not in labels.columns:
            raise LabelsError(f"labels CSV {path} lacks the column '{column}'")
    dup = labels["path"][labels["path"].duplicated()]
    if len(dup):
        raise LabelsError(f"labels CSV {path} lists {dup.iloc[0]} more than once")
    return labels.set_index("path", drop=False)


def is_hidden(path: Path, root: Path) -> bool:
    """Dot files and folders (.DS_Store, .snakemake_timestamp, .git) are not data."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def find_files(root: Path, exclude: set[Path]) -> tuple[list[Path], int]:
    """Every regular file under root, sorted, minus the labels CSV, masks and hidden files.

    Returns the files and how many hidden files were passed over (logged, never silent).
    """
    files, hidden = [], 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.resolve() in exclude:
            continue
        if is_hidden(path, root):
            hidden += 1
        else:
            files.append(path)
    return files, hidden


def inspect_file(path: Path, fmt: str) -> dict[str, object]:
    """Header facts for one image; raises ImageReadError when it cannot be used."""
    if fmt == "dicom":
        ds = imaging.read_dicom(path)
        pixels = imaging.dicom_pixels(ds)
        modality = imaging.DICOM_MODALITIES.get(str(getattr(ds, "Modality", "")), "")
        issuer = str(getattr(ds, "IssuerOfPatientID", "") or "")
        patient = str(getattr(ds, "PatientID", "") or "")
        return {
            "modality": modality,
            "dicom_modality": str(getattr(ds, "Modality", "")),
            "patient_key": f"{issuer}/{patient}" if issuer and patient else patient,
            "study_key": str(getattr(ds, "StudyInstanceUID", "") or ""),
            "series_key": str(getattr(ds, "SeriesInstanceUID", "") or ""),
            "rows": pixels.shape[0],
            "cols": pixels.shape[1],
            "frames": int(getattr(ds, "NumberOfFrames", 1) or 1),
        }
    pixels = imaging.load_pixels(path, fmt)
    return {
        "modality": "",
        "dicom_modality": "",
        "patient_key": "",
        "study_key": "",
        "series_key": "",
        "rows": pixels.shape[0],
        "cols": pixels.shape[1],
        "frames": 1,
    }


def ingest(raw_dir: Path, labels_csv: Path | None) -> IngestResult:
    """Build the manifest for raw_dir; file reading is the whole point of this stage."""
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"input folder {raw_dir} not found; set data.raw_dir in params")
    labels = read_labels(labels_csv)
    masks = {(raw_dir / m).resolve() for m in labels.get("mask", pd.Series(dtype=str)) if m}
    exclude = masks | ({labels_csv.resolve()} if labels_csv else set())
    files, hidden = find_files(raw_dir, exclude)
    rows: list[dict[str, object]] = []
    quarantine: list[Quarantined] = []
    seen: dict[str, str] = {}
    for path in files:
        rel = path.relative_to(raw_dir).as_posix()
        row, reason = _ingest_one(path, rel, raw_dir, labels, seen)
        if reason:
            quarantine.append(Quarantined(str(path), STAGE, reason))
        else:
            rows.append(row)
    found = {p.relative_to(raw_dir).as_posix() for p in files}
    for rel in labels.index:
        if rel not in found:
            quarantine.append(
                Quarantined(str(raw_dir / rel), STAGE, "listed in the labels CSV but not found")
            )
    frame = manifest.conform(pd.DataFrame(rows)) if rows else manifest.empty()
    return IngestResult(
        manifest=frame,
        quarantine=manifest.quarantine_frame(quarantine),
        inputs=len(files) + int((~labels.index.isin(list(found))).sum()),
        hidden=hidden,
    )


def _ingest_one(
    path: Path, rel: str, raw_dir: Path, labels: pd.DataFrame, seen: dict[str, str]
) -> tuple[dict[str, object], str]:
    """One manifest row, or an empty row and the reason to quarantine the file."""
    fmt = imaging.detect_format(path)
    if fmt is None:
        return {}, "not a DICOM, PNG, JPEG or NIfTI file"
    try:
        facts = inspect_file(path, fmt)
    except imaging.ImageReadError as exc:
        return {}, str(exc)
    digest = sha256_file(path)
    if digest in seen:
        return {}, f"byte-identical duplicate of {seen[digest]}"
    entry = labels.loc[rel] if rel in labels.index else None
    label = "" if entry is None else str(entry["label"])
    if not label:
        return {}, "no label: add the file to the labels CSV"
    modality = facts.pop("modality") or _column(entry, "modality")
    dicom_modality = facts.pop("dicom_modality")
    if modality not in imaging.DICOM_MODALITIES.values():
        what = f"DICOM modality {dicom_modality!r}" if dicom_modality else "no modality"
        return {}, f"{what}: radflow handles MR, CT, DX/CR (or a modality column in labels)"
    patient = facts["patient_key"] or _column(entry, "patient_id")
    if not patient:
        return {}, "no patient id: add a patient_id column to the labels CSV"
    mask = _column(entry, "mask")
    if mask and not (raw_dir / mask).is_file():
        return {}, f"mask {mask} listed in the labels CSV not found"
    seen[digest] = rel
    return {
        **facts,
        "image_id": digest[:16],
        "source_path": str(path),
        "sha256": digest,
        "format": fmt,
        "modality": modality,
        "patient_key": patient,
        "label": label,
        "mask_path": str(raw_dir / mask) if mask else "",
    }, ""


def _column(entry: pd.Series | None, name: str) -> str:
    if entry is None or name not in entry.index:
        return ""
    return str(entry[name] or "")

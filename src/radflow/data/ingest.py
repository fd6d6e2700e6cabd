"""Ingest: turn a folder of DICOM / PNG / JPEG / NIfTI files and a labels CSV into the manifest.

Every file found and every labels row ends up either in the manifest or in the quarantine
table with its reason: counts in = manifest + quarantine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from radflow.core import folders, imaging, manifest
from radflow.core.manifest import Quarantined
from radflow.data import sources
from radflow.data.sources import Source

STAGE = "ingest"


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


def inspect_file(path: Path, fmt: str, patient_attribute: str = "PatientID") -> dict[str, object]:
    """Header facts for one image; raises ImageReadError when it cannot be used."""
    if fmt == "dicom":
        ds = imaging.read_dicom(path)
        pixels = imaging.dicom_pixels(ds)
        issuer = str(getattr(ds, "IssuerOfPatientID", "") or "")
        patient = str(getattr(ds, patient_attribute, "") or "")
        return {
            "modality": imaging.DICOM_MODALITIES.get(str(getattr(ds, "Modality", "")), ""),
            "dicom_modality": str(getattr(ds, "Modality", "")),
            "patient_key": f"{issuer}/{patient}" if issuer and patient else patient,
            "study_key": str(getattr(ds, "StudyInstanceUID", "") or ""),
            "series_key": str(getattr(ds, "SeriesInstanceUID", "") or ""),
            "rows": pixels.shape[0],
            "cols": pixels.shape[1],
            "frames": int(getattr(ds, "NumberOfFrames", 1) or 1),
            "slice_position": imaging.slice_position(ds),
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
        "slice_position": "",
    }


def ingest(source: Source) -> IngestResult:
    """Build the manifest for a data source; file reading is the whole point of this stage."""
    raw_dir = source.raw_dir
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"input folder {raw_dir} not found; set data.raw_dir in params")
    labels = sources.labels_table(source)
    masks = {(raw_dir / m).resolve() for m in labels["mask"] if m}
    exclude = masks | ({source.labels_csv.resolve()} if source.labels_csv else set())
    walk = folders.walk(raw_dir, source.root, frozenset(exclude))
    rows: list[dict[str, object]] = []
    quarantine = [Quarantined(path, STAGE, reason) for path, reason in walk.refused]
    seen: dict[str, str] = {}
    for path in walk.files:
        rel = path.relative_to(raw_dir).as_posix()
        row, reason = _ingest_one(path, rel, source, labels, seen)
        if reason:
            quarantine.append(Quarantined(str(path), STAGE, reason))
        else:
            rows.append(row)
    walked = [*walk.files, *(Path(p) for p, _ in walk.refused)]  # all under raw_dir
    found = {p.relative_to(raw_dir).as_posix() for p in walked}
    missing = [rel for rel in labels.index if rel not in found]
    for rel in missing:
        quarantine.append(Quarantined(str(raw_dir / rel), STAGE, _missing_reason(rel)))
    frame = manifest.conform(pd.DataFrame(rows)) if rows else manifest.empty()
    return IngestResult(
        manifest=frame,
        quarantine=manifest.quarantine_frame(quarantine),
        inputs=len(walk.files) + len(walk.refused) + len(missing),
        hidden=walk.hidden,
    )


def _missing_reason(rel: str) -> str:
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        return "the labels name a path outside data.raw_dir: paths must be relative, inside it"
    return "listed in the labels but not found"


def _ingest_one(
    path: Path, rel: str, source: Source, labels: pd.DataFrame, seen: dict[str, str]
) -> tuple[dict[str, object], str]:
    """One manifest row, or an empty row and the reason to quarantine the file."""
    fmt = imaging.detect_format(path)
    if fmt is None:
        return {}, "not a DICOM, PNG, JPEG or NIfTI file"
    rule = source.patient
    try:
        facts = inspect_file(path, fmt, rule.dicom_attribute)
        digest = sha256_file(path)
    except imaging.ImageReadError as exc:
        return {}, str(exc)
    except MemoryError:
        raise
    except Exception as exc:  # any reader's failure on one file is that file's problem
        return {}, f"cannot be read ({imaging.first_line(exc)}): re-export or remove it"
    if digest in seen:
        return {}, f"byte-identical duplicate of {seen[digest]}"
    entry = labels.loc[rel] if rel in labels.index else None
    if entry is not None and entry["problem"]:
        return {}, str(entry["problem"])
    label = "" if entry is None else str(entry["label"])
    if not label:
        return {}, "no label: add the file to the labels (data.labels_csv or class folder)"
    modality = facts.pop("modality") or _column(entry, "modality") or (source.modality or "")
    dicom_modality = facts.pop("dicom_modality")
    if modality not in imaging.DICOM_MODALITIES.values():
        what = f"DICOM modality {dicom_modality!r}" if dicom_modality else "no modality"
        return {}, f"{what}: radflow handles MR, CT, DX/CR (or set data.modality)"
    patient, provenance = _patient_key(rule, facts.pop("patient_key"), entry, path, digest)
    if not patient:
        return {}, f"no patient key by data.patient_key ({rule.source}); see README"
    classes = source.classes.get(modality)
    if classes and label not in classes:
        return {}, _label_reason(label, modality, classes)
    mask = _column(entry, "mask")
    reason = _mask_reason(source, mask, (int(facts["rows"]), int(facts["cols"]))) if mask else ""
    if reason:
        return {}, reason
    seen[digest] = rel
    return {
        **facts,
        "image_id": digest[:16],
        "source_path": str(path),
        "sha256": digest,
        "format": fmt,
        "modality": modality,
        "patient_key": patient,
        "patient_key_source": provenance,
        "label": label,
        "mask_path": str(source.raw_dir / mask) if mask else "",
        "box": _column(entry, "box"),
        "slice_position": _column(entry, "slice") or facts["slice_position"],
    }, ""


def _patient_key(
    rule: sources.PatientRule, header: str, entry: pd.Series | None, path: Path, digest: str
) -> tuple[str, str]:
    """The key by the params rule and where it came from (flagged when not a real id)."""
    if rule.source == "image":
        return digest[:16], "image"
    if rule.source == "filename":
        return rule.from_filename(path.name), rule.provenance
    if rule.source == "dicom" and header:
        return header, "dicom"
    return _column(entry, "patient_id"), "column"


def _label_reason(label: str, modality: str, classes: tuple[str, ...]) -> str:
    near = [c for c in classes if c.casefold() == label.strip().casefold()]
    hint = f" (did you mean {near[0]!r}? fix the CSV or map it in data.label_map)" if near else ""
    return f"label {label!r} is not one of data.classes.{modality} {list(classes)}{hint}"


def _mask_reason(source: Source, mask: str, shape: tuple[int, int]) -> str:
    """Why the labels' mask cannot go with its image ("" when it can): it must lie inside
    data.root, be readable and share the image's pixel grid."""
    path = source.raw_dir / mask
    if not folders.inside(path, source.root):
        return f"mask {mask} lies outside data.root: masks are read only from inside it"
    if not path.is_file():
        return f"mask {mask} listed in the labels not found"
    try:
        grid = imaging.load_mask(path).shape
    except MemoryError:
        raise
    except Exception as exc:
        return f"mask {mask} cannot be read ({imaging.first_line(exc)})"
    if grid != shape:
        return f"mask {mask} is {grid[0]} x {grid[1]} but its image {shape[0]} x {shape[1]}"
    return ""


def _column(entry: pd.Series | None, name: str) -> str:
    if entry is None or name not in entry.index:
        return ""
    return str(entry[name] or "")

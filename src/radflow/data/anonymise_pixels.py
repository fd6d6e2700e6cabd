"""Burned-in text: which images may show it, and blacking out configured regions.

An image that may carry burned-in identifying text (BurnedInAnnotation YES, or a modality
or SOP class that usually does: ultrasound, secondary capture, photographs, endoscopy,
microscopy, ophthalmic photos) is never passed on silently: it is quarantined unless a
blackout rule from params matches it (modality, SOP class, rows, columns; a field left
out matches anything). A matching rule fills its rectangles ``[x0, y0, x1, y1]`` (pixel
columns x0..x1-1, rows y0..y1-1) with zero in every frame. Blacked-out pixel data are
decoded (pylibjpeg handles JPEG, JPEG-LS, JPEG 2000 and RLE) and written uncompressed in
Explicit VR Little Endian; pixel data of every other image pass through byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

BURNED_IN_MODALITIES = {
    "US": "ultrasound",
    "SC": "secondary capture",
    "XC": "external-camera photograph",
    "ES": "endoscopy",
    "GM": "general microscopy",
    "OP": "ophthalmic photograph",
    "DOC": "scanned document",
}
BURNED_IN_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",  # and its multi-frame variants .7.x
    "1.2.840.10008.5.1.4.1.1.6.": "Ultrasound",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame",
    "1.2.840.10008.5.1.4.1.1.77.1.": "Visible Light",
    "1.2.840.10008.5.1.4.1.1.104.": "Encapsulated Document",
}


@dataclass(frozen=True)
class BlackoutRule:
    regions: tuple[tuple[int, int, int, int], ...]
    modality: str | None = None
    sop_class_uid: str | None = None
    rows: int | None = None
    columns: int | None = None

    def matches(self, ds: Dataset) -> bool:
        wanted = (
            (self.modality, str(ds.get("Modality", "")).strip().upper()),
            (self.sop_class_uid, str(ds.get("SOPClassUID", ""))),
            (self.rows, ds.get("Rows")),
            (self.columns, ds.get("Columns")),
        )
        return all(want is None or want == have for want, have in wanted)


def rules_from_params(entries: Sequence[Mapping[str, object]]) -> tuple[BlackoutRule, ...]:
    """params["anonymise"]["blackout"] (defaults filled) as rules; a null field matches all."""
    rules = []
    for i, entry in enumerate(entries):
        regions = tuple(tuple(int(v) for v in r) for r in entry["regions"] or [])  # type: ignore[union-attr]
        if not regions or any(len(r) != 4 or r[0] >= r[2] or r[1] >= r[3] for r in regions):
            raise ValueError(
                f"anonymise.blackout[{i}]: regions must be a non-empty list of "
                "[x0, y0, x1, y1] with x0 < x1 and y0 < y1"
            )
        modality = entry["modality"]
        rules.append(
            BlackoutRule(
                regions,  # type: ignore[arg-type]
                str(modality).upper() if modality else None,
                str(entry["sop_class_uid"]) if entry["sop_class_uid"] else None,
                int(entry["rows"]) if entry["rows"] else None,  # type: ignore[arg-type]
                int(entry["columns"]) if entry["columns"] else None,  # type: ignore[arg-type]
            )
        )
    return tuple(rules)


def burned_in_reason(ds: Dataset) -> str | None:
    """Why the pixels may show identifying text, or None."""
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "burned-in annotation: BurnedInAnnotation is YES"
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality in BURNED_IN_MODALITIES:
        return (
            f"possible burned-in annotation: Modality {modality} ({BURNED_IN_MODALITIES[modality]})"
        )
    sop_class = str(ds.get("SOPClassUID", ""))
    for prefix, name in BURNED_IN_SOP_CLASSES.items():
        if sop_class.startswith(prefix):
            return f"possible burned-in annotation: {name} SOP class"
    return None


def matching_rule(ds: Dataset, rules: Sequence[BlackoutRule]) -> BlackoutRule | None:
    return next((rule for rule in rules if rule.matches(ds)), None)


def black_out(ds: Dataset, rule: BlackoutRule) -> None:
    """Zero the rule's rectangles in every frame; the pixel data end up uncompressed."""
    if "PixelData" not in ds:
        raise ValueError("no pixel data to clean")
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    pixels = np.array(ds.pixel_array)  # a writable copy
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    view = pixels if frames > 1 else pixels[np.newaxis]
    for x0, y0, x1, y1 in rule.regions:
        view[:, y0:y1, x0:x1, ...] = 0
    ds.set_pixel_data(
        pixels,
        photometric_interpretation=str(ds.PhotometricInterpretation),
        bits_stored=int(ds.BitsStored),
        generate_instance_uid=False,
    )
    ds.BurnedInAnnotation = "NO"

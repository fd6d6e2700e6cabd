"""Reading pixels from DICOM, PNG/JPEG and NIfTI into plain float arrays.

Shared by ingest (can it be read?), preprocess (training arrays) and predict (new images),
so a model always sees pixels prepared the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut

RASTER_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# DICOM Modality attribute -> radflow modality.
DICOM_MODALITIES = {"MR": "mri", "CT": "ct", "DX": "xray", "CR": "xray", "DR": "xray"}


class ImageReadError(ValueError):
    """A file cannot be read as an image; the message says why."""


def detect_format(path: Path) -> str | None:
    """dicom | png | jpeg | nifti, or None when the file is none of them."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if path.suffix.lower() in RASTER_SUFFIXES:
        return RASTER_SUFFIXES[path.suffix.lower()]
    if path.suffix.lower() in {".dcm", ".dicom"} or _has_dicom_preamble(path):
        return "dicom"
    return None


def _has_dicom_preamble(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_dicom(path: Path, pixels: bool = True) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ImageReadError(f"not a readable DICOM file: {exc}") from exc


def dicom_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Modality values (e.g. Hounsfield units) with brighter = denser, middle frame if 3-D."""
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(f"pixel data cannot be decoded: {exc}") from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raw = raw[frames // 2]
    if getattr(ds, "SamplesPerPixel", 1) > 1:
        return _luminance(raw.astype(np.float32))
    values = apply_modality_lut(raw, ds).astype(np.float32)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        values = values.max() + values.min() - values
    return values


def slice_position(ds: pydicom.Dataset) -> str:
    """Where the slice lies along its series: ImagePositionPatient projected on the slice
    normal (mm), else InstanceNumber, else "" (as text, for the manifest)."""
    try:
        position = np.asarray(ds.ImagePositionPatient, dtype=float)
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
        value = float(position @ np.cross(orientation[:3], orientation[3:]))
    except (AttributeError, ValueError, TypeError):
        number = getattr(ds, "InstanceNumber", None)
        return "" if number in (None, "") else f"{float(number):g}"
    return f"{value:g}" if np.isfinite(value) else ""


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def load_pixels(path: str | Path, fmt: str | None = None) -> np.ndarray:
    """A 2-D float32 array for any supported file."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "dicom":
        return dicom_pixels(read_dicom(path))
    if fmt in ("png", "jpeg"):
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("L"), dtype=np.float32)
        except Exception as exc:
            raise ImageReadError(f"not a readable {fmt} image: {exc}") from exc
    if fmt == "nifti":
        return _middle_slice(_nifti_array(path)).astype(np.float32)
    raise ImageReadError(f"unsupported image format for {path.name}")


def _nifti_array(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        return np.asarray(nib.load(str(path)).dataobj)
    except Exception as exc:
        raise ImageReadError(f"not a readable NIfTI file: {exc}") from exc


def _middle_slice(arr: np.ndarray) -> np.ndarray:
    arr = np.squeeze(arr)
    while arr.ndim > 2:
        arr = arr[..., arr.shape[-1] // 2]
    if arr.ndim != 2:
        raise ImageReadError(f"expected a 2-D image or a volume, got shape {arr.shape}")
    return arr


def load_mask(path: str | Path) -> np.ndarray:
    """A boolean mask; any non-zero value is lesion."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "nifti":
        return _middle_slice(_nifti_array(path)) > 0
    if fmt in ("png", "jpeg"):
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"))
        # JPEG is lossy, so its background is not exactly zero.
        return grey > (127 if fmt == "jpeg" else 0)
    raise ImageReadError(f"mask {path} must be NIfTI or PNG")

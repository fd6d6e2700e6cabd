"""Reading pixels from DICOM, PNG/JPEG and NIfTI into plain float arrays.

Shared by ingest (can it be read?), preprocess (training arrays) and predict (new images),
so a model always sees pixels prepared the same way.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import pixels as pixels_api
from pydicom.pixels import apply_modality_lut

RASTER_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")

# DICOM Modality attribute -> radflow modality.
DICOM_MODALITIES = {"MR": "mri", "CT": "ct", "DX": "xray", "CR": "xray", "DR": "xray"}


# One frame or slice larger than 8192 x 8192 is refused before it is decoded: a damaged header
# must not make a reader allocate gigabytes.
MAX_FRAME_PIXELS = 1 << 26


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
        raise ImageReadError(f"not a readable DICOM file: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_dicom_image(ds: pydicom.Dataset) -> int:
    """Refuse an image whose header cannot describe its pixels, before anything is decoded
    or allocated; returns the number of frames. Each reason names the attribute."""
    if "PixelData" not in ds:
        raise ImageReadError(
            "no pixel data: not an image (e.g. a report or presentation state); remove it"
        )
    syntax = transfer_syntax(ds)
    rows, cols = _header_int(ds, "Rows"), _header_int(ds, "Columns")
    samples = _header_int(ds, "SamplesPerPixel", 1)
    allocated, stored = _header_int(ds, "BitsAllocated"), _header_int(ds, "BitsStored")
    frames = _header_int(ds, "NumberOfFrames", 1)
    if rows < 1 or cols < 1 or frames < 1:
        raise ImageReadError(f"impossible size: Rows {rows}, Columns {cols}, {frames} frames")
    if rows * cols > MAX_FRAME_PIXELS:
        raise ImageReadError(
            f"a {rows} x {cols} frame is larger than radflow reads ({MAX_FRAME_PIXELS} pixels)"
        )
    if samples not in (1, 3):
        raise ImageReadError(f"SamplesPerPixel {samples}: only 1 (grey) or 3 (colour) exist")
    if allocated not in (1, 8, 16, 32, 64) or not 1 <= stored <= allocated:
        raise ImageReadError(f"BitsAllocated {allocated} / BitsStored {stored} are impossible")
    if _header_int(ds, "PixelRepresentation", 0) not in (0, 1):
        raise ImageReadError("PixelRepresentation must be 0 (unsigned) or 1 (signed)")
    _check_photometric(ds, samples)
    _check_rescale(ds)
    data = ds.get_item("PixelData").value or b""
    if syntax.is_encapsulated:
        if not data.startswith(b"\xfe\xff\x00\xe0"):
            raise ImageReadError(f"pixel data is not encapsulated, as {syntax.name} requires")
        decoder = pixels_api.get_decoder(syntax)
        if not decoder.is_available:
            raise ImageReadError(
                f"no decoder for {syntax.name} is installed: pip install pylibjpeg[all]"
            )
    elif len(data) < -(-rows * cols * samples * frames * allocated // 8):
        raise ImageReadError("truncated pixel data (shorter than Rows x Columns x frames)")
    return frames


def transfer_syntax(ds: pydicom.Dataset) -> pydicom.uid.UID:
    """The file meta's Transfer Syntax UID, or ImageReadError when it is none."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise ImageReadError("the file meta lacks its Transfer Syntax UID; re-export the file")
    syntax = pydicom.uid.UID(str(syntax))
    if not syntax.is_transfer_syntax:
        raise ImageReadError(
            "the file meta's Transfer Syntax UID is no known transfer syntax: the file is "
            "damaged; re-export it"
        )
    return syntax


def _header_int(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    if keyword not in ds and default is None:
        raise ImageReadError(f"header {keyword} is missing")
    try:
        return int(ds.get(keyword, default))
    except Exception:  # pydicom converts on access: a malformed value raises there
        raise ImageReadError(f"header {keyword} is not a whole number") from None


PHOTOMETRIC = {
    1: ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"),
    3: ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"),
}


def _check_photometric(ds: pydicom.Dataset, samples: int) -> None:
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if photometric not in PHOTOMETRIC[samples]:
        raise ImageReadError(
            f"PhotometricInterpretation is not one of {', '.join(PHOTOMETRIC[samples])} "
            f"(SamplesPerPixel {samples})"
        )
    if photometric == "PALETTE COLOR" and "RedPaletteColorLookupTableDescriptor" not in ds:
        raise ImageReadError("PALETTE COLOR image without its colour lookup tables")


def _check_rescale(ds: pydicom.Dataset) -> None:
    """RescaleSlope and RescaleIntercept turn stored values into Hounsfield units and the
    like: a malformed one would make every pixel wrong (or fail deep inside numpy)."""
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword not in ds:
            continue
        try:
            element = ds[keyword]
            if element.VM == 0:
                continue
            value = float(element.value)
        except Exception:  # pydicom converts on access: a malformed value raises there
            raise ImageReadError(f"header {keyword} is not one decimal number") from None
        if not math.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
            raise ImageReadError(f"header {keyword} is {value:g}: no usable pixel values")


def dicom_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Modality values (e.g. Hounsfield units) with brighter = denser, middle frame if 3-D;
    only that frame is decoded."""
    frames = check_dicom_image(ds)
    try:
        raw = pixels_api.pixel_array(ds, index=frames // 2) if frames > 1 else ds.pixel_array
    except Exception as exc:
        raise ImageReadError(f"pixel data cannot be decoded: {first_line(exc)}") from exc
    try:
        if str(ds.PhotometricInterpretation).strip() == "PALETTE COLOR":
            return _luminance(pixels_api.apply_color_lut(raw, ds).astype(np.float32))
        if raw.ndim == 3:
            return _luminance(raw.astype(np.float32))
        values = apply_modality_lut(raw, ds).astype(np.float32)
    except Exception as exc:  # a lookup table that does not fit its pixels
        raise ImageReadError(f"pixel values cannot be computed: {first_line(exc)}") from exc
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        values = values.max() + values.min() - values
    return check_values(values, "pixel")


def check_values(values: np.ndarray, what: str) -> np.ndarray:
    """Refuse non-finite and constant images after decoding: nothing a model can use."""
    if values.size == 0:
        raise ImageReadError(f"no {what}s")
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(values.size - finite.sum())
        raise ImageReadError(f"{bad} of {values.size} {what} values are NaN or infinite")
    if values.min() == values.max():
        raise ImageReadError(
            f"every {what} has the same value: a blank image, nothing to learn or explain"
        )
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
    """A 2-D float32 array for any supported file; ImageReadError, with the reason, for any
    file that cannot give one."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "dicom":
        return dicom_pixels(read_dicom(path))
    if fmt in ("png", "jpeg"):
        return check_values(_raster(path, fmt), "pixel")
    if fmt == "nifti":
        return check_values(_nifti_slice(path).astype(np.float32), "voxel")
    raise ImageReadError(f"unsupported image format for {path.name}")


# Pillow modes that hold more than 8 bits per pixel: read as numbers, not converted to 8 bits.
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def _raster(path: Path, fmt: str) -> np.ndarray:
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_FRAME_PIXELS:
                raise ImageReadError(
                    f"a {width} x {height} image is larger than radflow reads "
                    f"({MAX_FRAME_PIXELS} pixels)"
                )
            img.load()
            if img.mode in WIDE_MODES:
                return np.asarray(img, dtype=np.float32)
            return np.asarray(img.convert("L"), dtype=np.float32)
    except ImageReadError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise ImageReadError(f"not a readable {fmt} image: {first_line(exc)}") from exc


def _nifti_slice(path: Path) -> np.ndarray:
    """The middle slice of a 2-D image or 3-D volume; only that slice is read."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        shape = tuple(int(n) for n in image.shape)
    except Exception as exc:
        raise ImageReadError(f"not a readable NIfTI file: {first_line(exc)}") from exc
    kept = [n for n in shape if n != 1]
    if len(kept) > 3:
        raise ImageReadError(
            f"a {len(kept)}-D NIfTI {shape}: radflow reads one 2-D image or 3-D volume per "
            "file; split the series into files"
        )
    if len(kept) < 2 or min(shape) < 1:
        raise ImageReadError(f"a NIfTI of shape {shape} holds no 2-D image")
    if not str(path).lower().endswith(".gz"):  # a truncated .nii: its size says so
        needed = image.dataobj.offset + math.prod(shape) * image.get_data_dtype().itemsize
        if path.stat().st_size < needed:
            raise ImageReadError("truncated NIfTI: the file is shorter than its voxel data")
    plane = kept[:2]
    if plane[0] * plane[1] > MAX_FRAME_PIXELS:
        raise ImageReadError(f"a {plane[0]} x {plane[1]} slice is larger than radflow reads")
    where: list[int | slice] = []
    for n in shape:  # singleton axes: 0; the first two others: whole; a third: its middle
        planar = n != 1 and sum(isinstance(w, slice) for w in where) < 2
        where.append(slice(None) if planar else n // 2)
    try:
        return np.asarray(image.dataobj[tuple(where)]).reshape(plane)
    except Exception as exc:
        raise ImageReadError(f"NIfTI voxel data cannot be read: {first_line(exc)}") from exc


def load_mask(path: str | Path) -> np.ndarray:
    """A boolean mask; any non-zero value is lesion. ImageReadError when unreadable."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt == "nifti":
        return np.nan_to_num(_nifti_slice(path)) > 0
    if fmt in ("png", "jpeg"):
        grey = _raster(path, fmt)
        # JPEG is lossy, so its background is not exactly zero.
        return grey > (127 if fmt == "jpeg" else 0)
    raise ImageReadError(f"mask {path.name} must be NIfTI or PNG")

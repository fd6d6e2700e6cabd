"""Mask exports a viewer can open: PNG (0/255), NIfTI, and DICOM SEG (highdicom) for DICOM
inputs. Pure functions returning bytes or datasets; the CLI writes them.

NIfTI geometry: for a DICOM source the affine comes from its Image Position / Orientation
(Patient) and Pixel Spacing, converted from DICOM's LPS to NIfTI's RAS; for a raster
source (PNG/JPEG) it is the identity (pixel units), the same convention as the demo's
NIfTI masks. The array is stored (columns, rows, 1), nibabel's usual x, y, z order.
"""

from __future__ import annotations

import gzip
import io

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
from PIL import Image
from pydicom.sr.codedict import codes

from radflow import __version__


def mask_png(mask: np.ndarray) -> bytes:
    """A 0/255 greyscale PNG of a boolean mask."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L").save(buffer, "PNG")
    return buffer.getvalue()


def nifti_affine(ds: pydicom.Dataset | None) -> np.ndarray:
    """4 x 4 RAS affine for a single-frame DICOM image (identity without geometry)."""
    affine = np.eye(4)
    if ds is None:
        return affine
    orientation = getattr(ds, "ImageOrientationPatient", None)
    position = getattr(ds, "ImagePositionPatient", None)
    spacing = getattr(ds, "PixelSpacing", None)
    if not (orientation and position and spacing):
        if spacing:
            affine[0, 0], affine[1, 1] = float(spacing[1]), float(spacing[0])
        return affine
    row_dir = np.array([float(v) for v in orientation[:3]])  # along a row: column index
    col_dir = np.array([float(v) for v in orientation[3:]])  # down a column: row index
    normal = np.cross(row_dir, col_dir)
    thickness = float(getattr(ds, "SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * float(spacing[1])
    lps[:3, 1] = col_dir * float(spacing[0])
    lps[:3, 2] = normal * thickness
    lps[:3, 3] = [float(v) for v in position]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS


def nifti_bytes(mask: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file of a (rows, columns) mask as uint8 0/1."""
    data = np.asarray(mask, dtype=np.uint8).T[:, :, None]
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm" if not np.allclose(affine, np.eye(4)) else "unknown")
    raw = image.to_bytes()
    return gzip.compress(raw, mtime=0)


def dicom_seg(
    source: pydicom.Dataset, mask: np.ndarray, label: str = "lesion", series_number: int = 901
) -> pydicom.Dataset:
    """A binary DICOM Segmentation of one single-frame image, referencing it (highdicom).

    The segment is an automatic, AI-made "Neoplasm" (SCT 108369006) called ``label``.
    """
    mask = np.asarray(mask, dtype=bool)
    source = _with_type2_attributes(source)
    rows, cols = int(source.Rows), int(source.Columns)
    if mask.shape != (rows, cols):
        raise ValueError(f"mask {mask.shape} does not match the DICOM image ({rows}, {cols})")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="radflow segmenter", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="radflow",
        manufacturer_model_name="radflow segmenter",
        software_versions=__version__,
        device_serial_number="radflow",
        omit_empty_frames=False,
    )


# Patient / study attributes a SEG copies from its source: type 2 (present, may be empty),
# so de-identified sources that dropped them get empty values on a copy.
TYPE2_FROM_SOURCE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName",
)  # fmt: skip


def _with_type2_attributes(source: pydicom.Dataset) -> pydicom.Dataset:
    missing = [k for k in TYPE2_FROM_SOURCE if k not in source]
    if not missing:
        return source
    copy = pydicom.Dataset(source)
    copy.file_meta = getattr(source, "file_meta", pydicom.dataset.FileMetaDataset())
    for keyword in missing:
        setattr(copy, keyword, None)
    return copy


def dicom_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

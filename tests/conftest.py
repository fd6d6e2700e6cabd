"""Shared fixtures: small hand-made images, so unit tests need neither the demo nor a network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["DVC_NO_ANALYTICS"] = "1"

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
}


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Converted weights go to a per-run cache, never the user's."""
    os.environ["RADFLOW_CACHE"] = str(tmp_path_factory.mktemp("radflow-cache"))


def dicom_dataset(
    pixels: np.ndarray,
    modality: str = "CT",
    patient_id: str = "P1",
    study_uid: str | None = None,
    intercept: float = -1024.0,
    photometric: str = "MONOCHROME2",
) -> Dataset:
    """A minimal valid single-frame DICOM image with unsigned 16-bit pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = f"Test^{patient_id}"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if modality == "CT":
        ds.RescaleIntercept, ds.RescaleSlope = intercept, 1.0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def write_dicom(path: Path, pixels: np.ndarray, *args: object, **kwargs: object) -> Path:
    """dicom_dataset(pixels, ...) saved as a DICOM file at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dicom_dataset(pixels, *args, **kwargs).save_as(path, enforce_file_format=True)  # type: ignore[arg-type]
    return path


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def train_segmenter_dir(
    out: Path, inputs: np.ndarray, masks: np.ndarray, n_train: int, train_params: dict
) -> Path:
    """Train a small segmenter (the first n_train images train, the rest validate) and save
    it as a model directory whose meta.json says how predict prepares MRI images."""
    from radflow.learning import models, segmentation

    result, origin = segmentation.train_segmenter(
        inputs, masks, np.arange(n_train), np.arange(n_train, len(inputs)), train_params, 0
    )
    size = inputs.shape[-1]
    meta = {
        "task": "segmenter", "modality": "mri", "image_size": size,
        "in_chans": segmentation.in_channels(train_params["segmenter"]),
        "preprocess": {"image_size": size, "percentiles": {"mri": [0.0, 100.0]}},
        "trained": True, "weights_origin": origin,
        **segmentation.settings(train_params["segmenter"]),
    }  # fmt: skip
    models.save_model(out, result.state, meta, result.history)
    return out


def filled(section: str, values: dict) -> dict:
    """params[section] as params.load gives it to a stage: values plus the schema's defaults."""
    from radflow.core import params

    return params.with_defaults({section: values})[section]


@pytest.fixture(scope="session")
def demo_origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout as a git repository with the tiny demo params committed."""
    from project import make_origin

    return make_origin(tmp_path_factory.mktemp("origin") / "radflow")


@pytest.fixture(scope="session")
def demo_clone(demo_origin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh `git clone` after the one command users run: the whole demo under Snakemake.

    Shared by every test module: tests that change files work on `project.copy_project`.
    """
    from project import clone, run

    work = clone(demo_origin, tmp_path_factory.mktemp("clone") / "radflow")
    run(["snakemake", "--cores", "2"], work)
    return work

"""The demo cohort: deterministic, complete, and carrying what later stages rely on."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import filled
from PIL import Image
from pydicom.uid import UID, ExplicitVRLittleEndian

from radflow.data.demo import PRIVATE_CREATOR, SPECS, generate_cohort

SMALL = {
    "patients_per_modality": 5,
    "max_studies_per_patient": 2,
    "images_per_study": 2,
    "image_size": 96,
    "lesion_fraction": 0.5,
}  # every key of params["demo"], so no defaults are involved
PHI_KEYWORDS = [
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "OtherPatientIDs",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "SeriesDate",
    "SeriesTime",
    "AcquisitionDate",
    "AcquisitionTime",
    "ContentDate",
    "ContentTime",
    "StationName",
    "DeviceSerialNumber",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "StudyDescription",
    "SeriesDescription",
    "ImageComments",
    "PatientComments",
]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("demo")
    return root, generate_cohort(root, SMALL, seed=7)


@pytest.fixture(scope="module")
def headers(cohort: tuple[Path, pd.DataFrame]) -> pd.DataFrame:
    """One row per image: labels plus the header fields the tests look at."""
    root, labels = cohort
    rows = []
    for row in labels.itertuples():
        ds = pydicom.dcmread(root / row.path)
        rows.append(
            {
                "path": row.path,
                "label": row.label,
                "mask": row.mask,
                "modality": row.path.split("/")[0],
                "patient": ds.PatientID,
                "study": ds.StudyInstanceUID,
            }
        )
    return pd.DataFrame(rows)


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel values with MONOCHROME1 inverted, so bright always means dense."""
    pixels = ds.pixel_array.astype(float)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = (2**ds.BitsStored - 1) - pixels
    return pixels


def _read_mask(path: Path) -> np.ndarray:
    if path.name.endswith(".nii.gz"):
        return np.asarray(nib.load(path).dataobj)
    return np.asarray(Image.open(path))


def test_demo_is_byte_identical_for_the_same_seed(tmp_path: Path) -> None:
    params = {**SMALL, "patients_per_modality": 2, "images_per_study": 1, "image_size": 48}
    generate_cohort(tmp_path / "a", params, seed=3)
    generate_cohort(tmp_path / "b", params, seed=3)
    generate_cohort(tmp_path / "c", params, seed=4)
    first, second, other = (_files(tmp_path / d) for d in "abc")
    assert first == second
    assert first != other


def test_different_seeds_give_different_patients(tmp_path: Path) -> None:
    params = {**SMALL, "patients_per_modality": 2, "images_per_study": 1, "image_size": 48}
    a = generate_cohort(tmp_path / "a", params, seed=3)
    b = generate_cohort(tmp_path / "b", params, seed=4)
    name_a = pydicom.dcmread(tmp_path / "a" / a.path[0]).PatientName
    name_b = pydicom.dcmread(tmp_path / "b" / b.path[0]).PatientName
    assert name_a != name_b


def test_returned_table_matches_labels_csv(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, labels = cohort
    on_disk = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    assert list(on_disk.columns) == ["path", "label", "mask"]
    pd.testing.assert_frame_equal(on_disk, labels.astype(str))
    assert not labels["path"].str.contains(r"\\").any()
    assert all((root / p).is_file() for p in labels["path"])


def test_demo_writes_every_modality_with_both_labels(headers: pd.DataFrame) -> None:
    for name, spec in SPECS.items():
        subset = headers[headers["modality"] == name]
        assert set(subset["label"]) == set(spec.labels), name


def test_dicom_modality_and_sop_class_follow_the_radflow_modality(
    cohort: tuple[Path, pd.DataFrame],
) -> None:
    root, labels = cohort
    allowed = {"mri": {"MR"}, "ct": {"CT"}, "xray": {"DX", "CR"}}
    seen: dict[str, set[str]] = {m: set() for m in allowed}
    for path in labels["path"]:
        ds = pydicom.dcmread(root / path)
        modality = path.split("/")[0]
        seen[modality].add(ds.Modality)
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPClassUID.name.startswith(
            {
                "MR": "MR Image",
                "CT": "CT Image",
                "DX": "Digital X-Ray",
                "CR": "Computed Radiography",
            }[ds.Modality]
        )
    for modality, values in seen.items():
        assert values and values <= allowed[modality], modality
    assert seen["xray"] == {"DX", "CR"}


def test_label_is_constant_within_a_study(headers: pd.DataFrame) -> None:
    assert (headers.groupby("study")["label"].nunique() == 1).all()
    assert (headers.groupby("study")["path"].count() == SMALL["images_per_study"]).all()


def test_some_patients_have_more_than_one_study(headers: pd.DataFrame) -> None:
    for modality, subset in headers.groupby("modality"):
        studies = subset.groupby("patient")["study"].nunique()
        assert studies.max() >= 2, modality
        assert studies.max() <= SMALL["max_studies_per_patient"], modality
        assert subset["patient"].nunique() == SMALL["patients_per_modality"], modality
        mixed = subset.groupby("patient")["label"].nunique()
        assert (mixed == 2).sum() >= 2, f"{modality}: want patients with both labels"


def test_no_patient_id_is_shared_between_modalities(headers: pd.DataFrame) -> None:
    per_patient = headers.groupby("patient")["modality"].nunique()
    assert (per_patient == 1).all()


def test_every_lesion_image_has_a_nonempty_mask_on_the_same_grid(
    cohort: tuple[Path, pd.DataFrame],
) -> None:
    root, labels = cohort
    for row in labels.itertuples():
        positive = row.label == SPECS[row.path.split("/")[0]].labels[1]
        assert bool(row.mask) == positive, row.path
        if not positive:
            continue
        pixels = pydicom.dcmread(root / row.path).pixel_array
        mask = _read_mask(root / row.mask)
        assert mask.shape == pixels.shape
        assert mask.dtype == np.uint8
        on = 255 if row.mask.endswith(".png") else 1
        assert set(np.unique(mask)) == {0, on}, row.mask
        stem = row.path.removesuffix(".dcm")
        assert row.mask.startswith(f"masks/{stem}")


def test_nifti_masks_have_an_identity_affine(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, labels = cohort
    path = next(m for m in labels["mask"] if m.endswith(".nii.gz"))
    assert np.allclose(nib.load(root / path).affine, np.eye(4))


def test_ct_pixels_convert_to_hounsfield_units_with_rescale(
    cohort: tuple[Path, pd.DataFrame],
) -> None:
    root, labels = cohort
    for path in labels.loc[labels["path"].str.startswith("ct/"), "path"]:
        ds = pydicom.dcmread(root / path)
        assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        assert "WindowCenter" in ds and "WindowWidth" in ds
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        s = hu.shape[0]
        assert abs(np.mean(hu[:4, :4]) - (-1000)) < 60, "air corner should be about -1000 HU"
        lungs = [
            np.median(hu[int(0.42 * s) : int(0.56 * s), c - 4 : c + 4])
            for c in (int(0.31 * s), int(0.69 * s))
        ]
        assert min(lungs) < -500, f"lung should be well below -500 HU in {path}"
        mediastinum = np.median(hu[s // 2 - 3 : s // 2 + 3, s // 2 - 3 : s // 2 + 3])
        assert -200 < mediastinum < 200, "mediastinum should be soft tissue"


def test_ct_nodules_are_denser_than_the_surrounding_lung(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, labels = cohort
    rows = labels[labels["path"].str.startswith("ct/") & (labels["mask"] != "")]
    assert len(rows)
    for row in rows.itertuples():
        hu = pydicom.dcmread(root / row.path).pixel_array.astype(float) - 1024
        mask = _read_mask(root / row.mask).astype(bool)
        assert hu[mask].mean() > -700


def test_xray_monochrome1_images_are_inverted(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, labels = cohort
    seen = set()
    for path in labels.loc[labels["path"].str.startswith("xray/"), "path"]:
        ds = pydicom.dcmread(root / path)
        assert ds.BitsStored == 12 and ds.HighBit == 11
        seen.add(ds.PhotometricInterpretation)
        s = ds.Rows
        raw, shown = ds.pixel_array.astype(float), _display(ds)
        lung = (slice(int(0.36 * s), int(0.46 * s)), slice(int(0.26 * s), int(0.34 * s)))
        centre = (slice(int(0.36 * s), int(0.46 * s)), slice(int(0.47 * s), int(0.53 * s)))
        assert shown[lung].mean() < shown[centre].mean(), f"lung should look dark in {path}"
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert ds.Modality == "CR"
            assert raw[lung].mean() > raw[centre].mean()
    assert seen == {"MONOCHROME1", "MONOCHROME2"}


def test_mri_is_uint16_magnitude_with_a_brain_inside_dark_background(
    cohort: tuple[Path, pd.DataFrame],
) -> None:
    root, labels = cohort
    path = labels.loc[labels["path"].str.startswith("mri/"), "path"].iloc[0]
    ds = pydicom.dcmread(root / path)
    pixels = ds.pixel_array
    assert pixels.dtype == np.uint16 and ds.Modality == "MR"
    s = pixels.shape[0]
    assert (
        pixels[s // 2 - 5 : s // 2 + 5, s // 4 - 3 : s // 4 + 3].mean() > 5 * pixels[:5, :5].mean()
    )


def test_headers_carry_the_planted_phi(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, labels = cohort
    names = set()
    for path in labels.groupby(labels["path"].str.split("/").str[:2].str.join("/"))["path"].first():
        ds = pydicom.dcmread(root / path)
        for keyword in PHI_KEYWORDS:
            assert str(ds.get(keyword, "")).strip(), f"{keyword} missing in {path}"
        family, given = str(ds.PatientName).split("^")[:2]
        names.add(str(ds.PatientName))
        for text in (ds.PatientComments, ds.ImageComments):
            assert family in text or given in text
        request = ds.RequestAttributesSequence[0]
        assert request.AccessionNumber == ds.AccessionNumber and request.RequestedProcedureID
        block = ds.private_block(0x0009, PRIVATE_CREATOR)
        assert str(block[0x01].value) == str(ds.PatientName)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.ImplementationClassUID
    assert len(names) == 3 * SMALL["patients_per_modality"]


def test_uids_are_valid_and_instances_unique(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, labels = cohort
    sops = []
    for path in labels["path"]:
        ds = pydicom.dcmread(root / path)
        for keyword in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "FrameOfReferenceUID",
        ):
            assert UID(ds[keyword].value).is_valid, keyword
        sops.append(ds.SOPInstanceUID)
    assert len(set(sops)) == len(sops)


def test_image_geometry_attributes_are_present(cohort: tuple[Path, pd.DataFrame]) -> None:
    root, labels = cohort
    for path in labels.groupby(labels["path"].str.split("/").str[0])["path"].first():
        ds = pydicom.dcmread(root / path)
        assert (ds.Rows, ds.Columns) == (SMALL["image_size"],) * 2
        assert ds.SamplesPerPixel == 1 and ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
        assert ds.HighBit == ds.BitsStored - 1
        assert len(ds.PixelSpacing) == 2 and len(ds.ImagePositionPatient) == 3
        assert ds.InstanceNumber >= 1
        if ds.Modality in ("CT", "MR"):
            assert float(ds.SliceThickness) > 0


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_both_labels_are_present_even_at_extreme_lesion_fractions(
    tmp_path: Path, fraction: float
) -> None:
    params = {
        "patients_per_modality": 2,
        "max_studies_per_patient": 1,
        "images_per_study": 1,
        "image_size": 48,
        "lesion_fraction": fraction,
    }
    labels = generate_cohort(tmp_path, params, seed=1)  # every key given
    for name, spec in SPECS.items():
        assert set(labels.loc[labels["path"].str.startswith(name), "label"]) == set(spec.labels)


def test_missing_params_come_from_the_schema_defaults(tmp_path: Path) -> None:
    labels = generate_cohort(
        tmp_path, filled("demo", {"patients_per_modality": 2, "image_size": 48}), seed=1
    )
    ds = pydicom.dcmread(tmp_path / labels["path"].iloc[0])
    assert ds.Rows == 48
    assert (labels.groupby(labels["path"].str.rsplit("/", n=1).str[0]).size() == 3).all()


def test_params_without_the_schema_defaults_are_an_error_not_a_second_set_of_defaults(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="images_per_study"):
        generate_cohort(tmp_path, {"patients_per_modality": 2, "image_size": 48}, seed=1)
    assert not any(tmp_path.iterdir())


def test_impossible_params_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="two studies"):
        generate_cohort(
            tmp_path, filled("demo", {"patients_per_modality": 1, "max_studies_per_patient": 1}), 1
        )
    assert not any(tmp_path.iterdir())


def test_rerun_with_fewer_patients_leaves_no_stale_images_but_keeps_foreign_files(
    tmp_path: Path,
) -> None:
    params = filled("demo", {"patients_per_modality": 3, "images_per_study": 1, "image_size": 48})
    generate_cohort(tmp_path, params, seed=1)
    foreign = tmp_path / "mri" / "notes.txt"
    foreign.write_text("keep me")
    labels = generate_cohort(tmp_path, {**params, "patients_per_modality": 2}, seed=1)
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("IMG*")}
    listed = set(labels["path"]) | set(labels.loc[labels["mask"] != "", "mask"])
    assert on_disk == listed
    assert not (tmp_path / "mri" / "pat003").exists()
    assert foreign.read_text() == "keep me"

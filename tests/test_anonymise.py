"""Behaviour of the anonymise stage: nothing identifying survives, the rest is untouched."""

from __future__ import annotations

import hashlib
import logging
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import filled
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from radflow.core import manifest as mf
from radflow.data import anonymise as an

KEY = b"radflow-test-key-0123456789abcdef"
OTHER_KEY = b"another-test-key-fedcba9876543210"
ROOT = "1.2.826.0.1.3680043.8.498.4242."  # all planted UIDs live here
PLANTED_DATES = ("19700402", "20210314", "20210301", "20210413")


def uid(n: int) -> str:
    return f"{ROOT}{n}"


def planted_dataset(
    patient_id: str = "PID-PLANTED-0001",
    name: str = "Doe^Planted",
    study: int = 1,
    series: int = 2,
    sop: int = 3,
    study_date: str = "20210314",
    referenced_sop: int = 99,
    seed: int = 1,
) -> Dataset:
    """A CT instance with identifiers planted at every depth (all contain 'Planted')."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid(sop)
    ds.StudyInstanceUID = uid(study)
    ds.SeriesInstanceUID = uid(series)
    ds.FrameOfReferenceUID = uid(sop + 1000)
    ds.Modality = "CT"
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "ISSUER-PLANTED"
    ds.PatientBirthDate = "19700402"
    ds.PatientSex = "F"
    ds.PatientAge = "051Y"
    ds.PatientAddress = "12 Planted Street, Springfield"
    ds.PatientTelephoneNumbers = "555-PLANTED-99"
    ds.OtherPatientIDs = "OTHERID-PLANTED"
    ds.PatientComments = "Planted patient comment"
    ds.AdditionalPatientHistory = "Planted history"
    ds.InstitutionName = "Planted General Hospital"
    ds.InstitutionAddress = "1 Planted Avenue"
    ds.ReferringPhysicianName = "Refer^Planted"
    ds.PerformingPhysicianName = "Perform^Planted"
    ds.OperatorsName = "Operator^Planted"
    ds.AccessionNumber = "ACC-PLANTED-5"
    ds.StationName = "STN-PLANTED"
    ds.DeviceSerialNumber = "SN-PLANTED-9"
    ds.StudyID = "SID-PLANTED"
    ds.StudyDescription = "Planted study of Doe"
    ds.SeriesDescription = "Planted series"
    ds.ImageComments = "Patient Doe^Planted says hello"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = "101500"
    ds.AcquisitionDateTime = f"{study_date}101530.123456"
    ds.OtherPatientIDsSequence = Sequence([Dataset()])
    ds.OtherPatientIDsSequence[0].PatientID = "OPID-PLANTED"
    ds.RequestAttributesSequence = Sequence([Dataset()])
    ds.RequestAttributesSequence[0].RequestedProcedureID = "RPID-PLANTED"
    inner = Dataset()
    inner.ReferencedSOPClassUID = CTImageStorage
    inner.ReferencedSOPInstanceUID = uid(referenced_sop)
    inner.InstitutionName = "Nested Planted Clinic"
    inner.ContentDate = "20210301"
    inner.PersonName = "Nested^Planted^Person"  # not in the table: PN rule
    inner.UID = uid(777)  # not in the table: UI rule
    inner.TextValue = "Planted free text"  # not in the table: UT rule
    inner.private_block(0x0011, "NESTED PLANTED", create=True).add_new(
        0x01, "LO", "Nested^Planted private"
    )
    outer = Dataset()
    outer.SeriesInstanceUID = uid(series)
    outer.ReferencedInstanceSequence = Sequence([inner])
    ds.ReferencedSeriesSequence = Sequence([outer])
    ds.private_block(0x0009, "PLANTED CREATOR", create=True).add_new(
        0x01, "LO", "Doe^Planted private"
    )
    ds.add_new(0x60000022, "LO", "Overlay Planted text")
    ds.add_new(0x50002500, "LO", "Curve Planted label")
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(16, dtype=np.uint16) * seed + seed).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid(sop)
    ds.file_meta.SourceApplicationEntityTitle = "AE_PLANTED"
    ds.preamble = b"Doe^Planted".ljust(128, b"\x00")
    return ds


def write_dicom(path: Path, ds: Dataset) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def manifest_row(
    path: Path,
    patient_key: str,
    study_key: str = "",
    series_key: str = "",
    fmt: str = "dicom",
    mask_path: str = "",
) -> dict:
    data = path.read_bytes() if path.exists() else str(path).encode()
    digest = hashlib.sha256(data).hexdigest()
    return {
        "image_id": digest[:16],
        "source_path": str(path),
        "sha256": digest,
        "format": fmt,
        "modality": "ct",
        "patient_key": patient_key,
        "study_key": study_key,
        "series_key": series_key,
        "label": "nodule",
        "mask_path": mask_path,
        "rows": 4,
        "cols": 4,
        "frames": 1,
    }


def dicom_row(path: Path, ds: Dataset) -> dict:
    write_dicom(path, ds)
    return manifest_row(path, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID)


def run_manifest(rows: list[dict], out_dir: Path, key: bytes = KEY):
    return an.anonymise_manifest(mf.conform(pd.DataFrame(rows)), out_dir, key)


def output_bytes(out_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(out_dir.rglob("*")) if p.is_file())


def planted_identifiers(ds: Dataset) -> list[bytes]:
    uids = [ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID]
    return [v.encode() for v in (*uids, ds.PatientID, *PLANTED_DATES)] + [ROOT.encode()]


@pytest.fixture
def two_patients(tmp_path: Path) -> list[dict]:
    raw = tmp_path / "raw" / "Doe_Planted"
    return [
        dicom_row(raw / "a.dcm", planted_dataset(sop=3, seed=1)),
        dicom_row(raw / "b.dcm", planted_dataset(sop=4, referenced_sop=3, seed=2)),
        dicom_row(raw / "c.dcm", planted_dataset("PID-PLANTED-0002", "Roe^Planted", 11, 12, 13)),
    ]


def test_no_identifier_survives_in_any_output_byte(tmp_path, two_patients, caplog):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    new, audit, quarantine = run_manifest(two_patients, out)
    an.write_tables(out, new, audit, quarantine)

    assert len(new) == 3 and quarantine.empty
    everything = output_bytes(out)
    assert b"planted" not in everything.lower()
    for value in planted_identifiers(planted_dataset()) + [b"PID-PLANTED-0002"]:
        assert value not in everything
    assert KEY not in everything
    assert "planted" not in caplog.text.lower() and KEY.decode() not in caplog.text


def test_output_reads_back_with_identical_pixels_and_deidentification_markers(
    tmp_path, two_patients
):
    new, _, _ = run_manifest(two_patients, tmp_path / "out")

    for row, original in zip(new.itertuples(), two_patients, strict=True):
        before = pydicom.dcmread(original["source_path"])
        after = pydicom.dcmread(row.source_path)
        assert after.PixelData == before.PixelData
        assert after.SOPClassUID == before.SOPClassUID
        assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        assert after.SOPInstanceUID != before.SOPInstanceUID
        assert after.PatientIdentityRemoved == "YES"
        assert "E.1-1" in after.DeidentificationMethod
        assert after.PatientSex == "" and "PatientAge" not in after  # Z and X by default
        assert after.preamble == b"\x00" * 128
        assert row.sha256 == hashlib.sha256(Path(row.source_path).read_bytes()).hexdigest()
        assert row.image_id == original["image_id"]


def test_private_overlay_and_curve_tags_are_removed_at_every_depth(tmp_path, two_patients):
    new, _, _ = run_manifest(two_patients[:1], tmp_path / "out")
    after = pydicom.dcmread(new.loc[0, "source_path"])

    tags = [elem.tag for elem in after.iterall()]
    assert not [t for t in tags if t.is_private]
    assert not [t for t in tags if (t.group & 0xFF00) in (0x5000, 0x6000)]
    assert "RequestAttributesSequence" not in after
    assert "OtherPatientIDsSequence" not in after
    nested = after.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert nested.InstitutionName == ""  # X/Z/D: kept present, emptied
    assert nested.ReferencedSOPClassUID == CTImageStorage


def test_same_patient_gets_same_pseudonym_in_header_and_manifest(tmp_path, two_patients):
    new, _, _ = run_manifest(two_patients, tmp_path / "out")

    headers = [pydicom.dcmread(p) for p in new["source_path"]]
    assert new.loc[0, "patient_key"] == new.loc[1, "patient_key"] != new.loc[2, "patient_key"]
    for ds, key in zip(headers, new["patient_key"], strict=True):
        assert ds.PatientID == key and str(ds.PatientName) == key
    assert new.loc[0, "patient_key"] == an.pseudonym(KEY, "PID-PLANTED-0001")
    assert an.pseudonym(OTHER_KEY, "PID-PLANTED-0001") != new.loc[0, "patient_key"]


def test_same_uid_maps_to_same_new_uid_across_files_and_keys_differ(tmp_path, two_patients):
    new, _, _ = run_manifest(two_patients, tmp_path / "out")
    a, b, c = (pydicom.dcmread(p) for p in new["source_path"])

    referenced = b.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert a.StudyInstanceUID == b.StudyInstanceUID != c.StudyInstanceUID
    assert b.ReferencedSeriesSequence[0].SeriesInstanceUID == b.SeriesInstanceUID
    assert list(new["study_key"]) == [ds.StudyInstanceUID for ds in (a, b, c)]
    assert list(new["series_key"]) == [ds.SeriesInstanceUID for ds in (a, b, c)]
    new_uid = an.remap_uid(KEY, uid(3))
    assert new_uid == a.SOPInstanceUID and new_uid.startswith("2.25.")
    assert UID(new_uid).is_valid
    assert an.remap_uid(OTHER_KEY, uid(3)) != new_uid


def test_dates_keep_their_intervals_within_a_patient(tmp_path):
    raw = tmp_path / "raw"
    rows = [
        dicom_row(raw / "s1.dcm", planted_dataset(study=1, sop=3, study_date="20210314")),
        dicom_row(raw / "s2.dcm", planted_dataset(study=5, sop=6, study_date="20210413")),
    ]
    new, _, _ = run_manifest(rows, tmp_path / "out")
    first, second = (pydicom.dcmread(p) for p in new["source_path"])

    def as_date(value: str) -> date:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))

    assert first.StudyDate not in PLANTED_DATES and second.StudyDate not in PLANTED_DATES
    assert (as_date(second.StudyDate) - as_date(first.StudyDate)).days == 30
    assert first.AcquisitionDateTime == f"{first.StudyDate}101530.123456"
    assert first.StudyTime == "101500"
    assert first.PatientBirthDate == ""
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"


def test_dataset_level_file_meta_points_at_the_new_sop_instance():
    ds = planted_dataset()
    ds.add_new(0x00100000, "UL", 1234)  # a stale group length would lie after removals
    an.anonymise_dataset(ds, KEY)

    assert 0x00100000 not in ds

    assert ds.SOPInstanceUID == an.remap_uid(KEY, uid(3))
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in ds.file_meta


def test_nested_elements_follow_the_table_and_unlisted_ones_the_rules_by_vr():
    ds = planted_dataset()
    entries = an.anonymise_dataset(ds, KEY)

    nested = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert nested.PersonName == "ANONYMOUS"  # E.1-1: D
    assert str(nested.UID) == an.remap_uid(KEY, uid(777))  # E.1-1: U
    assert "TextValue" not in nested  # not in the 2026c table: UT -> X by VR
    assert {("PersonName", "D"), ("UID", "U"), ("TextValue", "X")} <= {
        (e.keyword, e.action) for e in entries
    }


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_unparseable_date_is_emptied_not_kept():
    ds = planted_dataset()
    ds.ContentDate = "20211399"
    entries = an.anonymise_dataset(ds, KEY)

    assert ds.ContentDate == ""
    assert any(e.keyword == "ContentDate" and e.action == "Z" for e in entries)


def test_audit_names_actions_and_sequence_paths_but_no_values(tmp_path, two_patients):
    _, audit, _ = run_manifest(two_patients[:1], tmp_path / "out")

    assert list(audit.columns) == an.AUDIT_COLUMNS
    assert "planted" not in audit.to_csv(index=False).lower()
    deep = "ReferencedSeriesSequence[0]/ReferencedInstanceSequence[0]"
    rows = set(zip(audit["keyword"], audit["action"], audit["path"], strict=True))
    assert ("ReferencedSOPInstanceUID", "U", deep) in rows
    assert ("InstitutionName", "Z", deep) in rows
    assert ("ContentDate", "C", deep) in rows
    assert ("PatientAddress", "X", "") in rows
    assert ("PatientName", "D", "") in rows
    assert ("", "X", deep) in rows  # the nested private tag
    assert ("SourceApplicationEntityTitle", "X", "file_meta") in rows


REAL_FILES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
]


def identifying_values(ds: Dataset) -> set[bytes]:
    """Original values that must not survive: names, IDs, dates, instance UIDs, places."""
    keywords = {
        "PatientID",
        "InstitutionName",
        "StationName",
        "DeviceSerialNumber",
        "StudyID",
        "OtherPatientIDs",
        "InstitutionalDepartmentName",
    }
    values: set[bytes] = set()
    for elem in [*ds.iterall(), *ds.file_meta]:
        value = str(elem.value or "")
        if elem.tag.is_private or len(value) < 5:
            continue
        instance_uid = (
            elem.VR == "UI"
            and not value.startswith("1.2.840.10008.")
            and not elem.keyword.endswith("ClassUID")
        )
        if elem.VR in ("PN", "DA", "DT") or instance_uid or elem.keyword in keywords:
            values.add(value.encode())
    return values


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_lose_identifiers_and_keep_pixels(tmp_path, name):
    source = Path(get_testdata_file(name))
    original = pydicom.dcmread(source)
    row = manifest_row(
        source, original.PatientID, original.StudyInstanceUID, original.SeriesInstanceUID
    )
    new, audit, quarantine = run_manifest([row], tmp_path / "out")

    assert len(new) == 1 and quarantine.empty
    data = Path(new.loc[0, "source_path"]).read_bytes()
    after = pydicom.dcmread(new.loc[0, "source_path"])
    kept = [str(e.value) for e in [*after.iterall(), *after.file_meta] if e.VR != "SQ"]
    # a removed value may still be part of a kept one (InstitutionName TOSHIBA, Manufacturer
    # TOSHIBA_MEC): such values must match no element exactly; all others no byte at all
    identifying = identifying_values(original)
    assert [v for v in identifying if v.decode() in kept] == []
    leaked = [v for v in identifying if v in data and not any(v.decode() in k for k in kept)]
    assert leaked == []
    assert after.get("PixelData") == original.get("PixelData")
    assert after.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert after.PatientID == new.loc[0, "patient_key"]
    assert not [e for e in after.iterall() if e.tag.is_private]
    assert len(audit) > 0


def test_missing_key_for_real_data_names_the_env_var_and_param():
    params = {"key_env": "RADFLOW_PSEUDONYM_KEY", "key_file": None}
    with pytest.raises(an.KeyConfigError, match="RADFLOW_PSEUDONYM_KEY") as info:
        an.load_key(filled("anonymise", params), "folder", {})
    assert isinstance(info.value, ValueError)
    assert "anonymise.key_file" in str(info.value)


def test_demo_key_is_used_for_demo_data_only():
    params = {"key_env": "RADFLOW_PSEUDONYM_KEY", "key_file": None}
    key, origin = an.load_key(filled("anonymise", params), "demo", {})
    assert key == an.DEMO_KEY and "demo" in origin.lower() and "never" in origin

    env = {"RADFLOW_PSEUDONYM_KEY": an.DEMO_KEY.decode()}
    with pytest.raises(an.KeyConfigError, match="demo key"):
        an.load_key(filled("anonymise", params), "folder", env)


def test_key_comes_from_env_then_file_and_origin_never_shows_it(tmp_path):
    secret = "s3cret-key-material-0123456789"
    params = {"key_env": "MY_KEY", "key_file": str(tmp_path / "key.txt")}
    (tmp_path / "key.txt").write_text("file-key-material-abcdef0123\n")

    key, origin = an.load_key(filled("anonymise", params), "folder", {"MY_KEY": secret})
    assert key == secret.encode() and "MY_KEY" in origin and secret not in origin

    key, origin = an.load_key(filled("anonymise", params), "folder", {})
    assert key == b"file-key-material-abcdef0123" and "file-key" not in origin


def test_bad_key_files_and_short_keys_are_refused(tmp_path):
    missing = tmp_path / "nope.key"
    with pytest.raises(an.KeyConfigError, match="nope.key"):
        an.load_key(filled("anonymise", {"key_file": str(missing)}), "folder", {})
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    with pytest.raises(an.KeyConfigError, match="empty"):
        an.load_key(filled("anonymise", {"key_file": str(empty)}), "folder", {})
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "secrets").mkdir()
    (repo / "secrets" / "k.key").write_text("x" * 40)
    with pytest.raises(an.KeyConfigError, match="git repository"):
        an.load_key(
            filled("anonymise", {"key_file": str(repo / "secrets" / "k.key")}), "folder", {}
        )
    with pytest.raises(an.KeyConfigError, match="too short"):
        an.load_key(filled("anonymise", {"key_env": "K"}), "folder", {"K": "short"})


def test_unreadable_inputs_are_quarantined_and_counts_balance(tmp_path, two_patients):
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    (raw / "garbage.dcm").write_bytes(b"this is not DICOM at all" * 10)
    (raw / "empty.dcm").write_bytes(b"")
    rows = [
        two_patients[0],
        manifest_row(raw / "garbage.dcm", "P1"),
        manifest_row(raw / "empty.dcm", "P2"),
        manifest_row(raw / "gone.dcm", "P3"),
        manifest_row(raw / "gone.png", "P4", fmt="png"),
    ]
    new, _, quarantine = run_manifest(rows, tmp_path / "out")

    assert len(new) + len(quarantine) == len(rows)
    assert len(new) == 1
    assert list(quarantine.columns) == mf.QUARANTINE_COLUMNS
    assert set(quarantine["stage"]) == {"anonymise"}
    assert all(reason for reason in quarantine["reason"])
    assert sorted(quarantine["path"]) == sorted(r["source_path"] for r in rows[1:])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"BurnedInAnnotation": "YES"}, "BurnedInAnnotation"),
        ({"Modality": "US"}, "US"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, "Secondary Capture"),
    ],
)
def test_possible_burned_in_annotation_is_quarantined(tmp_path, change, reason):
    ds = planted_dataset()
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    rows = [dicom_row(tmp_path / "raw" / "burned.dcm", ds)]
    new, _, quarantine = run_manifest(rows, tmp_path / "out")

    assert new.empty and len(quarantine) == 1
    assert reason in quarantine.loc[0, "reason"]
    assert not (tmp_path / "out" / "files").exists() or not any((tmp_path / "out").rglob("*.dcm"))


def test_no_partial_file_is_left_when_writing_fails(tmp_path, two_patients, monkeypatch):
    def half_then_fail(self: Path, data: bytes) -> int:
        with open(self, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        run_manifest(two_patients[:1], tmp_path / "out")

    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_encoding_failure_quarantines_without_leaking_values(tmp_path, two_patients, monkeypatch):
    def fail(ds: Dataset) -> bytes:
        raise ValueError("Doe^Planted cannot be encoded")

    monkeypatch.setattr(an, "encode_dataset", fail)
    new, _, quarantine = run_manifest(two_patients[:1], tmp_path / "out")

    assert new.empty and len(quarantine) == 1
    assert "Planted" not in quarantine.loc[0, "reason"]
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_non_dicom_images_and_masks_are_copied_byte_for_byte(tmp_path):
    folder = tmp_path / "raw" / "Doe_Planted"
    folder.mkdir(parents=True)
    image = folder / "Doe_Planted_chest.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    mask = folder / "Doe_Planted_mask.nii.gz"
    mask.write_bytes(b"\x1f\x8b" + bytes(100))
    row = manifest_row(image, "Doe_Planted", "study-Planted", "", fmt="png", mask_path=str(mask))
    new, audit, quarantine = run_manifest([row], tmp_path / "out")

    files = tmp_path / "out" / "files"
    image_id = row["image_id"]
    assert quarantine.empty and audit.empty
    assert new.loc[0, "source_path"] == str(files / f"{image_id}.png")
    assert new.loc[0, "mask_path"] == str(files / f"{image_id}_mask.nii.gz")
    assert (files / f"{image_id}.png").read_bytes() == image.read_bytes()
    assert (files / f"{image_id}_mask.nii.gz").read_bytes() == mask.read_bytes()
    assert new.loc[0, "patient_key"] == an.pseudonym(KEY, "Doe_Planted")
    assert new.loc[0, "study_key"].startswith("2.25.") and new.loc[0, "series_key"] == ""
    assert "planted" not in new.to_csv(index=False).lower()


def test_extra_manifest_columns_are_dropped(tmp_path, two_patients):
    rows = [dict(two_patients[0], original_name="Doe^Planted")]
    frame = mf.conform(pd.DataFrame(rows))
    new, _, _ = an.anonymise_manifest(frame, tmp_path / "out", KEY)

    assert list(new.columns) == list(mf.COLUMNS)


def test_tree_mode_mirrors_relative_paths_with_audit_and_quarantine(tmp_path):
    src = tmp_path / "in"
    write_dicom(src / "p1" / "s1" / "IMG1.dcm", planted_dataset(sop=3))
    write_dicom(src / "p1" / "s2" / "IMG2", planted_dataset(sop=4, study=7))
    no_id = planted_dataset(sop=5)
    del no_id.PatientID
    write_dicom(src / "p2" / "IMG3.dcm", no_id)
    (src / "notes.txt").write_text("Doe^Planted phoned")
    out = tmp_path / "out"
    summary = an.anonymise_tree(src, out, KEY)

    assert (summary.files_seen, summary.written, summary.quarantined) == (4, 2, 2)
    assert (out / "p1" / "s1" / "IMG1.dcm").is_file() and (out / "p1" / "s2" / "IMG2").is_file()
    assert not (out / "notes.txt").exists() and not (out / "p2" / "IMG3.dcm").exists()
    audit = pd.read_csv(summary.audit_path, dtype=str, keep_default_na=False)
    quarantine = pd.read_csv(summary.quarantine_path, dtype=str, keep_default_na=False)
    assert list(audit.columns) == an.TREE_AUDIT_COLUMNS
    assert set(audit["file"]) == {"p1/s1/IMG1.dcm", "p1/s2/IMG2"}
    assert any("PatientID" in r for r in quarantine["reason"])
    assert b"planted" not in output_bytes(out).lower()
    assert pydicom.dcmread(out / "p1" / "s1" / "IMG1.dcm").PatientID == an.pseudonym(
        KEY, "PID-PLANTED-0001", "ISSUER-PLANTED"
    )


def test_tree_mode_refuses_output_inside_input(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="must not be inside"):
        an.anonymise_tree(tmp_path / "in", tmp_path / "in" / "out", KEY)


def test_settings_from_lets_flags_win_over_params_and_reads_the_key_for_the_source(tmp_path):
    key_file = tmp_path / "k.key"
    key_file.write_text("file-key-material-abcdef0123\n")
    params = {
        "data": {"source": "folder"},
        "anonymise": filled("anonymise", {"retain_uids": True, "clean_descriptors": True}),
    }
    flags = {"retain_uids": False, "clean_descriptors": None, "key_file": str(key_file)}
    settings, key, origin = an.settings_from(params, flags, {})
    assert settings.options.retain_uids is False  # the flag wins
    assert settings.options.clean_descriptors is True  # not given: params stay
    assert key == b"file-key-material-abcdef0123" and "key file" in origin
    with pytest.raises(an.KeyConfigError, match="RADFLOW_PSEUDONYM_KEY"):
        an.settings_from(params, {}, {})  # folder data needs a key
    with pytest.raises(ValueError, match="no such setting"):
        an.settings_from(params, {"retain_everything": True}, {})


def test_settings_from_without_params_uses_the_schema_defaults_and_refuses_the_demo_key():
    settings, key, _ = an.settings_from(None, {}, {"RADFLOW_PSEUDONYM_KEY": KEY.decode()})
    assert settings.options == an.Options() and key == KEY
    with pytest.raises(an.KeyConfigError):
        an.settings_from(None, {}, {})  # no params: data.source counts as folder


def test_the_option_dataclass_defaults_agree_with_the_schema():
    assert an.Options.from_params(an.default_params()) == an.Options()
    assert an.default_settings().options == an.Options()

import numpy as np
import pandas as pd
import pytest
from conftest import write_dicom, write_png

from radflow import ingest, manifest


def _cohort(root, rng):
    write_dicom(root / "ct/a1.dcm", rng.integers(0, 2000, (32, 32)), "CT", "A")
    write_dicom(root / "ct/b1.dcm", rng.integers(0, 2000, (32, 40)), "CT", "B")
    write_png(root / "xr/c1.png", rng.integers(0, 255, (24, 24)))
    write_png(root / "masks/c1.png", np.zeros((24, 24)))
    (root / "notes.txt").write_text("not an image")
    (root / "ct/broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    labels = pd.DataFrame(
        {
            "path": ["ct/a1.dcm", "ct/b1.dcm", "xr/c1.png", "ct/broken.dcm", "ct/gone.dcm"],
            "label": ["nodule", "no_nodule", "normal", "nodule", "nodule"],
            "mask": ["", "", "masks/c1.png", "", ""],
            "patient_id": ["", "", "C", "", ""],
            "modality": ["", "", "xray", "", ""],
        }
    )
    labels.to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def test_counts_in_equal_manifest_plus_quarantine(tmp_path, rng):
    labels = _cohort(tmp_path, rng)
    result = ingest.ingest(tmp_path, labels)
    # 5 files on disk besides labels and mask + 1 labels row without a file
    assert result.inputs == 6
    assert len(result.manifest) + len(result.quarantine) == result.inputs
    assert len(result.manifest) == 3


def test_every_quarantined_input_has_a_reason(tmp_path, rng):
    result = ingest.ingest(tmp_path, _cohort(tmp_path, rng))
    reasons = dict(
        zip(
            result.quarantine["path"].map(lambda p: p.split("/")[-1]),
            result.quarantine["reason"],
            strict=True,
        )
    )
    assert "not a DICOM" in reasons["notes.txt"]
    assert "DICOM" in reasons["broken.dcm"] or "pixel data" in reasons["broken.dcm"]
    assert "not found" in reasons["gone.dcm"]
    assert all(result.quarantine["stage"] == "ingest")


def test_manifest_follows_the_schema_and_reads_dicom_headers(tmp_path, rng):
    result = ingest.ingest(tmp_path, _cohort(tmp_path, rng))
    frame = manifest.validate(result.manifest)
    ct = frame[frame["format"] == "dicom"].set_index("patient_key")
    assert set(ct.index) == {"A", "B"}
    assert ct.loc["B", "cols"] == 40 and ct.loc["B", "modality"] == "ct"
    png = frame[frame["format"] == "png"].iloc[0]
    assert png["patient_key"] == "C" and png["mask_path"].endswith("masks/c1.png")


def test_byte_identical_duplicate_is_quarantined_not_doubled(tmp_path, rng):
    labels = _cohort(tmp_path, rng)
    (tmp_path / "ct/a1_copy.dcm").write_bytes((tmp_path / "ct/a1.dcm").read_bytes())
    table = pd.read_csv(labels, keep_default_na=False)
    extra = table.iloc[[0]].assign(path="ct/a1_copy.dcm")
    pd.concat([table, extra]).to_csv(labels, index=False)
    result = ingest.ingest(tmp_path, labels)
    assert result.manifest["image_id"].is_unique
    assert result.quarantine["reason"].str.contains("duplicate").sum() == 1


def test_raster_without_patient_id_is_quarantined(tmp_path, rng):
    labels = _cohort(tmp_path, rng)
    table = pd.read_csv(labels, keep_default_na=False)
    table.loc[table["path"] == "xr/c1.png", "patient_id"] = ""
    table.to_csv(labels, index=False)
    result = ingest.ingest(tmp_path, labels)
    assert result.quarantine["reason"].str.contains("patient").any()


def test_missing_labels_file_is_a_clear_error(tmp_path):
    with pytest.raises(ingest.LabelsError, match="labels.csv"):
        ingest.ingest(tmp_path, tmp_path / "labels.csv")


def test_manifest_roundtrips_through_csv(tmp_path, rng):
    result = ingest.ingest(tmp_path, _cohort(tmp_path, rng))
    manifest.write(result.manifest, tmp_path / "out/manifest.csv")
    again = manifest.read(tmp_path / "out/manifest.csv")
    pd.testing.assert_frame_equal(again, manifest.validate(result.manifest))


def test_hidden_files_are_counted_but_not_ingested(tmp_path, rng):
    labels = _cohort(tmp_path, rng)
    (tmp_path / ".snakemake_timestamp").write_text("")
    (tmp_path / "ct" / ".DS_Store").write_bytes(b"\0\1")
    result = ingest.ingest(tmp_path, labels)
    assert result.hidden == 2
    assert not result.quarantine["path"].str.contains("DS_Store|snakemake").any()

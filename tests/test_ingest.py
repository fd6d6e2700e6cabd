import numpy as np
import pandas as pd
import pytest
from conftest import filled, write_dicom, write_png

from radflow.core import manifest
from radflow.data import ingest, sources


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


def _source(root, labels, **data):
    return sources.from_params(
        filled("data", {"raw_dir": str(root), "labels_csv": str(labels), **data})
    )


def test_counts_in_equal_manifest_plus_quarantine(tmp_path, rng):
    labels = _cohort(tmp_path, rng)
    result = ingest.ingest(_source(tmp_path, labels))
    # 5 files on disk besides labels and mask + 1 labels row without a file
    assert result.inputs == 6
    assert len(result.manifest) + len(result.quarantine) == result.inputs
    assert len(result.manifest) == 3


def test_every_quarantined_input_has_a_reason(tmp_path, rng):
    result = ingest.ingest(_source(tmp_path, _cohort(tmp_path, rng)))
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
    result = ingest.ingest(_source(tmp_path, _cohort(tmp_path, rng)))
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
    result = ingest.ingest(_source(tmp_path, labels))
    assert result.manifest["image_id"].is_unique
    assert result.quarantine["reason"].str.contains("duplicate").sum() == 1


def test_raster_without_patient_id_is_quarantined(tmp_path, rng):
    labels = _cohort(tmp_path, rng)
    table = pd.read_csv(labels, keep_default_na=False)
    table.loc[table["path"] == "xr/c1.png", "patient_id"] = ""
    table.to_csv(labels, index=False)
    result = ingest.ingest(_source(tmp_path, labels))
    assert result.quarantine["reason"].str.contains("patient").any()


def test_missing_labels_file_is_a_clear_error(tmp_path):
    with pytest.raises(sources.SourceError, match="labels.csv"):
        ingest.ingest(_source(tmp_path, tmp_path / "labels.csv"))


def test_manifest_roundtrips_through_csv(tmp_path, rng):
    result = ingest.ingest(_source(tmp_path, _cohort(tmp_path, rng)))
    manifest.write(result.manifest, tmp_path / "out/manifest.csv")
    again = manifest.read(tmp_path / "out/manifest.csv")
    pd.testing.assert_frame_equal(again, manifest.validate(result.manifest))


def test_hidden_files_are_counted_but_not_ingested(tmp_path, rng):
    labels = _cohort(tmp_path, rng)
    (tmp_path / ".snakemake_timestamp").write_text("")
    (tmp_path / "ct" / ".DS_Store").write_bytes(b"\0\1")
    result = ingest.ingest(_source(tmp_path, labels))
    assert result.hidden == 2
    assert not result.quarantine["path"].str.contains("DS_Store|snakemake").any()


def test_class_folders_label_by_folder_and_key_patients_by_file_name(tmp_path, rng):
    for name in (
        "NORMAL/IM-0001-0001.jpeg",
        "NORMAL/IM-0001-0002.jpeg",
        "PNEUMONIA/person7_virus_13.jpeg",
        "PNEUMONIA/odd.jpeg",
    ):
        write_png(tmp_path / "train" / name, rng.integers(0, 255, (16, 16)))
    source = sources.from_params(filled("data", {
        "raw_dir": str(tmp_path / "train"), "layout": "class_folders", "modality": "xray",
        "patient_key": {"source": "filename", "patterns": [
            r"^(person\d+_(?:bacteria|virus))_\d+(?:_\d+)?\.jpeg$",
            r"^((?:NORMAL2-)?IM-\d{4})-\d{4}(?:-\d{4})?\.jpeg$"]},
    }))  # fmt: skip
    result = ingest.ingest(source)
    keyed = result.manifest.set_index("patient_key")["label"].to_dict()
    assert keyed == {"IM-0001": "NORMAL", "person7_virus": "PNEUMONIA"}
    assert set(result.manifest["patient_key_source"]) == {"filename"}
    assert result.quarantine["reason"].str.contains("no patient key").sum() == 1


def test_csv_columns_and_label_map_come_from_params(tmp_path, rng):
    for stem in (3, 4, 21):
        write_png(tmp_path / "images" / f"{stem}.jpg", rng.integers(0, 255, (16, 16)))
    pd.DataFrame({"file": ["3.jpg", "4.jpg", "21.jpg"], "label_id": ["0", "1", "1"]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    source = sources.from_params(filled("data", {
        "raw_dir": str(tmp_path / "images"), "labels_csv": str(tmp_path / "labels.csv"),
        "columns": {"path": "file", "label": "label_id"}, "modality": "mri",
        "label_map": {"0": "pituitary", "1": "meningioma"},
        "patient_key": {"source": "filename", "patterns": [r"^(\d+)\.jpg$"], "bucket": 20},
    }))  # fmt: skip
    frame = ingest.ingest(source).manifest.set_index("source_path")
    labels = {p.split("/")[-1]: lab for p, lab in frame["label"].items()}
    assert labels == {"3.jpg": "pituitary", "4.jpg": "meningioma", "21.jpg": "meningioma"}
    runs = {p.split("/")[-1]: k for p, k in frame["patient_key"].items()}
    assert runs["3.jpg"] == runs["4.jpg"] != runs["21.jpg"]
    assert set(frame["patient_key_source"]) == {"filename-run"}


def test_unmapped_label_quarantines_its_file_naming_the_map(tmp_path, rng):
    write_png(tmp_path / "images" / "1.jpg", rng.integers(0, 255, (8, 8)))
    pd.DataFrame({"path": ["1.jpg"], "label": ["7"]}).to_csv(tmp_path / "l.csv", index=False)
    source = sources.from_params(filled("data", {"raw_dir": str(tmp_path / "images"),
                                  "labels_csv": str(tmp_path / "l.csv"),
                                  "label_map": {"0": "a"}}))  # fmt: skip
    result = ingest.ingest(source)
    assert result.manifest.empty
    assert result.quarantine["reason"].tolist() == [
        "label '7' has no entry in data.label_map: add it or remove the map"
    ]


def test_image_level_grouping_must_be_chosen_and_is_recorded(tmp_path, rng):
    labels = _cohort(tmp_path, rng)
    result = ingest.ingest(_source(tmp_path, labels, patient_key={"source": "image"}))
    assert set(result.manifest["patient_key_source"]) == {"image"}
    assert result.manifest["patient_key"].is_unique

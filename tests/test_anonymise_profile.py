"""The PS3.15 E.1-1 profile, its options, links between files, real corpora, the CLI.

Real files come from the pydicom and pydicom-data packages (listed from their folders;
pydicom's get_testdata_files("*") would try to download). A representative subset runs by
default; the whole corpus is swept by the slow test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import data_store
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import filled
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from radflow import cli
from radflow.data import anonymise as an
from radflow.data.anonymise_profile import DEFAULT_EDITION, Options, editions, load_table, resolve

KEY = b"radflow-test-key-0123456789abcdef"
ROOT = "1.2.826.0.1.3680043.8.498.7777."
PYDICOM_DIR = Path(pydicom.data.__file__).parent / "test_files"
DATA_STORE_DIR = Path(data_store.__file__).parent / "data"
PLANTED_DATE = "19710203"


def uid(n: int) -> str:
    return f"{ROOT}{n}"


def real_file(name: str) -> Path:
    path = DATA_STORE_DIR / name
    return path if path.is_file() else Path(get_testdata_file(name))


# ---------------------------------------------------------------------------------------
# A dataset with every E.1-1 attribute planted


def _planted_value(vr: str, i: int) -> object | None:
    text = {
        "PN": f"Planted^Person{i}",
        "LO": f"PLANTED-{i}",
        "SH": f"PLANTED{i}"[:16],
        "CS": "PLANTED",
        "AE": f"PLANTED{i}"[:16],
        "LT": f"Planted text {i}",
        "ST": f"Planted text {i}",
        "UT": f"Planted text {i}",
        "UC": f"Planted text {i}",
        "UR": f"http://planted.example/{i}",
        "DA": PLANTED_DATE,
        "DT": f"{PLANTED_DATE}101010",
        "TM": "101010",
        "UI": uid(5000 + i),
        "OB": b"PLANTED!",
        "OW": b"PLANTED!",
        "UN": b"PLANTED!",
    }
    return text.get(vr)


def every_e11_attribute() -> Dataset:
    """A CT header plus every E.1-1 attribute pydicom knows, each holding 'planted' PHI."""
    ds = Dataset()
    table, _ = load_table(DEFAULT_EDITION)
    for i, tag in enumerate(sorted(table)):
        if not keyword_for_tag(tag) or tag >> 16 in (0x0000, 0x0002):
            continue  # unknown to this pydicom; command and file meta groups
        vr = dictionary_VR(tag)
        if vr == "SQ":
            item = Dataset()
            item.PersonName = f"Planted^Nested{i}"
            deeper = Dataset()
            deeper.ReferencedSOPClassUID = CTImageStorage
            deeper.ReferencedSOPInstanceUID = uid(9000 + i)
            deeper.PersonName = f"Planted^Deeper{i}"
            item.ReferencedImageSequence = Sequence([deeper])
            ds.add_new(tag, "SQ", Sequence([item]))
        elif (value := _planted_value(vr, i)) is not None:
            ds.add_new(tag, vr, value)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid(1)
    ds.StudyInstanceUID = uid(2)
    ds.SeriesInstanceUID = uid(3)
    ds.PatientID = "PID-PLANTED-42"
    ds.Modality = "CT"
    ds.private_block(0x0009, "PLANTED CREATOR", create=True).add_new(0x01, "LO", "Planted^Pvt")
    ds.add_new(0x60003000, "OW", b"PLANTED!")
    ds.add_new(0x50000005, "LO", "Planted curve")
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid(1)
    return ds


def _write(path: Path, ds: Dataset) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("longitudinal", [True, False])
def test_every_e11_attribute_planted_leaves_no_trace_in_the_output_bytes(tmp_path, longitudinal):
    source = _write(tmp_path / "in" / "x.dcm", every_e11_attribute())
    settings = an.Settings(Options(retain_longitudinal_temporal=longitudinal))
    summary = an.anonymise_tree(tmp_path / "in", tmp_path / "out", KEY, settings)

    assert (summary.written, summary.quarantined) == (1, 0)
    data = (tmp_path / "out" / "x.dcm").read_bytes()
    assert b"planted" not in data.lower()
    assert ROOT.encode() not in data and PLANTED_DATE.encode() not in data
    after = pydicom.dcmread(tmp_path / "out" / "x.dcm")
    assert after.PixelData == pydicom.dcmread(source).PixelData
    tags = [e.tag for e in after.iterall()]
    assert not [t for t in tags if t.is_private or (t.group & 0xFF00) in (0x5000, 0x6000)]
    audit = (tmp_path / "out" / "audit.csv").read_text()
    assert "planted" not in audit.lower() and "7777" not in audit


def test_table_comes_from_the_versioned_package_with_combined_codes():
    assert editions()[-1] == DEFAULT_EDITION and len(editions()) >= 2
    table, masked = load_table()
    codes = set(table.values())
    assert {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"} <= codes
    assert len(table) > 600 and masked  # (50xx,xxxx) curves, (60xx,...) overlays
    assert resolve("X/Z/U*", "SQ") == "R" and resolve("X/Z/U*", "UI") == "U"
    assert resolve("X/Z/D", "LO") == "Z" and resolve("Z/D", "DA") == "D"
    with pytest.raises(ValueError, match="unknown E.1-1 edition"):
        load_table("1999z")


def test_options_change_exactly_their_attributes_and_are_listed_as_codes():
    def run(**flags: bool) -> tuple[Dataset, list[str]]:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.PatientAge, ds.PatientSex, ds.StationName = "051Y", "F", "STN-1"
        ds.InstitutionName = "Hospital X"
        an.anonymise_dataset(ds, KEY, settings=an.Settings(Options(**flags)))
        return ds, [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]

    original = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    plain, codes = run(retain_longitudinal_temporal=False)
    assert codes == ["113100"]
    assert plain.StudyDate == "" and plain.PatientSex == "" and "PatientAge" not in plain
    assert plain.StationName == "" and plain.InstitutionName == ""
    assert plain.SOPInstanceUID != original.SOPInstanceUID
    assert plain.LongitudinalTemporalInformationModified == "REMOVED"
    assert plain.PatientIdentityRemoved == "YES" and "E.1-1" in plain.DeidentificationMethod

    kept, codes = run(
        retain_longitudinal_temporal=True,
        retain_patient_characteristics=True,
        retain_device_identity=True,
        retain_institution_identity=True,
        retain_uids=True,
        clean_descriptors=True,
    )
    assert sorted(codes) == sorted(
        ["113100", "113105", "113107", "113108", "113109", "113110", "113112"]
    )
    assert (kept.PatientAge, kept.PatientSex, kept.StationName) == ("051Y", "F", "STN-1")
    assert kept.InstitutionName == "Hospital X"
    assert kept.SOPInstanceUID == original.SOPInstanceUID
    assert kept.StudyDate not in ("", original.StudyDate)
    assert kept.StudyTime == original.StudyTime
    assert kept.LongitudinalTemporalInformationModified == "MODIFIED"


def test_clean_descriptors_keeps_the_words_but_not_the_identifiers():
    ds = every_e11_attribute()
    ds.PatientName = "Doe^Jane"
    ds.StudyDescription = "CT chest for Jane DOE, ID PID-PLANTED-42 on 14/03/2021"
    ds.SeriesDescription = "AX 5mm Dr. Smith 1234567"
    an.anonymise_dataset(ds, KEY, settings=an.Settings(Options(clean_descriptors=True)))

    assert ds.StudyDescription == "CT chest for *, ID * on *"
    assert ds.SeriesDescription == "AX 5mm *"


def test_safe_private_tags_from_params_are_kept_with_their_creator():
    ds = every_e11_attribute()
    block = ds.private_block(0x0029, "SAFE VENDOR", create=True)
    block.add_new(0x08, "LO", "kept-value")
    block.add_new(0x09, "LO", "dropped-value")
    params = {"safe_private_tags": [{"group": "0x0029", "creator": "SAFE VENDOR", "element": 8}]}
    settings = an.Settings.from_params(filled("anonymise", params))
    an.anonymise_dataset(ds, KEY, settings=settings)

    private = {e.tag: e.value for e in ds if e.tag.is_private}
    assert private == {0x00290010: "SAFE VENDOR", 0x00291008: "kept-value"}
    assert "113111" in [i.CodeValue for i in ds.DeidentificationMethodCodeSequence]


# ---------------------------------------------------------------------------------------
# A set of files that reference each other


def _instance(sop: int, series: int, refs: tuple[int, ...] = ()) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid(sop)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(1), uid(series)
    ds.FrameOfReferenceUID = uid(500)
    ds.PatientID, ds.PatientName, ds.Modality = "PID-LINK", "Link^Planted", "CT"
    if refs:
        items = []
        for ref in refs:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CTImageStorage, uid(ref)
            items.append(item)
        ds.ReferencedImageSequence = Sequence(items)
        ds.SourceImageSequence = Sequence([items[0]])
        series_item = Dataset()
        series_item.SeriesInstanceUID = uid(10)
        series_item.ReferencedInstanceSequence = Sequence(items)
        ds.ReferencedSeriesSequence = Sequence([series_item])
        frame = Dataset()
        frame.FrameOfReferenceUID = uid(500)
        ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid(sop)
    return ds


def test_links_between_files_resolve_inside_the_deidentified_set(tmp_path):
    _write(tmp_path / "in" / "a.dcm", _instance(101, 10))
    _write(tmp_path / "in" / "b.dcm", _instance(102, 10))
    _write(tmp_path / "in" / "derived.dcm", _instance(201, 20, refs=(101, 102)))
    out = tmp_path / "out"
    an.anonymise_tree(tmp_path / "in", out, KEY)
    a, b, d = (pydicom.dcmread(out / n) for n in ("a.dcm", "b.dcm", "derived.dcm"))

    by_uid = {ds.SOPInstanceUID: ds for ds in (a, b, d)}
    assert len(by_uid) == 3 and ROOT not in "".join(by_uid)
    refs = [i.ReferencedSOPInstanceUID for i in d.ReferencedImageSequence]
    assert refs == [a.SOPInstanceUID, b.SOPInstanceUID]
    assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    series = d.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == a.SeriesInstanceUID == b.SeriesInstanceUID
    nested = [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence]
    assert set(nested) <= set(by_uid)
    assert len({ds.StudyInstanceUID for ds in (a, b, d)}) == 1
    assert len({ds.FrameOfReferenceUID for ds in (a, b, d)}) == 1
    assert d.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == a.FrameOfReferenceUID
    for ds in (a, b, d):
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID

    again = tmp_path / "again"
    an.anonymise_tree(tmp_path / "in", again, KEY)  # another run, the same key
    assert pydicom.dcmread(again / "a.dcm").SOPInstanceUID == a.SOPInstanceUID


# ---------------------------------------------------------------------------------------
# Real files: transfer syntaxes, multi-frame, enhanced, bad input


def identifying_values(ds: Dataset) -> set[bytes]:
    """Original values that must not survive: names, IDs, dates, instance UIDs, places."""
    keywords = {"PatientID", "InstitutionName", "StationName", "DeviceSerialNumber",
                "StudyID", "OtherPatientIDs", "InstitutionalDepartmentName",
                "AccessionNumber", "PatientAddress", "InstitutionAddress"}  # fmt: skip
    values: set[bytes] = set()
    for elem in [*ds.iterall(), *ds.file_meta]:
        if elem.VR in ("SQ", "OB", "OW", "UN") or elem.tag.is_private:
            continue
        for value in elem.value if isinstance(elem.value, list | tuple) else [elem.value]:
            text = str(value if value is not None else "").strip()
            if len(text) < 5:
                continue
            instance_uid = (
                elem.VR == "UI"
                and not text.startswith("1.2.840.10008.")
                and not elem.keyword.endswith("ClassUID")
            )
            if elem.VR in ("PN", "DA", "DT") or instance_uid or elem.keyword in keywords:
                values.add(text.encode())
    return values


def assert_clean_copy(source: Path, written: Path) -> None:
    original = pydicom.dcmread(source)
    after = pydicom.dcmread(written)
    data = written.read_bytes()
    kept = {str(e.value) for e in [*after.iterall(), *after.file_meta] if e.VR != "SQ"}
    identifying = identifying_values(original)
    # a removed value may be part of a kept one (InstitutionName TOSHIBA inside Manufacturer
    # TOSHIBA_MEC): such a value must match no element; all others no byte at all
    assert [v for v in identifying if v.decode() in kept] == [], source.name
    leaked = [v for v in identifying if v in data and not any(v.decode() in k for k in kept)]
    assert leaked == [], source.name
    assert after.get("PixelData") == original.get("PixelData"), source.name
    assert after.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert not [e for e in after.iterall() if e.tag.is_private]
    assert after.PatientIdentityRemoved == "YES"
    assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
    if "PixelData" in after and original.file_meta.TransferSyntaxUID.is_compressed:
        assert np.array_equal(after.pixel_array, original.pixel_array)


SUBSET_WRITTEN = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",  # RLE lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "MR2_J2KI.dcm",  # JPEG 2000 (pydicom-data)
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "eCT_Supplemental.dcm",  # enhanced CT, multi-frame (pydicom-data)
    "liver.dcm",  # multi-frame (pydicom-data)
    "MR-SIEMENS-DICOM-WithOverlays.dcm",  # overlays, private CSA headers (pydicom-data)
    "examples_overlay.dcm",
    "explicit_VR-UN.dcm",  # UN elements (pydicom-data)
    "rtplan.dcm",  # deep sequences
    "waveform_ecg.dcm",
]
SUBSET_QUARANTINED = {
    "SC_rgb_jpeg_dcmtk.dcm": "Secondary Capture",  # JPEG baseline, may show text
    "US1_J2KR.dcm": "Modality US",
    "MR_truncated.dcm": "truncated",
    "no_meta.dcm": "unreadable DICOM",
    "emri_small.dcm": "no PatientID",
    "DICOMDIR": "DICOMDIR",
}


@pytest.mark.filterwarnings("ignore")
def test_real_corpus_subset_is_written_clean_or_quarantined_with_reason(tmp_path):
    src = tmp_path / "in"
    (src / "ok").mkdir(parents=True)
    for name in SUBSET_WRITTEN:
        shutil.copyfile(real_file(name), src / "ok" / name)
    bad = src / "bad"
    bad.mkdir()
    for name in SUBSET_QUARANTINED:
        origin = PYDICOM_DIR / "dicomdirtests" / name if name == "DICOMDIR" else real_file(name)
        shutil.copyfile(origin, bad / name)
    (bad / "notes.txt").write_text("not DICOM")
    (bad / "cut.dcm").write_bytes(real_file("CT_small.dcm").read_bytes()[:700])
    out = tmp_path / "out"
    summary = an.anonymise_tree(src, out, KEY)

    quarantine = pd.read_csv(summary.quarantine_path, dtype=str, keep_default_na=False)
    reasons = {
        Path(p).name: r for p, r in zip(quarantine["path"], quarantine["reason"], strict=True)
    }
    assert summary.files_seen == summary.written + summary.quarantined == len(SUBSET_WRITTEN) + 8
    assert set(reasons) == {*SUBSET_QUARANTINED, "notes.txt", "cut.dcm"}, reasons
    for name, why in SUBSET_QUARANTINED.items():
        assert why in reasons[name], (name, reasons[name])
    for name in SUBSET_WRITTEN:
        assert_clean_copy(real_file(name), out / "ok" / name)
    assert not list(out.rglob(".*"))  # no temporary file left behind


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "name",
    [
        "US1_UNCR.dcm",
        "US1_J2KR.dcm",
        "SC_rgb_rle_2frame.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "JPEG-LL.dcm",
    ],
)
def test_blackout_rule_cleans_burned_in_regions_and_keeps_the_rest(tmp_path, name):
    original = pydicom.dcmread(real_file(name))
    modality = str(original.Modality)
    params = {"blackout": [{"modality": modality, "regions": [[0, 0, 20, 10]]}]}
    (tmp_path / "in").mkdir()
    shutil.copyfile(real_file(name), tmp_path / "in" / name)
    summary = an.anonymise_tree(
        tmp_path / "in", tmp_path / "out", KEY, an.Settings.from_params(filled("anonymise", params))
    )

    assert summary.written == 1
    after = pydicom.dcmread(tmp_path / "out" / name)
    before, cleaned = original.pixel_array, after.pixel_array
    frames = (cleaned, before) if int(original.get("NumberOfFrames", 1)) > 1 else (
        cleaned[None], before[None])  # fmt: skip
    assert not frames[0][:, :10, :20].any()
    assert np.array_equal(frames[0][:, 10:], frames[1][:, 10:])
    assert after.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in after.DeidentificationMethodCodeSequence]
    assert not after.file_meta.TransferSyntaxUID.is_compressed


def test_params_reject_bad_blackout_regions():
    with pytest.raises(ValueError, match="x0 < x1"):
        an.Settings.from_params(
            filled("anonymise", {"blackout": [{"modality": "US", "regions": [[5, 0, 5, 9]]}]})
        )


def test_cli_tree_mode_alone_with_flags_and_env_key(tmp_path, monkeypatch, capsys):
    _write(tmp_path / "in" / "p" / "a.dcm", _instance(101, 10))
    (tmp_path / "in" / "junk.bin").write_bytes(b"\x00" * 10)
    monkeypatch.setenv("RADFLOW_PSEUDONYM_KEY", KEY.decode())
    out = tmp_path / "out"
    argv = ["anonymise", "--params", "", "--in", str(tmp_path / "in"), "--out", str(out)]
    assert cli.main([*argv, "--retain-uids", "--no-retain-longitudinal-temporal"]) == 0

    after = pydicom.dcmread(out / "p" / "a.dcm")
    assert after.SOPInstanceUID == uid(101) and "StudyDate" not in after
    assert [i.CodeValue for i in after.DeidentificationMethodCodeSequence] == ["113100", "113110"]
    assert (out / "audit.csv").is_file() and (out / "quarantine.csv").is_file()
    assert len(pd.read_csv(out / "quarantine.csv")) == 1
    assert KEY not in b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())

    monkeypatch.delenv("RADFLOW_PSEUDONYM_KEY")
    assert cli.main([*argv]) == 2
    assert "RADFLOW_PSEUDONYM_KEY" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# The whole corpus (slow)


def corpus() -> list[Path]:
    files = [p for p in PYDICOM_DIR.rglob("*") if p.is_file()]
    return sorted(files + [p for p in DATA_STORE_DIR.iterdir() if p.is_file()])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_whole_pydicom_and_pydicom_data_corpus(tmp_path):
    src = tmp_path / "in"
    for i, path in enumerate(corpus()):
        (src / str(i)).mkdir(parents=True)
        shutil.copyfile(path, src / str(i) / path.name)
    summary = an.anonymise_tree(src, tmp_path / "out", KEY)

    assert summary.files_seen == summary.written + summary.quarantined == len(corpus())
    assert summary.written > 60
    for written in (tmp_path / "out").rglob("*"):
        if written.is_file() and written.parent != tmp_path / "out":
            assert_clean_copy(src / written.relative_to(tmp_path / "out"), written)

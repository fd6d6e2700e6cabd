"""A generated corpus of damaged and hostile inputs beside good ones, as a hospital export
holds them: every stage must account for each file exactly once (issue 16).

`build(root)` writes the files and a labels CSV and returns what each file is:
- good: valid inputs, some unusual (16-bit and palette PNG, MONOCHROME1, signed, multi-frame,
  RLE, NIfTI volumes with masks, odd but valid file names); each must reach the arrays;
- bad: damaged beyond use; each must end in a quarantine table, at ingest or later;
- damaged: random byte corruption that may or may not hurt; each must either go through
  or be quarantined, once;
- missing: labels rows without a usable file (absent, outside the folder).

Nothing here is random beyond the seed: the same seed writes the same bytes.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from conftest import dicom_dataset
from PIL import Image
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

CLASSES = {
    "ct": ["no_nodule", "nodule"],
    "mri": ["no_tumour", "tumour"],
    "xray": ["normal", "opacity"],
}
# A value planted in headers, names and labels: it must reach no output unescaped.
PLANTED = "<script>alert('planted')</script>"
SIZE = 48


@dataclass
class Corpus:
    root: Path
    labels_csv: Path
    good: set[str] = field(default_factory=set)
    bad: set[str] = field(default_factory=set)
    damaged: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    rows: list[dict[str, str]] = field(default_factory=list)

    @property
    def files(self) -> set[str]:
        return self.good | self.bad | self.damaged


class _Writer:
    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = np.random.default_rng(seed)
        self.corpus = Corpus(root, root / "labels.csv")
        self.patients = 0

    # ---------------------------------------------------------------- bookkeeping

    def put(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def add(self, rel: str, data: bytes, kind: str, **row: str) -> str:
        """A file of the corpus with its labels row."""
        self.put(rel, data)
        getattr(self.corpus, kind).add(rel)
        self.label(rel, **row)
        return rel

    def label(self, rel: str, label: str = "", **columns: str) -> None:
        self.patients += 1
        entry = {"path": rel, "label": label, "mask": "", "patient_id": "", "modality": ""}
        entry |= {"patient_id": f"R{self.patients % 7}"} | columns
        self.corpus.rows.append(entry)

    def pixels(self, shape: tuple[int, ...] = (SIZE, SIZE), high: int = 3000) -> np.ndarray:
        return self.rng.integers(0, high, shape)

    # ---------------------------------------------------------------- formats

    def dicom(self, modality: str = "CT", patient: str = "G0", **values: object) -> Dataset:
        ds = dicom_dataset(self.pixels(), modality, patient)
        ds.preamble = b"\0" * 128
        for name, value in values.items():
            setattr(ds, name, value)
        return ds

    @staticmethod
    def encode(ds: Dataset, enforce: bool = True) -> bytes:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=enforce)
        return buffer.getvalue()

    def png(self, pixels: np.ndarray, mode: str | None = None) -> bytes:
        buffer = io.BytesIO()
        image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def jpeg(self, pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    @staticmethod
    def nifti(volume: np.ndarray, gz: bool = False) -> bytes:
        data = nib.Nifti1Image(volume, np.eye(4)).to_bytes()
        return gzip.compress(data, mtime=0) if gz else data


def _raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """Put value bytes into ds verbatim, whatever they say (pydicom would refuse most)."""
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def _with_transfer_syntax(data: bytes, uid: bytes) -> bytes:
    """A DICOM file's bytes with the file meta's Transfer Syntax UID value replaced (the group
    length recomputed), the dataset after it unchanged: what pydicom would never write."""
    (length,) = struct.unpack("<I", data[140:144])
    meta, body = data[144 : 144 + length], data[144 + length :]
    place = meta.index(b"\x02\x00\x10\x00UI")
    (old,) = struct.unpack("<H", meta[place + 6 : place + 8])
    value = uid + b"\0" * (len(uid) % 2)
    meta = meta[: place + 6] + struct.pack("<H", len(value)) + value + meta[place + 8 + old :]
    return data[:140] + struct.pack("<I", len(meta)) + meta + body


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def _ds(text: str) -> bytes:
    data = text.encode("latin-1")
    return data + b" " * (len(data) % 2)


def build(root: Path, seed: int = 0) -> Corpus:
    """Write the corpus under root (which must be empty or absent) and its labels CSV."""
    w = _Writer(Path(root), seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of each invalid value it is given
        _write_all(w)
    pd.DataFrame(w.corpus.rows).to_csv(w.corpus.labels_csv, index=False)
    return w.corpus


def _write_all(w: _Writer) -> None:
    _good(w)
    _dicom_damage(w)
    _dicom_headers(w)
    _compressed(w)
    _plain_files(w)
    _niftis(w)
    _rasters(w)
    _masks(w)
    _labels(w)
    _names(w)


# ------------------------------------------------------------------------------- good


def _good(w: _Writer) -> None:
    for i in range(8):
        ds = w.dicom("CT", f"G{i // 2}")
        ds.PatientName = f"Planted^{PLANTED}"
        w.add(f"good/ct_{i}.dcm", w.encode(ds), "good", label=CLASSES["ct"][i % 2])
    for i in range(6):
        w.add(f"good/mr_{i}.dcm", w.encode(w.dicom("MR", f"M{i // 2}")), "good",
              label=CLASSES["mri"][i % 2])  # fmt: skip
    mono1 = w.dicom("CT", "G0", PhotometricInterpretation="MONOCHROME1")
    w.add("good/ct_mono1.dcm", w.encode(mono1), "good", label="nodule")
    signed = w.dicom("CT", "G1")
    signed.PixelRepresentation = 1
    signed.PixelData = (w.pixels() - 1500).astype(np.int16).tobytes()
    w.add("good/ct_signed.dcm", w.encode(signed), "good", label="no_nodule")
    frames = w.dicom("CT", "G2")
    frames.NumberOfFrames = 3
    frames.PixelData = w.pixels((3, SIZE, SIZE)).astype(np.uint16).tobytes()
    w.add("good/ct_frames.dcm", w.encode(frames), "good", label="nodule")
    rle = w.dicom("CT", "G3")
    rle.compress(RLELossless, w.pixels().astype(np.uint16))
    w.add("good/ct_rle.dcm", w.encode(rle), "good", label="no_nodule")
    xray = {"modality": "xray"}
    for i in range(6):
        w.add(f"good/xr_{i}.png", w.png(w.pixels(high=255).astype(np.uint8)), "good",
              label=CLASSES["xray"][i % 2], patient_id=f"X{i // 2}", **xray)  # fmt: skip
    w.add("good/xr_16bit.png", w.png(w.pixels(high=60000).astype(np.uint16)), "good",
          label="normal", patient_id="X0", **xray)  # fmt: skip
    rgb = np.repeat(w.pixels(high=255).astype(np.uint8)[..., None], 3, axis=2)
    w.add("good/xr_rgb.png", w.png(rgb), "good", label="opacity", patient_id="X1", **xray)
    w.add("good/xr_rgba.png", w.png(rgb, "RGBA"), "good", label="normal", patient_id="X2", **xray)
    w.add("good/xr_palette.png", w.png(rgb, "P"), "good", label="opacity", patient_id="X0",
          **xray)  # fmt: skip
    for i in range(3):
        w.add(f"good/xr_{i}.jpg", w.jpeg(w.pixels(high=255)), "good",
              label=CLASSES["xray"][i % 2], patient_id=f"X{i}", **xray)  # fmt: skip
    for i in range(3):
        volume = w.pixels((SIZE, SIZE, 5)).astype(np.int16) - 1000
        mask = np.zeros(volume.shape, np.uint8)
        mask[10:20, 10:20, :] = 1
        w.put(f"good/vol_{i}_mask.nii.gz", w.nifti(mask, gz=True))
        w.add(f"good/vol_{i}.nii.gz", w.nifti(volume, gz=True), "good",
              label=CLASSES["ct"][i % 2], patient_id=f"N{i}", modality="ct",
              mask=f"good/vol_{i}_mask.nii.gz")  # fmt: skip


# ------------------------------------------------------------------------------- DICOM


def _dicom_damage(w: _Writer) -> None:
    """Truncation at many offsets (every one cuts the pixel data, the last element) and
    random byte flips in the header (which may or may not matter)."""
    data = w.encode(w.dicom("CT", "T0"))
    offsets = sorted({0, 1, 64, 127, 128, 131, 132, 133, 140, len(data) - 1, len(data) - 2}
                     | {int(x) for x in np.linspace(0, len(data) - 1, 60)})  # fmt: skip
    for offset in offsets:
        w.add(f"bad/trunc/ct_{offset:06d}.dcm", data[:offset], "bad", label="nodule")
    pixel_start = data.rindex(b"\xe0\x7f\x10\x00")
    for i in range(40):
        corrupt = bytearray(data)
        for place in w.rng.integers(132, pixel_start, int(w.rng.integers(1, 5))):
            corrupt[place] ^= int(w.rng.integers(1, 256))
        w.add(f"damaged/flip_{i:02d}.dcm", bytes(corrupt), "damaged", label="nodule")


def _dicom_headers(w: _Writer) -> None:
    """Header values the pixels depend on, each wrong in one way."""

    def bad(name: str, change: Callable[[Dataset], None], kind: str = "bad") -> None:
        ds = w.dicom("CT", f"H{len(w.corpus.rows) % 5}")
        change(ds)
        w.add(f"bad/header/{name}.dcm", w.encode(ds, enforce=False), kind, label="nodule")

    plain = w.encode(w.dicom("CT", "H0"))
    for name, uid, kind in (
        ("ts_not_a_transfer_syntax", b"1.2.3.4.5", "bad"),
        ("ts_garbage", b"not a uid!", "bad"),
        ("ts_empty", b"", "bad"),
        ("ts_lying_jpeg", JPEGBaseline8Bit.encode(), "bad"),
        ("ts_lying_big_endian", ExplicitVRBigEndian.encode(), "damaged"),
        ("ts_lying_implicit", ImplicitVRLittleEndian.encode(), "damaged"),
        ("ts_lying_deflate", DeflatedExplicitVRLittleEndian.encode(), "damaged"),
    ):
        w.add(f"bad/meta/{name}.dcm", _with_transfer_syntax(plain, uid), kind, label="nodule")
    bad("no_pixel_data", lambda ds: delattr(ds, "PixelData"))
    bad("empty_pixel_data", lambda ds: setattr(ds, "PixelData", b""))
    bad("half_pixel_data", lambda ds: setattr(ds, "PixelData", ds.PixelData[: SIZE * SIZE]))
    bad("extra_pixel_data", lambda ds: setattr(ds, "PixelData", ds.PixelData + b"\0" * 64),
        "damaged")  # fmt: skip
    for name, tag, value in (
        ("rows_0", 0x00280010, 0),
        ("columns_0", 0x00280011, 0),
        ("rows_65535", 0x00280010, 65535),
        ("samples_0", 0x00280002, 0),
        ("samples_5", 0x00280002, 5),
        ("bits_allocated_0", 0x00280100, 0),
        ("bits_allocated_7", 0x00280100, 7),
        ("bits_allocated_128", 0x00280100, 128),
        ("bits_stored_20", 0x00280101, 20),
        ("bits_stored_0", 0x00280101, 0),
        ("pixel_representation_3", 0x00280103, 3),
    ):
        bad(name, lambda ds, t=tag, v=value: _raw(ds, t, "US", _us(v)))
    bad("huge_both", lambda ds: (_raw(ds, 0x00280010, "US", _us(65535)),
                                 _raw(ds, 0x00280011, "US", _us(65535))))  # fmt: skip
    for name, text in (("frames_million", "1000000"), ("frames_text", "abc"), ("frames_0", "0"),
                       ("frames_negative", "-3")):  # fmt: skip
        bad(name, lambda ds, t=text: _raw(ds, 0x00280008, "IS", _ds(t)))
    for name, text in (("photometric_garbage", "GARBAGE"), ("photometric_palette", "PALETTE COLOR"),
                       ("photometric_empty", "")):  # fmt: skip
        bad(name, lambda ds, t=text: _raw(ds, 0x00280004, "CS", _ds(t)))
    for name, tag, text in (
        ("slope_text", 0x00281053, "abc"),
        ("intercept_two_points", 0x00281052, "1.2.3"),
        ("slope_nan", 0x00281053, "nan"),
        ("slope_inf", 0x00281053, "inf"),
        ("slope_zero", 0x00281053, "0"),
        ("slope_huge", 0x00281053, "1e308"),
        ("intercept_inf", 0x00281052, "-inf"),
        ("slope_multi", 0x00281053, "1\\2"),
    ):
        bad(name, lambda ds, t=tag, v=text: _raw(ds, t, "DS", _ds(v)))
    bad("constant", lambda ds: setattr(ds, "PixelData", b"\x07\x00" * SIZE * SIZE))
    bad("high_bit_40", lambda ds: _raw(ds, 0x00280102, "US", _us(40)), "damaged")
    sr = w.dicom("CT", "H1")
    del sr.PixelData
    sr.Modality = "SR"
    w.add("bad/header/structured_report.dcm", w.encode(sr), "bad", label="nodule")
    no_meta = w.encode(w.dicom("CT", "H2"))
    w.add("damaged/no_preamble.dcm", no_meta[128:], "damaged", label="nodule")


def _compressed(w: _Writer) -> None:
    """Encapsulated pixel data that lies or is broken; the huge one must not be decoded."""

    def encapsulated(name: str, uid: str, fragments: list[bytes], **values: object) -> None:
        ds = w.dicom("CT", "C0")
        ds.file_meta.TransferSyntaxUID = uid
        # no fragments: an empty basic offset table, then the sequence delimiter
        empty = b"\xfe\xff\x00\xe0\0\0\0\0\xfe\xff\xdd\xe0\0\0\0\0"
        ds.PixelData = encapsulate(fragments) if fragments else empty
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        for key, value in values.items():
            setattr(ds, key, value)
        w.add(f"bad/compressed/{name}.dcm", w.encode(ds, enforce=False), "bad", label="nodule")

    garbage = w.rng.integers(0, 256, 600).astype(np.uint8).tobytes()
    encapsulated("rle_garbage", RLELossless, [garbage])
    encapsulated("jpeg_garbage", JPEGBaseline8Bit, [b"\xff\xd8\xff" + garbage],
                 BitsAllocated=8, BitsStored=8, HighBit=7)  # fmt: skip
    encapsulated("jpeg2000_garbage", JPEG2000Lossless, [garbage])
    encapsulated("rle_no_fragments", RLELossless, [])
    encapsulated("rle_huge", RLELossless, [garbage], Rows=65535, Columns=65535)
    good = w.dicom("CT", "C1")
    good.compress(RLELossless, w.pixels().astype(np.uint16))
    data = bytearray(w.encode(good))
    for place in w.rng.integers(len(data) - 2000, len(data), 8):
        data[place] ^= 0x5A
    w.add("damaged/rle_flipped.dcm", bytes(data), "damaged", label="nodule")


# ------------------------------------------------------------------------------- other files


def _plain_files(w: _Writer) -> None:
    for name in ("empty.dcm", "empty.png", "empty.jpg", "empty.nii", "empty.nii.gz", "empty"):
        w.add(f"bad/empty/{name}", b"", "bad", label="nodule")
    for name, data in (
        ("notes.txt", b"not an image\n"),
        ("data.json", b'{"a": 1}'),
        ("archive.zip", b"PK\x03\x04" + b"\0" * 40),
        ("random.bin", bytes(w.rng.integers(0, 256, 512).astype(np.uint8))),
        ("text.dcm", b"hello, I am not DICOM"),
        ("fake.png", b"this is text"),
        ("fake.nii", b"this is text" * 40),
        ("fake.jpg", b"\xff\xd8\xff" + b"\0" * 20),
        ("preamble_only.dcm", b"\0" * 128 + b"DICM"),
        ("preamble_garbage", b"\0" * 128 + b"DICM" + bytes(range(256))),
    ):
        w.add(f"bad/plain/{name}", data, "bad", label="nodule")


def _niftis(w: _Writer) -> None:
    ct = {"label": "nodule", "modality": "ct"}
    volume = (w.pixels((SIZE, SIZE, 4)) - 1000).astype(np.float32)
    with_nan = volume.copy()
    with_nan[3, 3, 2] = np.nan
    w.add("bad/nifti/nan.nii", w.nifti(with_nan), "bad", **ct)
    with_inf = volume.copy()
    with_inf[:, :, 2] = np.inf
    w.add("bad/nifti/inf.nii.gz", w.nifti(with_inf, gz=True), "bad", **ct)
    w.add("bad/nifti/four_d.nii", w.nifti(w.pixels((SIZE, SIZE, 3, 3)).astype(np.int16)),
          "bad", **ct)  # fmt: skip
    w.add("bad/nifti/five_d.nii", w.nifti(w.pixels((8, 8, 2, 2, 2)).astype(np.int16)), "bad",
          **ct)  # fmt: skip
    w.add("bad/nifti/constant.nii", w.nifti(np.full((SIZE, SIZE, 3), 5, np.int16)), "bad", **ct)
    good = w.nifti(volume.astype(np.int16))
    for offset in (10, 100, 347, 352, 360, len(good) // 2, len(good) - 2):
        w.add(f"bad/nifti/trunc_{offset}.nii", good[:offset], "bad", **ct)
    packed = w.nifti(volume.astype(np.int16), gz=True)
    for offset in (5, len(packed) // 3):
        w.add(f"bad/nifti/trunc_{offset}.nii.gz", packed[:offset], "bad", **ct)
    # only the gzip trailer cut: every voxel is still there
    w.add("damaged/trailer.nii.gz", packed[:-6], "damaged", **ct)
    lying = bytearray(good)
    lying[42:44] = struct.pack("<h", 30000)  # dim[1]: 30000 columns the data does not hold
    w.add("bad/nifti/lying_dims.nii", bytes(lying), "bad", **ct)
    zero = bytearray(good)
    zero[42:44] = struct.pack("<h", 0)
    w.add("bad/nifti/zero_dim.nii", bytes(zero), "bad", **ct)
    sizeof = bytearray(good)
    sizeof[0:4] = struct.pack("<i", 12)
    w.add("damaged/sizeof_hdr.nii", bytes(sizeof), "damaged", **ct)  # nibabel mends it


def _rasters(w: _Writer) -> None:
    xray = {"label": "normal", "modality": "xray"}
    png = w.png(w.pixels(high=255).astype(np.uint8))
    idat = png.index(b"IDAT")
    for offset in (8, 16, 30, idat, idat + 10, idat + 100, len(png) - 30):
        w.add(f"bad/png/trunc_{offset}.png", png[:offset], "bad", **xray)
    crc = bytearray(png)
    crc[idat + 20] ^= 0xFF
    w.add("bad/png/crc.png", bytes(crc), "bad", **xray)
    w.add("bad/png/signature.png", b"\x89PNX" + png[4:], "bad", **xray)
    bomb = bytearray(png)
    bomb[16:24] = struct.pack(">II", 100000, 100000)  # IHDR width, height
    w.add("bad/png/bomb.png", bytes(bomb), "bad", **xray)
    w.add("bad/png/constant.png", w.png(np.full((SIZE, SIZE), 9, np.uint8)), "bad", **xray)
    jpeg = w.jpeg(w.pixels(high=255))
    for offset in (4, 50, len(jpeg) // 2, len(jpeg) - 200):
        w.add(f"bad/jpeg/trunc_{offset}.jpg", jpeg[:offset], "bad", **xray)
    sof = jpeg.index(b"\xff\xc0")
    huge = bytearray(jpeg)
    huge[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    w.add("bad/jpeg/huge.jpg", bytes(huge), "bad", **xray)
    flipped = bytearray(jpeg)
    for place in w.rng.integers(sof + 20, len(jpeg) - 2, 6):
        flipped[place] ^= 0xFF
    w.add("damaged/jpeg_flipped.jpg", bytes(flipped), "damaged", **xray)


def _masks(w: _Writer) -> None:
    """Images that are fine, with masks that are not (the image goes with its mask)."""
    xray = {"label": "opacity", "modality": "xray", "patient_id": "X9"}
    image = w.pixels(high=255).astype(np.uint8)

    def with_mask(name: str, mask: str, data: bytes | None) -> None:
        if data is not None:
            w.put(mask, data)
        w.add(f"bad/mask/{name}.png", w.png(image + len(w.corpus.rows) % 7), "bad", mask=mask,
              **xray)  # fmt: skip

    with_mask("missing", "bad/mask/none.png", None)
    with_mask("unreadable", "bad/mask/unreadable_mask.png", b"\x89PNG garbage")
    with_mask("misshaped", "bad/mask/misshaped_mask.png", w.png(np.zeros((SIZE, 20), np.uint8)))
    with_mask("outside", "../outside_mask.png", None)
    (w.root.parent / "outside_mask.png").write_bytes(w.png(np.zeros((SIZE, SIZE), np.uint8)))
    with_mask("dicom_mask", "bad/mask/dicom_mask.dcm", w.encode(w.dicom("CT", "K0")))


def _labels(w: _Writer) -> None:
    """Labels rows that are wrong, and files whose bytes are already in the corpus."""
    for i, label in enumerate(("Nodule", "nodule ", "nodul", "", PLANTED)):
        w.add(f"bad/label/l{i}.dcm", w.encode(w.dicom("CT", "L0")), "bad", label=label)
    for rel in ("bad/label/gone.dcm", "../outside.dcm", "/etc/hostname", "bad/../../else/x.dcm"):
        w.label(rel, label="nodule")
        w.corpus.missing.add(rel)
    (w.root.parent / "outside.dcm").write_bytes(w.encode(w.dicom("CT", "L1")))
    original = (w.root / "good/ct_0.dcm").read_bytes()
    for i in range(3):  # ingest keeps the first in path order: the original
        w.add(f"z_duplicate/copy_{i}.dcm", original, "bad", label="nodule")


def _names(w: _Writer) -> None:
    """Unusual but valid names go through; names and links that cannot be trusted do not."""
    xray = {"modality": "xray", "label": "normal"}
    for i, name in enumerate((
        "with space.png", "ünïcødé-名前.png", "comma,name.png", "quote'\"name.png",
        "-leading-dash.png", "#hash;semi.png", "x" * 200 + ".png", f"planted {PLANTED}.png",
    )):  # fmt: skip
        w.add(f"names/{name}", w.png(w.pixels(high=255).astype(np.uint8)), "good",
              patient_id=f"X{i % 3}", **xray)  # fmt: skip
    raw = os.fsencode(w.root / "names") + b"/latin1-\xe9.png"
    with open(raw, "wb") as fh:
        fh.write(w.png(w.pixels(high=255).astype(np.uint8)))
    w.corpus.bad.add(os.fsdecode(raw)[len(str(w.root)) + 1 :])  # no labels row can name it
    outside = w.root.parent / "outside.png"
    outside.write_bytes(w.png(w.pixels(high=255).astype(np.uint8)))
    (w.root / "names/link_outside.png").symlink_to(outside)
    w.corpus.bad.add("names/link_outside.png")
    w.label("names/link_outside.png", patient_id="X1", **xray)
    (w.root / "names/link_inside.png").symlink_to(w.root / "good/xr_0.png")
    w.corpus.bad.add("names/link_inside.png")  # the same bytes as the file it names
    w.label("names/link_inside.png", patient_id="X0", **xray)
    os.mkfifo(w.root / "names/fifo.png")
    w.corpus.bad.add("names/fifo.png")
    w.label("names/fifo.png", patient_id="X0", **xray)

"""Deterministic synthetic DICOM cohort (MRI brain, CT chest, chest X-ray) for the demo pipeline.

The cohort exists so the whole pipeline can run end to end without real data: images are
phantoms with a learnable but not trivial lesion, and the headers carry planted, synthetic
PHI so the anonymiser has real work to do. Everything derives from one seed: the same seed
and parameters give byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from radflow.core.fileio import atomic_write_bytes, atomic_write_text

# The keys of params["demo"]; their defaults are in workflow/schemas/params.schema.yaml.
COUNT_KEYS = ("patients_per_modality", "max_studies_per_patient", "images_per_study", "image_size")
KEYS = (*COUNT_KEYS, "lesion_fraction")

# Fixed so that files do not change with the installed pydicom version.
IMPLEMENTATION_CLASS_UID = "2.25.170316151906725467803340315592301471977"
IMPLEMENTATION_VERSION = "RADFLOW_010"
PRIVATE_CREATOR = "RADFLOW_DEMO"
SERIES_DESCRIPTIONS = {"mri": "AX T1 POST GAD", "ct": "AX CHEST 1.25 STD", "xray": "CHEST PA"}
LABEL_COLUMNS = ["path", "label", "mask"]
Array = np.ndarray
Rng = np.random.Generator


@dataclass(frozen=True)
class ModalitySpec:
    """How one radflow modality maps onto DICOM and onto its phantom."""

    name: str
    labels: tuple[str, str]
    dicom_modality: str
    sop_class: str
    body_part: str
    fov_mm: float
    mask_ext: str
    bits_stored: int
    study_description: str
    slice_gap_mm: float


SPECS: dict[str, ModalitySpec] = {
    "mri": ModalitySpec(
        "mri",
        ("no_tumour", "tumour"),
        "MR",
        MRImageStorage,
        "HEAD",
        230.0,
        ".nii.gz",
        16,
        "MR BRAIN WITH AND WITHOUT CONTRAST",
        6.0,
    ),
    "ct": ModalitySpec(
        "ct",
        ("no_nodule", "nodule"),
        "CT",
        CTImageStorage,
        "CHEST",
        360.0,
        ".nii.gz",
        12,
        "CT CHEST WITHOUT CONTRAST",
        2.5,
    ),
    "xray": ModalitySpec(
        "xray",
        ("normal", "opacity"),
        "DX",
        DigitalXRayImageStorageForPresentation,
        "CHEST",
        430.0,
        ".png",
        12,
        "XR CHEST PA",
        0.0,
    ),
}


# --------------------------------------------------------------------------- parameters


def check_params(demo_params: Mapping[str, Any]) -> dict[str, Any]:
    """params["demo"] as numbers, or ValueError for values that cannot make a valid cohort.

    The values come filled from the schema (params.load, or params.with_defaults for code
    that builds them by hand); the bounds here are looser than the schema's so that tests
    can make tiny cohorts.
    """
    missing = [k for k in KEYS if k not in demo_params]
    if missing:
        raise ValueError(
            f"demo: params lack {missing}; pass params['demo'] with the schema's defaults "
            "filled (radflow.core.params.load or with_defaults)"
        )
    out: dict[str, Any] = {k: int(demo_params[k]) for k in COUNT_KEYS}
    out["lesion_fraction"] = float(demo_params["lesion_fraction"])
    if out["patients_per_modality"] < 1 or out["max_studies_per_patient"] < 1:
        raise ValueError("demo: patients_per_modality and max_studies_per_patient must be >= 1")
    if out["patients_per_modality"] * out["max_studies_per_patient"] < 2:
        raise ValueError("demo: need room for at least two studies per modality (both labels)")
    if out["images_per_study"] < 1 or out["image_size"] < 32:
        raise ValueError("demo: images_per_study must be >= 1 and image_size >= 32")
    if not 0.0 <= out["lesion_fraction"] <= 1.0:
        raise ValueError("demo: lesion_fraction must be in [0, 1]")
    return out


# --------------------------------------------------------------------------- image helpers


def _grid(size: int) -> tuple[Array, Array]:
    """Pixel-centre coordinates in [-1, 1]: u along columns, v along rows (down)."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, c)


def _pose(size: int, pose: dict[str, float]) -> tuple[Array, Array]:
    """Anatomy coordinates: the image grid shifted, rotated and scaled per patient and slice."""
    u, v = _grid(size)
    du, dv = u - pose["cx"], v - pose["cy"]
    c, s = math.cos(pose["theta"]), math.sin(pose["theta"])
    return (c * du + s * dv) / pose["scale"], (-s * du + c * dv) / pose["scale"]


def _fill(level: Array, size: int) -> Array:
    """Anti-aliased inside-ness of a signed level set (negative inside), ~1 px ramp."""
    return np.clip(0.5 - level * (size / 2.0), 0.0, 1.0)


def _ellipse(
    x: Array, y: Array, cx: float, cy: float, a: float, b: float, angle: float = 0.0
) -> Array:
    """Approximate signed distance to an ellipse (negative inside), in grid units."""
    dx, dy = x - cx, y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return (np.sqrt((dx / a) ** 2 + (dy / b) ** 2) - 1.0) * min(a, b)


def _smooth_noise(rng: Rng, size: int, sigma_px: float) -> Array:
    """Gaussian-filtered white noise with unit variance (FFT, so no scipy needed)."""
    white = rng.standard_normal((size, size))
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    gain = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    out = np.fft.irfft2(np.fft.rfft2(white) * gain, s=(size, size))
    return out / (out.std() + 1e-12)


def _blur(img: Array, sigma_px: float) -> Array:
    """Gaussian blur (periodic FFT) standing in for the scanner's point-spread function."""
    size = img.shape[0]
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    gain = np.exp(-2.0 * (math.pi * sigma_px) ** 2 * (fx**2 + fy**2))
    return np.fft.irfft2(np.fft.rfft2(img) * gain, s=img.shape)


def _loguniform(rng: Rng, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _blob_level(x: Array, y: Array, lesion: dict[str, Any], radius: float) -> Array:
    """Signed distance to a lobulated blob: irregular edges make size cues less trivial."""
    rho = np.sqrt((x - lesion["x"]) ** 2 + (y - lesion["y"]) ** 2)
    return rho - radius * (1.0 + lesion["lobulation"] * lesion["shape"])


def _slice_offset(k: int, n: int) -> float:
    """Slice position in [-1, 1] across a study (0 for a single image)."""
    return 0.0 if n == 1 else 2.0 * k / (n - 1) - 1.0


def _base_pose(rng: Rng, shift: float, degrees: float, scale: float) -> dict[str, float]:
    return {
        "cx": float(rng.uniform(-shift, shift)),
        "cy": float(rng.uniform(-shift, shift)),
        "theta": math.radians(float(rng.uniform(-degrees, degrees))),
        "scale": float(rng.uniform(1.0 - scale, 1.0 + scale)),
    }


def _jitter_pose(rng: Rng, pose: dict[str, float], amount: float) -> dict[str, float]:
    """The same patient repositioned slightly between studies or exposures."""
    return {
        "cx": pose["cx"] + float(rng.normal(0, amount)),
        "cy": pose["cy"] + float(rng.normal(0, amount)),
        "theta": pose["theta"] + float(rng.normal(0, amount)),
        "scale": pose["scale"] * (1.0 + float(rng.normal(0, amount / 2))),
    }


def _vessel_tree(
    rng: Rng, hilum: tuple[float, float], side: int, length: float, width: float
) -> list[tuple[float, ...]]:
    """Segments (x0, y0, x1, y1, half-width) of a vessel tree branching out from a hilum."""
    segments: list[tuple[float, ...]] = []
    tips = [
        (hilum[0], hilum[1], float(a), length, width)
        for a in np.linspace(-2.2, 2.2, 5) + rng.normal(0, 0.2, 5)
    ]
    for _ in range(3):
        nxt = []
        for x0, y0, angle, span, w in tips:
            x1 = x0 + side * span * math.cos(angle)
            y1 = y0 + span * math.sin(angle)
            segments.append((x0, y0, x1, y1, w))
            for turn in (-0.45, 0.45):
                nxt.append(
                    (
                        x1,
                        y1,
                        angle + turn + float(rng.normal(0, 0.2)),
                        span * float(rng.uniform(0.55, 0.8)),
                        w * 0.65,
                    )
                )
        tips = nxt
    return segments


def _vessel_field(x: Array, y: Array, segments: list[tuple[float, ...]], size: int) -> Array:
    """Anti-aliased union of tapered line segments (vessels) on the grid."""
    out = np.zeros_like(x)
    for x0, y0, x1, y1, w in segments:
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
        dist = np.hypot(x - x0 - t * dx, y - y0 - t * dy)
        out = np.maximum(out, _fill(dist - w, size))
    return out


# --------------------------------------------------------------------------- MRI brain


def _mri_anatomy(rng: Rng, size: int) -> dict[str, Any]:
    return {
        "pose": _base_pose(rng, 0.05, 6.0, 0.06),
        "head_a": float(rng.uniform(0.74, 0.82)),
        "head_b": float(rng.uniform(0.86, 0.94)),
        "ventricle": float(rng.uniform(0.7, 1.5)),
        "texture": _smooth_noise(rng, size, size / 28) + 0.8 * _smooth_noise(rng, size, size / 60),
        "gain": float(rng.uniform(1200, 3000)),
        "noise": float(rng.uniform(0.015, 0.05)),
        "bias": (float(rng.uniform(-0.25, 0.25)), float(rng.uniform(-0.25, 0.25))),
    }


def _mri_lesion(rng: Rng, anat: dict[str, Any], size: int) -> dict[str, Any]:
    """A contrast-enhancing tumour somewhere inside the brain, sometimes ring-enhancing."""
    radius = _loguniform(rng, 0.06, 0.22)
    brain_a, brain_b = anat["head_a"] - 0.14, anat["head_b"] - 0.14
    reach = max(0.0, 0.85 - radius / min(brain_a, brain_b))
    angle, frac = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0, 1)) * reach
    return {
        "x": float(frac * brain_a * math.cos(angle)),
        "y": float(frac * brain_b * math.sin(angle)),
        "radius": radius,
        "delta": float(rng.uniform(0.12, 0.45)),
        "ring": bool(rng.uniform() < 0.35),
        "oedema": float(rng.uniform(0.0, 0.25)),
        "lobulation": float(rng.uniform(0.05, 0.2)),
        "shape": _smooth_noise(rng, size, max(2.0, radius * size / 4)),
    }


def _render_mri(
    rng: Rng, size: int, anat: dict[str, Any], lesion: dict | None, z: float
) -> tuple[Array, Array | None]:
    """T1-weighted post-contrast brain slice: scalp, skull, CSF, grey/white matter, ventricles."""
    x, y = _pose(size, anat["pose"])
    k = 1.0 - 0.04 * z * z
    a, b = anat["head_a"] * k, anat["head_b"] * k
    img = 0.85 * _fill(_ellipse(x, y, 0, 0, a, b), size)  # scalp fat
    img = _layer(img, _ellipse(x, y, 0, 0, a - 0.05, b - 0.05), 0.07, size)  # skull
    img = _layer(img, _ellipse(x, y, 0, 0, a - 0.11, b - 0.11), 0.30, size)  # CSF
    brain = _ellipse(x, y, 0, 0, a - 0.14, b - 0.14)
    texture = anat["texture"] + 0.3 * _smooth_noise(rng, size, size / 40)
    radial = np.sqrt((x / (a - 0.14)) ** 2 + (y / (b - 0.14)) ** 2)
    tissue = 0.56 + 0.22 * _fill(0.4 * (radial + 0.08 * texture - 0.7), size)  # white matter
    tissue = tissue * (1.0 + 0.025 * _smooth_noise(rng, size, 1.2))
    img = img * (1 - _fill(brain, size)) + tissue * _fill(brain, size)
    vs = anat["ventricle"] * (1.0 - 0.3 * abs(z))
    for side in (-1, 1):
        vent = _ellipse(x, y, side * 0.085 * vs, -0.04, 0.045 * vs, 0.17 * vs, side * 0.3)
        img = _layer(img, vent, 0.2, size)
    img = _layer(img, _ellipse(x, y, 0, b - 0.13, 0.02, 0.015), 0.95, size)  # sagittal sinus
    mask = None
    if lesion is not None:
        img, mask = _mri_tumour(img, x, y, lesion, z, size)
    bias = np.exp(anat["bias"][0] * x + anat["bias"][1] * y)
    sigma = anat["noise"]
    n1, n2 = rng.normal(0, sigma, (2, size, size))
    img = np.sqrt((img * bias + n1) ** 2 + n2**2)  # Rician magnitude noise
    return np.clip(np.rint(img * anat["gain"]), 0, 65535).astype(np.uint16), mask


def _layer(img: Array, level: Array, value: float, size: int) -> Array:
    """Paint value inside level over img, anti-aliased."""
    w = _fill(level, size)
    return img * (1 - w) + value * w


def _mri_tumour(
    img: Array, x: Array, y: Array, lesion: dict[str, Any], z: float, size: int
) -> tuple[Array, Array]:
    radius = lesion["radius"] * (1.0 - 0.12 * abs(z))
    level = _blob_level(x, y, lesion, radius)
    halo = _fill(level - radius * 0.6, size) - _fill(level, size)
    img = img * (1.0 - lesion["oedema"] * halo)
    img = _layer(img, level, 0.78 + lesion["delta"], size)
    if lesion["ring"]:
        img = _layer(img, level + radius * 0.35, 0.32, size)  # necrotic core
    return img, _mask(level)


def _mask(level: Array) -> Array:
    mask = (level < 0).astype(np.uint8)
    if not mask.any():  # a lesion always marks at least its centre pixel
        mask.flat[int(np.argmin(level))] = 1
    return mask


# --------------------------------------------------------------------------- CT chest


def _ct_anatomy(rng: Rng, size: int) -> dict[str, Any]:
    return {
        "pose": _base_pose(rng, 0.04, 5.0, 0.05),
        "body_a": float(rng.uniform(0.82, 0.93)),
        "body_b": float(rng.uniform(0.55, 0.68)),
        "fat": float(rng.uniform(0.03, 0.1)),
        "lung_a": float(rng.uniform(0.25, 0.3)),
        "lung_b": float(rng.uniform(0.36, 0.44)),
        "heart": float(rng.uniform(0.16, 0.22)),
        "texture": _smooth_noise(rng, size, size / 45),
        "trees": [_vessel_tree(rng, (side * 0.17, 0.0), side, 0.13, 0.006) for side in (-1, 1)],
        "noise": float(rng.uniform(8, 30)),
        "ribs": int(rng.integers(7, 11)),
    }


def _ct_lungs(
    x: Array | float, y: Array | float, anat: dict[str, Any], k: float, side: int
) -> Array:
    """Signed distance to one lung (side -1 = image left), cut by the heart and midline."""
    la, lb = anat["lung_a"] * k, anat["lung_b"] * k
    lung = _ellipse(np.asarray(x), np.asarray(y), side * 0.37 * k, -0.02, la, lb)
    heart = _ellipse(np.asarray(x), np.asarray(y), 0.08, 0.1, anat["heart"] * 1.2, anat["heart"])
    return np.maximum(np.maximum(lung, -heart), 0.1 - side * np.asarray(x))


def _ct_lesion(rng: Rng, anat: dict[str, Any], size: int) -> dict[str, Any]:
    """A lung nodule: solid, part-solid (solid core in ground glass) or pure ground glass."""
    radius = _loguniform(rng, 0.06, 0.14)
    side = int(rng.choice([-1, 1]))
    for _ in range(200):
        px = float(side * 0.37 + rng.uniform(-1, 1) * anat["lung_a"])
        py = float(-0.02 + rng.uniform(-1, 1) * anat["lung_b"])
        if float(_ct_lungs(px, py, anat, 0.96, side)) < -(radius + 0.02):
            break
    else:
        px, py = side * 0.37, -0.02
    kind = rng.choice(["solid", "part_solid", "ground_glass"], p=[0.7, 0.22, 0.08])
    return {
        "x": px,
        "y": py,
        "radius": radius,
        "kind": str(kind),
        "solid_hu": float(rng.uniform(-10, 60)),
        "glass_hu": float(rng.uniform(-600, -300)),
        "core": float(rng.uniform(0.35, 0.6)),
        "lobulation": float(rng.uniform(0.05, 0.25)),
        "shape": _smooth_noise(rng, size, max(2.0, radius * size / 4)),
    }


def _render_ct(
    rng: Rng, size: int, anat: dict[str, Any], lesion: dict | None, z: float
) -> tuple[Array, Array | None]:
    """Axial chest slice in HU, stored as HU + 1024 (RescaleIntercept -1024)."""
    x, y = _pose(size, anat["pose"])
    k = 1.0 - 0.03 * z
    a, b, f = anat["body_a"], anat["body_b"], anat["fat"]
    hu = -1000.0 + 900.0 * _fill(_ellipse(x, y, 0, 0.02, a, b), size)  # fat -100
    hu = _layer(hu, _ellipse(x, y, 0, 0.02, a - f, b - f), 40.0, size)
    hu = _ct_bones(hu, x, y, anat, size)
    for side, tree in zip((-1, 1), anat["trees"], strict=True):
        lung = _fill(_ct_lungs(x, y, anat, k, side), size)
        vessels = np.maximum(_vessel_field(x, y, tree, size), _ct_vessel_dots(rng, x, y, side))
        parenchyma = -860.0 + 15.0 * anat["texture"] + 700.0 * vessels
        hu = hu * (1 - lung) + parenchyma * lung
    hu = _layer(hu, _ellipse(x, y, 0, -0.12, 0.035, 0.035), -990.0, size)  # trachea
    mask = None
    if lesion is not None:
        hu, mask = _ct_nodule(hu, x, y, lesion, z, size)
    hu = _blur(hu, 0.6) + rng.normal(0, anat["noise"], (size, size))
    return np.clip(np.rint(hu + 1024.0), 0, 4095).astype(np.uint16), mask


def _ct_vessel_dots(rng: Rng, x: Array, y: Array, side: int) -> Array:
    """Vessels crossing the slice: small round dots, the look-alikes of small nodules."""
    size = x.shape[0]
    dots = np.zeros_like(x)
    for _ in range(int(rng.integers(4, 10))):
        cx, cy = side * 0.37 + rng.uniform(-0.25, 0.25), rng.uniform(-0.35, 0.35)
        r = float(rng.uniform(0.006, 0.014))
        dots = np.maximum(dots, _fill(np.hypot(x - cx, y - cy) - r, size))
    return dots


def _ct_bones(hu: Array, x: Array, y: Array, anat: dict[str, Any], size: int) -> Array:
    """Spine, ribs and sternum at bone density."""
    b = anat["body_b"]
    hu = _layer(hu, _ellipse(x, y, 0, 0.5 * b, 0.09, 0.08), 700.0, size)
    hu = _layer(hu, _ellipse(x, y, 0, 0.5 * b, 0.07, 0.06), 250.0, size)
    hu = _layer(hu, _ellipse(x, y, 0, 0.5 * b + 0.12, 0.035, 0.03), 20.0, size)
    hu = _layer(hu, _ellipse(x, y, 0, -b + anat["fat"] + 0.06, 0.05, 0.025), 500.0, size)
    ra, rb = anat["body_a"] - anat["fat"] - 0.04, b - anat["fat"] - 0.03
    for phi in np.linspace(-1.15, 1.15, anat["ribs"]):
        for side in (-1, 1):
            cx, cy = side * ra * math.cos(phi), 0.02 + rb * math.sin(phi)
            level = _ellipse(x, y, cx, cy, 0.03, 0.017, side * (phi + math.pi / 2))
            hu = _layer(hu, level, 700.0, size)
    return hu


def _ct_nodule(
    hu: Array, x: Array, y: Array, lesion: dict[str, Any], z: float, size: int
) -> tuple[Array, Array]:
    radius = lesion["radius"] * (1.0 - 0.12 * abs(z))
    level = _blob_level(x, y, lesion, radius)
    if lesion["kind"] == "solid":
        hu = _layer(hu, level, lesion["solid_hu"], size)
    else:
        hu = _layer(hu, level, lesion["glass_hu"], size)
        if lesion["kind"] == "part_solid":
            core = level + radius * (1.0 - lesion["core"])
            hu = _layer(hu, core, lesion["solid_hu"], size)
    return hu, _mask(level)


# --------------------------------------------------------------------------- chest X-ray


def _xray_anatomy(rng: Rng, size: int) -> dict[str, Any]:
    return {
        "pose": _base_pose(rng, 0.04, 4.0, 0.06),
        "lung_a": float(rng.uniform(0.24, 0.3)),
        "lung_b": float(rng.uniform(0.48, 0.58)),
        "heart": float(rng.uniform(0.2, 0.27)),
        "dome": float(rng.uniform(0.32, 0.44)),
        "trees": [_vessel_tree(rng, (side * 0.14, -0.05), side, 0.15, 0.013) for side in (-1, 1)],
        "exposure": float(rng.uniform(0.85, 1.15)),
        "noise": float(rng.uniform(12, 40)),
        "rib_gap": float(rng.uniform(0.1, 0.125)),
    }


def _xray_lung(x: Array | float, y: Array | float, anat: dict[str, Any], side: int) -> Array:
    """Signed distance to one lung field, cut by the diaphragm dome, heart and mediastinum."""
    x, y = np.asarray(x), np.asarray(y)
    lung = _ellipse(x, y, side * 0.36, -0.1, anat["lung_a"], anat["lung_b"])
    heart = _ellipse(x, y, 0.1, 0.24, anat["heart"], anat["heart"] * 0.8)
    return np.maximum.reduce([lung, y - _xray_dome(x, anat), -heart, 0.1 - side * x])


def _xray_dome(x: Array, anat: dict[str, Any]) -> Array:
    """Diaphragm height across the image; the right hemidiaphragm (image left) sits higher."""
    return anat["dome"] - 0.04 * (x < 0) + 0.3 * ((np.abs(x) - 0.36) / 0.3) ** 2


def _xray_lesion(rng: Rng, anat: dict[str, Any], size: int) -> dict[str, Any]:
    """A diffuse consolidation: a soft bright patch confined to one lung."""
    spread = _loguniform(rng, 0.08, 0.2)
    side = int(rng.choice([-1, 1]))
    for _ in range(200):
        px = float(side * 0.36 + rng.uniform(-1, 1) * anat["lung_a"])
        py = float(-0.1 + rng.uniform(-1, 1) * anat["lung_b"])
        if float(_xray_lung(px, py, anat, side)) < -0.05:
            break
    else:
        px, py = side * 0.36, -0.1
    return {
        "x": px,
        "y": py,
        "side": side,
        "spread": spread,
        "amplitude": float(rng.uniform(400, 1000)),
        "shape": _smooth_noise(rng, size, max(2.0, spread * size / 3)),
    }


def _render_xray(
    rng: Rng, size: int, anat: dict[str, Any], lesion: dict | None, z: float
) -> tuple[Array, Array | None]:
    """PA chest radiograph, MONOCHROME2 sense (bright = attenuating), 12-bit."""
    x, y = _pose(size, anat["pose"])
    body = _fill((((x / 0.95) ** 4 + ((y - 0.2) / 1.15) ** 4) ** 0.25 - 1.0) * 0.9, size)
    mediastinum = _fill(np.maximum(np.abs(x) - 0.13, -y - 0.75), size)
    heart = _fill(_ellipse(x, y, 0.1, 0.24, anat["heart"], anat["heart"] * 0.8), size)
    abdomen = 0.8 * _fill(_xray_dome(x, anat) - y, size)
    img = 180.0 + body * (1500.0 + 900.0 * np.maximum.reduce([mediastinum, heart, abdomen]))
    img += body * (250.0 * _fill(np.abs(x) - 0.045, size) + _xray_ribs(x, y, anat, size))
    for side, tree in zip((-1, 1), anat["trees"], strict=True):
        lung = _fill(_xray_lung(x, y, anat, side), size)
        img -= lung * (1000.0 - 300.0 * _vessel_field(x, y, tree, size))
    mask = None
    if lesion is not None:
        img, mask = _xray_opacity(img, x, y, anat, lesion, z, size)
    img = _blur(img, 0.9) * anat["exposure"] * (1.0 + 0.03 * z)
    img += rng.normal(0, anat["noise"], (size, size))
    return np.clip(np.rint(img), 0, 4095).astype(np.uint16), mask


def _xray_ribs(x: Array, y: Array, anat: dict[str, Any], size: int) -> Array:
    """Posterior rib arcs and clavicles, each a faint bright band."""
    ribs = np.zeros_like(x)
    lateral = np.clip((np.abs(x) - 0.08) / 0.6, 0, 1)
    for i in range(9):
        centre = -0.62 + i * anat["rib_gap"] + 0.25 * lateral**2 - 0.1 * lateral
        band = _fill(np.abs(y - centre) - 0.022, size) * (np.abs(x) > 0.06) * (np.abs(x) < 0.72)
        ribs = np.maximum(ribs, band)
    clav = _fill(np.abs(y + 0.68 + 0.12 * lateral) - 0.02, size) * (np.abs(x) < 0.55)
    return 220.0 * ribs + 280.0 * clav


def _xray_opacity(
    img: Array,
    x: Array,
    y: Array,
    anat: dict[str, Any],
    lesion: dict[str, Any],
    z: float,
    size: int,
) -> tuple[Array, Array]:
    spread = lesion["spread"] * (1.0 + 0.05 * z)
    dist2 = (x - lesion["x"]) ** 2 + (y - lesion["y"]) ** 2
    patch = np.exp(-dist2 / (2 * spread**2)) * np.clip(1.0 + 0.35 * lesion["shape"], 0.2, 2.0)
    lung_level = _xray_lung(x, y, anat, lesion["side"])
    patch = patch * _fill(lung_level, size)
    img = img + lesion["amplitude"] * patch
    centre = np.argmin(dist2 - 1e3 * (lung_level < 0))
    mask = ((patch > 0.35) & (lung_level < 0)).astype(np.uint8)
    if not mask.any():
        mask.flat[int(centre)] = 1
    return img, mask


# --------------------------------------------------------------------------- synthetic PHI


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_SYLLABLES = _tokens(
    "ka lo mir ven dra sol tin bar quel zor fen lis mar dov rek sa ni tor vel ash brin cor dal "
    "esk gul hav jor kel lun mor nev orr pel rin sten tav ulm vor wen yst"
)
_GIVEN = {
    "F": _tokens("Ada Bea Cleo Dana Elin Freya Greta Hana Ines Juno Kira Lena Mira Nora Olga Pia"),
    "M": _tokens(
        "Aron Bram Caspar Dario Emil Finn Goran Hugo Ivo Jonas Kai Lars Milo Nils Oskar Per"
    ),
}
_STREETS = ("Lane", "Road", "Street", "Close", "Avenue", "Row")


def _word(rng: Rng, syllables: int) -> str:
    return "".join(str(s) for s in rng.choice(_SYLLABLES, syllables)).capitalize()


def _person(rng: Rng, sex: str | None = None) -> tuple[str, str]:
    """A synthetic (family, given) name: invented surname syllables, so never a real person."""
    sex = sex or str(rng.choice(["F", "M"]))
    return _word(rng, int(rng.integers(2, 4))), str(rng.choice(_GIVEN[sex]))


def _pn(person: tuple[str, str], prefix: str = "") -> str:
    family, given = person
    return f"{family.upper()}^{given}" + (f"^^{prefix}" if prefix else "")


def _address(rng: Rng) -> str:
    return (
        f"{int(rng.integers(1, 200))} {_word(rng, 2)} {rng.choice(_STREETS)}, "
        f"{_word(rng, 2)}ford, ZZ{int(rng.integers(1, 99))} {int(rng.integers(1, 9))}QX"
    )


def _uid(rng: Rng) -> str:
    """A 2.25 UID (PS3.5 B.2) from 128 seeded random bits: deterministic, no uuid4."""
    return "2.25." + str(int.from_bytes(rng.bytes(16), "big"))


def _date(start: dt.date, days: int) -> dt.date:
    return start + dt.timedelta(days=int(days))


def _time(rng: Rng, start_hour: int = 7, end_hour: int = 19) -> str:
    seconds = int(rng.integers(start_hour * 3600, end_hour * 3600))
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _add_minutes(hhmmss: str, minutes: float) -> str:
    total = int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:]) + int(minutes * 60)
    total = min(total, 23 * 3600 + 59 * 60 + 59)
    return f"{total // 3600:02d}{total // 60 % 60:02d}{total % 60:02d}"


@dataclass
class Patient:
    """Everything that identifies one synthetic patient (all of it is PHI to be removed)."""

    index: int
    folder: str
    patient_id: str
    name: tuple[str, str]
    sex: str
    birth: dt.date
    address: str
    phone: str
    other_id: str
    issuer: str
    institution: str
    institution_address: str
    referring: tuple[str, str]
    transport: str = "DX"  # DX or CR for X-ray patients
    studies: list[Study] = field(default_factory=list)


@dataclass
class Study:
    """One visit: a date, accession, UIDs and whether the lesion is present."""

    index: int
    positive: bool
    date: dt.date
    time: str
    uid: str
    series_uid: str
    frame_uid: str
    accession: str
    study_id: str
    requested_procedure: str
    performing: tuple[str, str]
    operator: tuple[str, str]
    station: str
    serial: str
    photometric: str = "MONOCHROME2"


def _identity(rng: Rng, index: int, patient_id: str, name: tuple[str, str], sex: str) -> Patient:
    hospital = _word(rng, 2)
    return Patient(
        index=index,
        folder=f"pat{index + 1:03d}",
        patient_id=patient_id,
        name=name,
        sex=sex,
        birth=_date(dt.date(1935, 1, 1), rng.integers(0, 60 * 365)),  # adults
        address=_address(rng),
        phone=f"+44 1632 960{int(rng.integers(0, 1000)):03d}",  # Ofcom drama range
        other_id=f"NHS{int(rng.integers(10**8, 10**9))}",
        issuer=f"{hospital.upper()}_MRN",
        institution=f"{hospital} General Hospital",
        institution_address=_address(rng),
        referring=_person(rng),
    )


def _patients(rng: Rng, mod_index: int, n: int) -> list[Patient]:
    """Patients of one modality with unique names and IDs (IDs also unique across modalities)."""
    ids = rng.choice(9_000_000, size=n, replace=False) + 1_000_000
    names: set[tuple[str, str]] = set()
    out = []
    for i in range(n):
        sex = str(rng.choice(["F", "M"]))
        name = _person(rng, sex)
        while name in names:
            name = _person(rng, sex)
        names.add(name)
        out.append(_identity(rng, i, f"{mod_index + 1}{int(ids[i]):07d}", name, sex))
    return out


# --------------------------------------------------------------------------- cohort plan


def _study_counts(rng: Rng, n: int, max_studies: int) -> Array:
    """1..max studies each; a third of the patients (at least two) get two or more."""
    counts = rng.integers(1, max_studies + 1, size=n)
    if max_studies >= 2:
        forced = rng.choice(n, size=min(n, max(2, n // 3)), replace=False)
        counts[forced] = np.maximum(counts[forced], 2)
    return counts


def _study_labels(rng: Rng, counts: Array, fraction: float) -> list[list[bool]]:
    """Per-study labels: about `fraction` positive, both labels present, and a few patients
    with a negative and a positive study (so patient-level leakage would matter)."""
    labels: list[list[bool | None]] = [[None] * int(c) for c in counts]
    multi = [i for i, c in enumerate(counts) if c >= 2]
    mixed = rng.choice(multi, size=min(len(multi), max(2, len(counts) // 5)), replace=False)
    for i in (int(m) for m in mixed):
        pos, neg = rng.choice(int(counts[i]), size=2, replace=False)
        labels[i][int(pos)], labels[i][int(neg)] = True, False
    free = [(i, j) for i, row in enumerate(labels) for j, v in enumerate(row) if v is None]
    total = int(counts.sum())
    fixed_pos = len(mixed)
    target = int(np.clip(round(fraction * total), max(1, fixed_pos), total - max(1, fixed_pos)))
    chosen = set(rng.permutation(len(free))[: max(0, target - fixed_pos)].tolist())
    for n, (i, j) in enumerate(free):
        labels[i][j] = n in chosen
    return [[bool(v) for v in row] for row in labels]


def _studies(rng: Rng, patient: Patient, labels: list[bool], mod: str) -> list[Study]:
    day = int(rng.integers(0, 3000))
    out = []
    for j, positive in enumerate(labels):
        if j:
            day += int(rng.integers(30, 600))
        out.append(
            Study(
                index=j,
                positive=positive,
                date=_date(dt.date(2014, 1, 1), day),
                time=_time(rng),
                uid=_uid(rng),
                series_uid=_uid(rng),
                frame_uid=_uid(rng),
                accession=f"A{int(rng.integers(10**6, 10**7))}{patient.index:03d}{j}",
                study_id=str(int(rng.integers(1000, 99999))),
                requested_procedure=f"RP{int(rng.integers(10**5, 10**6))}",
                performing=_person(rng),
                operator=_person(rng),
                station=f"{SPECS[mod].dicom_modality}{_word(rng, 1).upper()}{rng.integers(1, 9)}",
                serial=str(int(rng.integers(10**7, 10**8))),
            )
        )
    return out


# --------------------------------------------------------------------------- DICOM header


def _age(birth: dt.date, on: dt.date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def _patient_module(ds: Dataset, p: Patient, s: Study) -> None:
    """Patient-level PHI, including free text that repeats the name."""
    family, given = p.name
    ds.PatientName = _pn(p.name)
    ds.PatientID = p.patient_id
    ds.IssuerOfPatientID = p.issuer
    ds.PatientBirthDate = p.birth.strftime("%Y%m%d")
    ds.PatientSex = p.sex
    ds.PatientAge = _age(p.birth, s.date)
    ds.PatientAddress = p.address
    ds.PatientTelephoneNumbers = p.phone
    ds.OtherPatientIDs = p.other_id
    ds.PatientComments = f"{given} {family} prefers morning appointments; call {p.phone}."


def _study_module(ds: Dataset, spec: ModalitySpec, p: Patient, s: Study) -> None:
    date = s.date.strftime("%Y%m%d")
    ds.StudyInstanceUID = s.uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = s.time
    ds.SeriesTime = _add_minutes(s.time, 2)
    ds.AccessionNumber = s.accession
    ds.StudyID = s.study_id
    ds.StudyDescription = spec.study_description
    ds.ReferringPhysicianName = _pn(p.referring, "DR")
    ds.PerformingPhysicianName = _pn(s.performing, "DR")
    ds.OperatorsName = _pn(s.operator)
    ds.InstitutionName = p.institution
    ds.InstitutionAddress = p.institution_address
    ds.StationName = s.station
    ds.DeviceSerialNumber = s.serial
    ds.Manufacturer = "Radflow Phantom Works"
    ds.ManufacturerModelName = f"Synthetic {spec.dicom_modality}"
    ds.SoftwareVersions = "radflow-demo 1"
    request = Dataset()
    request.AccessionNumber = s.accession
    request.RequestedProcedureID = s.requested_procedure
    request.ScheduledProcedureStepID = f"SPS{s.requested_procedure[2:]}"
    request.RequestedProcedureDescription = f"{spec.study_description} for {_pn(p.name)}"
    ds.RequestAttributesSequence = Sequence([request])


def _series_module(ds: Dataset, spec: ModalitySpec, p: Patient, s: Study) -> None:
    ds.Modality = p.transport if spec.name == "xray" else spec.dicom_modality
    ds.SeriesInstanceUID = s.series_uid
    ds.FrameOfReferenceUID = s.frame_uid
    ds.SeriesNumber = 1 + s.index
    ds.SeriesDescription = SERIES_DESCRIPTIONS[spec.name]
    ds.BodyPartExamined = spec.body_part
    ds.PositionReferenceIndicator = ""


def _image_module(
    ds: Dataset, spec: ModalitySpec, pixels: Array, k: int, z_mm: float, photometric: str
) -> None:
    size = pixels.shape[0]
    spacing = f"{spec.fov_mm / size:.6g}"
    ds.InstanceNumber = k + 1
    ds.AcquisitionNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"] + (["AXIAL"] if spec.name != "xray" else [])
    ds.PixelSpacing = [spacing, spacing]
    half = spec.fov_mm / 2
    ds.ImagePositionPatient = [f"{-half:.6g}", f"{-half:.6g}", f"{z_mm:.6g}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()


def _modality_module(ds: Dataset, spec: ModalitySpec, p: Patient, z_mm: float) -> None:
    """The few acquisition attributes readers look at per modality."""
    if spec.name == "ct":
        ds.SliceThickness = "2.5"
        ds.SliceLocation = f"{z_mm:.6g}"
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.PatientPosition = "FFS"
    elif spec.name == "mri":
        ds.SliceThickness = "5"
        ds.SpacingBetweenSlices = "6"
        ds.SliceLocation = f"{z_mm:.6g}"
        ds.MagneticFieldStrength = "1.5" if p.index % 2 else "3"
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "SP", "2D"
        ds.RepetitionTime, ds.EchoTime = "550", "12"
        ds.ContrastBolusAgent = "GADOLINIUM"
        ds.PatientPosition = "HFS"
    else:
        spacing = f"{spec.fov_mm / ds.Rows:.6g}"
        ds.ImagerPixelSpacing = [spacing, spacing]
        ds.ViewPosition = "PA"
        ds.KVP = "110"
        ds.WindowCenter, ds.WindowWidth = "2048", "4096"
        if p.transport == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"


def _private_block(ds: Dataset, p: Patient) -> None:
    """A vendor-style private block that leaks the patient's name and ID."""
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", _pn(p.name))
    block.add_new(0x02, "LO", p.patient_id)


def _dicom_bytes(
    spec: ModalitySpec, p: Patient, s: Study, k: int, sop_uid: str, pixels: Array, z_mm: float
) -> bytes:
    sop_class = (
        ComputedRadiographyImageStorage
        if spec.name == "xray" and p.transport == "CR"
        else spec.sop_class
    )
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    _patient_module(ds, p, s)
    _study_module(ds, spec, p, s)
    _series_module(ds, spec, p, s)
    ds.AcquisitionTime = ds.ContentTime = _add_minutes(s.time, 3 + k * 0.5)
    ds.ImageComments = f"Slice {k + 1} of {p.name[1]} {p.name[0]}, {p.patient_id}"
    _image_module(ds, spec, pixels, k, z_mm, s.photometric)
    _modality_module(ds, spec, p, z_mm)
    _private_block(ds, p)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------- mask files


def _nifti_bytes(mask: Array) -> bytes:
    """Gzipped NIfTI with mtime 0 and no file name in the gzip header (byte-identical)."""
    image = nib.Nifti1Image(mask.astype(np.uint8), np.eye(4))
    image.set_data_dtype(np.uint8)
    return gzip.compress(image.to_bytes(), mtime=0)


def _png_bytes(mask: Array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((mask > 0).astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- generation

Renderer = Callable[[Rng, int, dict, dict | None, float], tuple[Array, Array | None]]
_PHANTOMS: dict[str, tuple[Callable, Callable, Renderer]] = {
    "mri": (_mri_anatomy, _mri_lesion, _render_mri),
    "ct": (_ct_anatomy, _ct_lesion, _render_ct),
    "xray": (_xray_anatomy, _xray_lesion, _render_xray),
}


def _xray_transport(rng: Rng, patients: list[Patient]) -> None:
    """About 30% of X-ray patients are CR; some CR studies are stored MONOCHROME1."""
    n_cr = min(len(patients), max(1, round(0.3 * len(patients))))
    for n, i in enumerate(rng.choice(len(patients), size=n_cr, replace=False)):
        patient = patients[int(i)]
        patient.transport = "CR"
        for s in patient.studies:
            if rng.uniform() < 0.6 or (n == 0 and s.index == 0):
                s.photometric = "MONOCHROME1"


def _plan(mod: str, mod_index: int, params: dict[str, Any], seed: int) -> list[Patient]:
    rng = np.random.default_rng([seed, mod_index])
    patients = _patients(rng, mod_index, params["patients_per_modality"])
    counts = _study_counts(rng, len(patients), params["max_studies_per_patient"])
    labels = _study_labels(rng, counts, params["lesion_fraction"])
    for p, row in zip(patients, labels, strict=True):
        p.studies = _studies(np.random.default_rng([seed, mod_index, p.index, 1]), p, row, mod)
    if mod == "xray":
        _xray_transport(rng, patients)
    return patients


def _write_patient(
    out_dir: Path, mod: str, mod_index: int, p: Patient, params: dict[str, Any], seed: int
) -> list[dict[str, str]]:
    """Render and write every image of one patient; return its labels rows."""
    spec, (anatomy, lesion_of, render) = SPECS[mod], _PHANTOMS[mod]
    size, n_images = params["image_size"], params["images_per_study"]
    rng = np.random.default_rng([seed, mod_index, p.index, 2])
    base = anatomy(rng, size)
    rows = []
    for s in p.studies:
        anat = {**base, "pose": _jitter_pose(rng, base["pose"], 0.015)}
        lesion = lesion_of(rng, anat, size) if s.positive else None
        for k in range(n_images):
            z = _slice_offset(k, n_images)
            pixels, mask = render(rng, size, anat, lesion, z)
            if s.photometric == "MONOCHROME1":  # stored inverted: readers must honour it
                pixels = (2**spec.bits_stored - 1) - pixels
            stem = f"{p.folder}/study{s.index + 1}/series1/IMG{k + 1:03d}"
            z_mm = (k - (n_images - 1) / 2) * spec.slice_gap_mm
            data = _dicom_bytes(spec, p, s, k, _uid(rng), pixels, z_mm)
            atomic_write_bytes(out_dir / mod / f"{stem}.dcm", data)
            mask_rel = ""
            if mask is not None:
                mask_rel = f"masks/{mod}/{stem}{spec.mask_ext}"
                blob = _png_bytes(mask) if mod == "xray" else _nifti_bytes(mask)
                atomic_write_bytes(out_dir / mask_rel, blob)
            label = spec.labels[int(s.positive)]
            rows.append({"path": f"{mod}/{stem}.dcm", "label": label, "mask": mask_rel})
    return rows


def _remove_stale(out_dir: Path, mod: str, keep: set[str]) -> None:
    """Delete demo files of an earlier, larger run (only our own naming pattern, inside out_dir)."""
    patterns = [
        (out_dir / mod, "pat*/study*/series*/IMG*.dcm"),
        (out_dir / "masks" / mod, "pat*/study*/series*/IMG*.*"),
    ]
    for root, pattern in patterns:
        for path in sorted(root.glob(pattern)) if root.is_dir() else []:
            if path.relative_to(out_dir).as_posix() not in keep:
                path.unlink()
                _remove_empty_parents(path.parent, root)


def _remove_empty_parents(folder: Path, root: Path) -> None:
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def generate_cohort(out_dir: Path, demo_params: Mapping[str, Any], seed: int) -> pd.DataFrame:
    """Write the demo DICOM cohort, its masks and labels.csv under out_dir; return the labels.

    Paths in the table are relative to out_dir with POSIX separators; `mask` is empty for
    lesion-free images. Same seed and params give byte-identical files.
    """
    out_dir = Path(out_dir)
    params = check_params(demo_params)
    rows: list[dict[str, str]] = []
    for mod_index, mod in enumerate(SPECS):
        for patient in _plan(mod, mod_index, params, seed):
            rows += _write_patient(out_dir, mod, mod_index, patient, params, seed)
    keep = {r["path"] for r in rows} | {r["mask"] for r in rows if r["mask"]}
    for mod in SPECS:
        _remove_stale(out_dir, mod, keep)
    labels = pd.DataFrame(rows, columns=LABEL_COLUMNS).sort_values("path", ignore_index=True)
    atomic_write_text(out_dir / "labels.csv", labels.to_csv(index=False))
    return labels

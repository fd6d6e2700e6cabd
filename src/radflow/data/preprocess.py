"""Preprocess: per-modality intensity normalisation to [0, 1], square resize, uint8 arrays.

The same `prepare_image` runs in training (via the cached arrays) and in `radflow predict`,
so new images meet the model exactly as the training images did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from monai.transforms import Resize, SpatialPad

from radflow.core.imaging import first_line
from radflow.core.manifest import Quarantined

STAGE = "preprocess"

PixelLoader = Callable[[str, str], np.ndarray]
MaskLoader = Callable[[str], np.ndarray]


def normalise(pixels: np.ndarray, modality: str, pp: dict[str, Any]) -> np.ndarray:
    """CT: the HU window from params; MRI and X-ray: robust percentile scaling."""
    if modality == "ct":
        centre, width = pp["ct_window"]["center"], pp["ct_window"]["width"]
        low, high = centre - width / 2, centre + width / 2
    else:
        low, high = np.percentile(pixels, pp["percentiles"][modality])
    if high <= low:
        return np.zeros_like(pixels, dtype=np.float32)
    return np.clip((pixels - low) / (high - low), 0.0, 1.0).astype(np.float32)


def to_square(array: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Pad to a square (keeps the aspect ratio), then resize to size x size."""
    side = max(array.shape)
    tensor = torch.as_tensor(array[None], dtype=torch.float32)
    tensor = SpatialPad(spatial_size=(side, side), mode="constant")(tensor)
    resize = Resize(spatial_size=(size, size), mode=mode, anti_aliasing=(mode != "nearest"))
    return np.asarray(resize(tensor))[0]


def prepare_image(pixels: np.ndarray, modality: str, pp: dict[str, Any]) -> np.ndarray:
    unit = to_square(normalise(pixels, modality, pp), pp["image_size"], "area")
    return np.round(np.clip(unit, 0, 1) * 255).astype(np.uint8)


def prepare_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return (to_square(mask.astype(np.float32), size, "nearest") > 0.5).astype(np.uint8)


def box_to_processed(box: str, shape: tuple[int, ...], size: int) -> str:
    """A source-pixel box "x0 y0 x1 y1" mapped through to_square (centred pad, resize)."""
    if not box:
        return ""
    x0, y0, x1, y1 = (float(v) for v in box.split())
    rows, cols = shape[:2]
    side = max(rows, cols)
    pad_x, pad_y, scale = (side - cols) // 2, (side - rows) // 2, size / side
    mapped = [(x + pad_x) * scale for x in (x0, x1)], [(y + pad_y) * scale for y in (y0, y1)]
    (mx0, mx1), (my0, my1) = mapped
    return " ".join(f"{min(max(v, 0.0), size):.2f}" for v in (mx0, my0, mx1, my1))


class Processed(NamedTuple):
    """One modality's arrays, their index table (one row per array slot) and the manifest
    rows that could not be prepared (rows in = index rows + quarantined)."""

    images: np.ndarray
    masks: np.ndarray
    index: pd.DataFrame
    quarantine: list[Quarantined]


def build_arrays(
    rows: pd.DataFrame, pp: dict[str, Any], load_pixels: PixelLoader, load_mask: MaskLoader
) -> Processed:
    """Images, masks and the index table for one modality's manifest rows; a row whose image
    or mask cannot be read or prepared is quarantined with the reason, and the rest go on."""
    size = pp["image_size"]
    images = np.zeros((len(rows), size, size), dtype=np.uint8)
    masks = np.zeros_like(images)
    boxes = [""] * len(rows)
    kept: list[int] = []
    quarantine: list[Quarantined] = []
    for i, row in enumerate(rows.itertuples(index=False)):
        slot = len(kept)
        try:
            boxes[slot] = _prepare_row(row, pp, load_pixels, load_mask, images[slot], masks[slot])
        except MemoryError:
            raise
        except Exception as exc:  # this row's file: quarantined, the others go on
            masks[slot] = 0
            reason = str(exc) if isinstance(exc, ValueError) else first_line(exc)
            quarantine.append(Quarantined(str(row.source_path), STAGE, reason))
            continue
        kept.append(i)
    index = rows.iloc[kept].reset_index(drop=True)
    index["array_index"] = np.arange(len(kept))
    index["has_mask"] = (index["mask_path"] != "").astype(int).to_numpy()
    index["box"] = boxes[: len(kept)]
    # the leading slots: views, not copies (the arrays are the stage's largest memory)
    return Processed(images[: len(kept)], masks[: len(kept)], index, quarantine)


def _prepare_row(
    row: Any,
    pp: dict[str, Any],
    load_pixels: PixelLoader,
    load_mask: MaskLoader,
    image_out: np.ndarray,
    mask_out: np.ndarray,
) -> str:
    """Fill one image slot (and its mask); returns the box mapped onto the array's grid."""
    pixels = load_pixels(row.source_path, row.format)
    image_out[:] = prepare_image(pixels, row.modality, pp)
    if row.mask_path:
        mask = load_mask(row.mask_path)
        if mask.shape != pixels.shape:
            raise ValueError(
                f"mask {row.mask_path} has shape {mask.shape} but its image "
                f"{row.source_path} has {pixels.shape}; masks must share the pixel grid"
            )
        mask_out[:] = prepare_mask(mask, pp["image_size"])
    return box_to_processed(getattr(row, "box", ""), pixels.shape, pp["image_size"])

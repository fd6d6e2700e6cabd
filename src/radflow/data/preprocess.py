"""Preprocess: per-modality intensity normalisation to [0, 1], square resize, uint8 arrays.

The same `prepare_image` runs in training (via the cached arrays) and in `radflow predict`,
so new images meet the model exactly as the training images did.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.transforms import Resize, SpatialPad

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


def build_arrays(
    rows: pd.DataFrame, pp: dict[str, Any], load_pixels: PixelLoader, load_mask: MaskLoader
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Images, masks and the index table for one modality's manifest rows."""
    size = pp["image_size"]
    images = np.zeros((len(rows), size, size), dtype=np.uint8)
    masks = np.zeros_like(images)
    boxes = [""] * len(rows)
    for i, row in enumerate(rows.itertuples(index=False)):
        pixels = load_pixels(row.source_path, row.format)
        images[i] = prepare_image(pixels, row.modality, pp)
        boxes[i] = box_to_processed(getattr(row, "box", ""), pixels.shape, size)
        if row.mask_path:
            mask = load_mask(row.mask_path)
            if mask.shape != pixels.shape:
                raise ValueError(
                    f"mask {row.mask_path} has shape {mask.shape} but its image "
                    f"{row.source_path} has {pixels.shape}; masks must share the pixel grid"
                )
            masks[i] = prepare_mask(mask, size)
    index = rows.copy()
    index["array_index"] = np.arange(len(rows))
    index["has_mask"] = (rows["mask_path"] != "").astype(int).to_numpy()
    index["box"] = boxes
    return images, masks, index

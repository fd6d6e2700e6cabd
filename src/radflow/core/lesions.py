"""Lesion geometry: the mask or box each image's lesion occupies, on the processed grid.

Training (lesion attention) and explanation scoring (pointing game, energy) both read it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def boxes_to_mask(shape: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    """Binary (H, W) mask of boxes given as rows (centre x, centre y, width, height) in pixels
    of the same grid (the Cheng MRI labels' box_x, box_y, box_w, box_h after scaling)."""
    mask = np.zeros(shape, dtype=bool)
    for cx, cy, w, h in np.asarray(boxes, dtype=float).reshape(-1, 4):
        x0, x1 = int(np.floor(cx - w / 2)), int(np.ceil(cx + w / 2))
        y0, y1 = int(np.floor(cy - h / 2)), int(np.ceil(cy + h / 2))
        mask[max(y0, 0) : max(min(y1, shape[0]), 0), max(x0, 0) : max(min(x1, shape[1]), 0)] = True
    return mask


def lesions_from_index(masks: np.ndarray, index: pd.DataFrame) -> dict[int, np.ndarray]:
    """Per array index, the lesion an explanation should point at: the mask when the image
    has a non-empty one, else its box (processed "x0 y0 x1 y1", from data.boxes)."""
    lesions: dict[int, np.ndarray] = {}
    boxes = index["box"] if "box" in index.columns else pd.Series("", index=index.index)
    for i, has_mask, box in zip(index["array_index"], index["has_mask"], boxes, strict=True):
        i = int(i)
        if int(has_mask) and masks[i].any():
            lesions[i] = masks[i] > 0
        elif isinstance(box, str) and box:
            x0, y0, x1, y1 = (float(v) for v in box.split())
            centre_box = [[(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]]
            lesions[i] = boxes_to_mask(masks.shape[1:], np.array(centre_box))
    return lesions


def lesion_maps(masks: np.ndarray, index: pd.DataFrame) -> np.ndarray:
    """:func:`lesions_from_index` as 0/1 uint8 maps beside the images (zero where an image
    has no lesion): what lesion attention training reads."""
    maps = np.zeros(masks.shape, dtype=np.uint8)
    for i, lesion in lesions_from_index(masks, index).items():
        maps[i] = lesion
    return maps

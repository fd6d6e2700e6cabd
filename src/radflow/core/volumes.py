"""Slices in their volumes: which images lie next to each other, for 2.5-D input.

A 2-D network that also sees the slice below and above (train.segmenter.context_slices)
tells a lesion from a look-alike by whether it continues through the volume. A volume is one
patient's series (patient_key, series_key); slices are ordered by `slice_position`, and the
neighbour of the first or last slice is that slice itself.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


class SlicePositionError(ValueError):
    """Neighbouring slices were asked for, but some images have no slice position."""


def neighbours(index: pd.DataFrame, context: int) -> np.ndarray:
    """(N, 2 * context + 1) array rows per image: the `context` slices below it, itself, the
    `context` above, within its volume (clamped at the volume's ends).

    `index` has one row per image (in array order) with patient_key, series_key and
    slice_position; with context 0 each image is its own and only neighbour."""
    n = len(index)
    if context == 0:
        return np.arange(n)[:, None]
    position = pd.to_numeric(index["slice_position"].astype(str).str.strip(), errors="coerce")
    missing = np.flatnonzero(position.isna().to_numpy())
    if len(missing):
        first = index.iloc[missing[0]]
        raise SlicePositionError(
            f"train.segmenter.context_slices is {context}, but {len(missing)} of {n} images "
            f"have no slice position (e.g. {first.get('source_path', missing[0])}): name the "
            "CSV column with slice numbers in data.columns.slice, use DICOM series with "
            "ImagePositionPatient or InstanceNumber, or set context_slices to 0"
        )
    frame = pd.DataFrame(
        {
            "volume": index["patient_key"].astype(str) + "\0" + index["series_key"].astype(str),
            "position": position.to_numpy(float),
            "row": np.arange(n),
        }
    )
    out = np.empty((n, 2 * context + 1), dtype=np.int64)
    for _, volume in frame.groupby("volume", sort=False):
        ordered = volume.sort_values(["position", "row"], kind="stable")["row"].to_numpy()
        out[ordered] = ordered[window(len(ordered), context)]
    return out


def window(n: int, context: int) -> np.ndarray:
    """(n, 2 * context + 1) places around each of n slices in order, clamped at the ends."""
    return np.clip(np.arange(n)[:, None] + np.arange(-context, context + 1), 0, max(n - 1, 0))


def stack(images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W) images as (M, C, H, W) model input from (M, C) neighbour rows; one
    column (no context) gives the plain (M, H, W) images."""
    return images[rows[:, 0]] if rows.shape[1] == 1 else images[rows]

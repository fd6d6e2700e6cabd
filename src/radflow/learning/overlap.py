"""Mask overlap per image, MONAI's definitions: the one Dice (and IoU) that the segmenter's
per-epoch validation and the evaluation stage both use.

Here, below evaluation, because training picks its best epoch by this Dice and learning
may not import evaluation. Empty-truth rule (MONAI ``ignore_empty=False``): truth and
prediction both empty -> 1.0; truth empty but prediction not -> 0.0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.metrics import compute_dice, compute_iou


def _per_image(fn: Callable[..., torch.Tensor], pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """One score per image from a MONAI metric on (N, 1, H, W) foreground channels."""
    if len(pred) == 0:
        return np.empty(0)
    y_pred = torch.from_numpy(np.asarray(pred, dtype=bool)[:, None]).float()
    y = torch.from_numpy(np.asarray(true, dtype=bool)[:, None]).float()
    return fn(y_pred, y, include_background=True, ignore_empty=False)[:, 0].numpy()


def dice_per_image(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Dice of each (H, W) binary mask pair of (N, H, W) stacks (MONAI compute_dice)."""
    return _per_image(compute_dice, pred, true)


def iou_per_image(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """IoU (Jaccard) of each (H, W) binary mask pair of (N, H, W) stacks (MONAI compute_iou)."""
    return _per_image(compute_iou, pred, true)


def mean_dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean Dice over images (the segmenter's validation metric); NaN for no images."""
    dice = dice_per_image(pred, true)
    return float(dice.astype(np.float64).mean()) if len(dice) else float("nan")

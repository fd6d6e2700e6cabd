"""Model builders and the on-disk model directory (model.pt + meta.json + history.csv)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import timm
import torch
from monai.networks.nets import UNet

from radflow import weights as weights_mod
from radflow.fileio import atomic_write_bytes, atomic_write_text, read_json, write_json

MEAN = 0.5  # tf_efficientnet_lite0 normalisation: (x - 0.5) / 0.5
STD = 0.5


def build_classifier(
    backbone: str, weights: str | None, num_classes: int
) -> tuple[torch.nn.Module, str]:
    """A timm classifier on one grey channel; weights=None builds an untrained net."""
    if weights is None:
        model = timm.create_model(backbone, pretrained=False, num_classes=num_classes, in_chans=1)
        return model, "none (architecture only)"
    path, origin = weights_mod.resolve(backbone, weights)
    model = timm.create_model(
        backbone,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
        num_classes=num_classes,
        in_chans=1,
    )
    return model, origin


def build_segmenter(channels: list[int]) -> torch.nn.Module:
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=tuple(channels),
        strides=tuple([2] * (len(channels) - 1)),
        num_res_units=1,
    )


def save_model(
    out_dir: Path, state: dict[str, torch.Tensor], meta: dict[str, Any], history: pd.DataFrame
) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(out_dir / "model.pt", buffer.getvalue())
    atomic_write_text(out_dir / "history.csv", history.to_csv(index=False))
    write_json(out_dir / "meta.json", meta)


def load_model(model_dir: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained network (eval mode, CPU) and its meta.json."""
    model_dir = Path(model_dir)
    meta_path = model_dir / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{model_dir} is not a radflow model directory (no meta.json)")
    meta = read_json(meta_path)
    if not meta.get("trained", True):
        raise ValueError(f"{model_dir} holds no trained model: {meta.get('reason', '')}")
    if meta["task"] == "classifier":
        model, _ = build_classifier(meta["arch"], None, len(meta["classes"]))
    else:
        model = build_segmenter(meta["channels"])
    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), meta


def normalise_batch(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, 1, H, W) -> float (B, 1, H, W) normalised for the networks."""
    x = images_uint8.float() / 255.0
    if x.ndim == 3:
        x = x[:, None]
    return (x - MEAN) / STD

"""The model registry: one builder for classifiers (timm backbones), one for segmenters (the
architectures of radflow.learning.networks), and the on-disk model directory (model.pt +
meta.json + the training history in DVCLive's format, radflow.learning.history)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import timm
import torch

from radflow.core.fileio import atomic_write_bytes, read_json, write_json
from radflow.learning import history as history_mod
from radflow.learning import networks
from radflow.learning import weights as weights_mod

MEAN = 0.5  # tf_efficientnet_lite0 normalisation: (x - 0.5) / 0.5
STD = 0.5


def build_classifier(
    backbone: str,
    weights: str | None,
    num_classes: int,
    allow_download: bool = False,
    output_stride: int = 32,
) -> tuple[torch.nn.Module, str]:
    """A timm classifier on one grey channel; weights=None builds an untrained net.

    output_stride 16 dilates the last stages instead of striding (same weights): the
    feature map, and so Grad-CAM and the lesion-attention map, is twice as fine."""
    shape = {"num_classes": num_classes, "in_chans": 1}
    if output_stride != 32:  # not every timm model takes the argument
        shape["output_stride"] = output_stride
    if weights is None:
        model = _create(backbone, pretrained=False, **shape)
        return model, "none (architecture only)"
    if weights == weights_mod.HUB:
        origin = weights_mod.check_hub_allowed(backbone, allow_download)
        try:
            model = _create(backbone, pretrained=True, **shape)
        except ValueError:
            raise
        except Exception as exc:  # timm / huggingface_hub raise many kinds
            raise weights_mod.WeightsError(
                f"could not get {backbone} weights from the Hugging Face hub: {exc}"
            ) from exc
        return model, origin
    path, origin = weights_mod.resolve(backbone, weights)
    model = _create(backbone, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **shape)
    return model, origin


def _create(backbone: str, **kwargs: Any) -> torch.nn.Module:
    """timm.create_model, with a backbone that cannot take output_stride named as such."""
    try:
        return timm.create_model(backbone, **kwargs)
    except TypeError as exc:
        if "output_stride" not in str(exc):
            raise
        raise ValueError(
            f"train.classifier.output_stride {kwargs['output_stride']}: {backbone} cannot dilate "
            "its last stages (timm models of the CNN families can, e.g. EfficientNet, ResNet); "
            f"set it to 32 ({exc})"
        ) from exc


def linear_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The classifier's last layer when the head is global average pooling then one linear
    layer (EfficientNet, ResNet): the class activation map is then that layer applied at
    every position of forward_features, which lesion attention training needs."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    probe_ok = False
    if isinstance(head, torch.nn.Linear) and hasattr(model, "forward_head"):
        features = torch.randn(2, head.in_features, 3, 3, device=head.weight.device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            probe_ok = torch.allclose(
                model.forward_head(features), head(features.mean((2, 3))), atol=1e-5
            )
        model.train(was_training)
    if not probe_ok:
        raise ValueError(
            f"{type(model).__name__}: train.classifier.lesion_attention needs a backbone whose "
            "head is global average pooling then one linear layer (e.g. tf_efficientnet_lite0, "
            "resnet50); set lesion_attention to 0 for this backbone"
        )
    return head


def build_segmenter(
    cfg: Mapping[str, Any] | list[int], pretrained: bool = True
) -> tuple[torch.nn.Module, str]:
    """The segmenter named by cfg["arch"] (train.segmenter or meta.json; default unet) and
    where its weights came from; a list is the channels of the plain U-Net.

    pretrained=False builds the architecture only (to load a trained state dict into).
    """
    if isinstance(cfg, list):
        cfg = {"arch": "unet", "channels": cfg}
    elif cfg.get("arch") == "monai.UNet":  # meta.json of models trained before the registry
        cfg = {**cfg, "arch": "unet"}
    arch = cfg.get("arch", "unet")
    if arch not in networks.SEGMENTERS:
        raise ValueError(
            f"train.segmenter.arch {arch!r} is not one of {', '.join(networks.SEGMENTERS)}"
        )
    return networks.SEGMENTERS[arch](cfg, pretrained)


def save_model(
    out_dir: Path, state: dict[str, torch.Tensor], meta: dict[str, Any], history: pd.DataFrame
) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(out_dir / "model.pt", buffer.getvalue())
    kept = {key: meta[key] for key in ("best_epoch", "best_val_metric") if key in meta}
    history_mod.write(out_dir, history, kept)
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
        stride = meta.get("output_stride", 32)
        model, _ = build_classifier(meta["arch"], None, len(meta["classes"]), output_stride=stride)
    else:
        model, _ = build_segmenter(meta, pretrained=False)
    state = torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return fast_layout(model).eval(), meta


def normalise_batch(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, C, H, W) -> float (B, C, H, W) normalised for the networks."""
    x = images_uint8.float() / 255.0
    if x.ndim == 3:
        x = x[:, None]
    return ((x - MEAN) / STD).to(memory_format=torch.channels_last)


def fast_layout(model: torch.nn.Module) -> torch.nn.Module:
    """Channels-last weights: with channels-last inputs (normalise_batch) the oneDNN
    convolutions run about 1.7x faster on CPU for Lite0 training; same numbers."""
    return model.to(memory_format=torch.channels_last)

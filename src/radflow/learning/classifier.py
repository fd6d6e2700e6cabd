"""The classifier task: fine-tune a timm classifier on the cached arrays of one modality
through the engine (optionally keeping its class evidence on the lesion), predict with it,
and the train stage that fits its decision (temperature, threshold) on the validation split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from radflow.core import lesions as lesions_mod
from radflow.core import params as params_mod
from radflow.learning import calibration, engine, pipeline
from radflow.learning.models import build_classifier, linear_head, normalise_batch

log = logging.getLogger(__name__)


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Validation AUC (one-vs-rest for more than two classes); NaN with one class present."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", labels=range(probs.shape[1])))


def outside_lesion_fraction(
    features: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """The share of the true class's positive activation map (CAM: the linear head applied at
    every feature position) that lies outside the lesion, averaged over the images that have
    a lesion; 0 when none has. Penalising it teaches the network to decide from the lesion."""
    cam = torch.relu(torch.einsum("bchw,bc->bhw", features.float(), head.weight[targets].float()))
    inside = F.adaptive_avg_pool2d(masks.float(), cam.shape[-2:])[:, 0]
    has_lesion = masks.flatten(1).amax(1) > 0
    if not bool(has_lesion.any()):
        return cam.sum() * 0.0
    outside = (cam * (1 - inside)).flatten(1).sum(1) / (cam.flatten(1).sum(1) + 1e-6)
    return outside[has_lesion].mean()


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    num_classes: int,
    train_params: dict[str, Any],
    seed: int,
    checkpoint: Path | None = None,
    lesions: np.ndarray | None = None,
    num_workers: int = 0,
) -> tuple[engine.TrainResult, str]:
    """Fine-tune from pretrained weights; returns the result and the weights' origin.

    lesions: 0/1 uint8 (N, H, W) beside images (all zero where an image has none), used
    when train.classifier.lesion_attention > 0 to keep the class evidence on the lesion.
    num_workers: DataLoader worker processes (train.num_workers; 0 = the main process)."""
    engine.seed_everything(seed)
    cfg = train_params["classifier"]
    attention = float(cfg["lesion_attention"])
    if attention and (lesions is None or not lesions[train_idx].any()):
        raise ValueError(
            "train.classifier.lesion_attention is above 0 but no training image has a lesion "
            "mask or box (data.boxes, or the mask column); set it to 0 or give the lesions"
        )
    device = engine.select_device(train_params["device"])
    model, origin = build_classifier(
        cfg["backbone"],
        cfg["weights"],
        num_classes,
        cfg["allow_download"],
        cfg["output_stride"],
    )
    model.to(device)
    head = linear_head(model) if attention else None
    y_train = torch.from_numpy(labels[train_idx]).long()
    counts = torch.bincount(y_train, minlength=num_classes).float().clamp(min=1)
    weight = (counts.sum() / (num_classes * counts)).to(device)
    criterion = torch.nn.CrossEntropyLoss(weight=weight)
    transform = pipeline.augmentations(train_params["augment"], with_mask=bool(attention))
    dataset = pipeline.ArrayDataset(
        images, train_idx, transform, masks=lesions if attention else None, labels=labels
    )

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x, y = pipeline.to_model(batch["image"]).to(device), batch["label"].to(device)
        if head is None:
            return criterion(model(x), y)
        features = model.forward_features(x)
        logits = model.forward_head(features)
        outside = outside_lesion_fraction(features, head, y, batch["mask"].to(device))
        return criterion(logits, y) + attention * outside

    x_val, y_val = torch.from_numpy(images[val_idx]), labels[val_idx]

    def validate() -> tuple[float, float]:
        probs, loss = _predict(model, x_val, device, torch.from_numpy(y_val).long(), criterion)
        return loss, roc_auc(y_val, probs)

    data = [images[train_idx], labels[train_idx], val_idx]
    if attention:
        data.append(lesions[train_idx])
    key = engine.fingerprint(train_params | {"num_workers": num_workers}, seed, *data)
    result = engine.fit(
        model, dataset, step, validate, cfg, device, seed, checkpoint, key, num_workers
    )
    return result, origin


@torch.no_grad()
def _predict(
    model: torch.nn.Module,
    images: torch.Tensor,
    device: torch.device,
    targets: torch.Tensor,
    criterion: torch.nn.Module,
) -> tuple[np.ndarray, float]:
    logits = predict_logits(model, images.numpy())
    loss = criterion.cpu()(torch.from_numpy(logits), targets).item()
    criterion.to(device)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy(), loss


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module, images: np.ndarray, batch: int = 64, tta: bool = False
) -> np.ndarray:
    """Logits (on the CPU) for uint8 (N, H, W) arrays, computed on the model's device; tta
    averages with the mirrored image."""
    model.eval()
    device = next(model.parameters()).device
    outs = []
    for i in range(0, len(images), batch):
        x = normalise_batch(torch.from_numpy(images[i : i + batch])).to(device)
        logits = model(x)
        if tta:
            logits = (logits + model(torch.flip(x, dims=[-1]))) / 2
        outs.append(logits.float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0))


def predict_probs(
    model: torch.nn.Module,
    images: np.ndarray,
    batch: int = 64,
    temperature: float = 1.0,
    tta: bool = False,
) -> np.ndarray:
    """Class probabilities (temperature-scaled softmax) for uint8 (N, H, W) arrays."""
    logits = predict_logits(model, images, batch, tta)
    return calibration.softmax(logits, temperature) if len(logits) else logits


def decide(logits: np.ndarray, labels: np.ndarray, decision: dict[str, Any]) -> dict[str, Any]:
    """Temperature and (binary) operating threshold fitted on validation logits."""
    temperature = (
        calibration.fit_temperature(logits, labels) if decision["temperature_scaling"] else 1.0
    )
    probs = calibration.softmax(logits, temperature)
    out: dict[str, Any] = {
        "temperature": temperature,
        "val_ece_uncalibrated": calibration.expected_calibration_error(
            calibration.softmax(logits), labels
        ),
        "val_ece": calibration.expected_calibration_error(probs, labels),
        "tta": bool(decision["tta"]),
    }
    if logits.shape[1] == 2:
        policy = decision["threshold"]
        out["threshold_policy"] = policy
        target = decision["target_specificity" if policy == "specificity" else "target_sensitivity"]
        out["threshold"] = calibration.choose_threshold(probs[:, 1], labels == 1, policy, target)
    return out


def train_stage(
    images: np.ndarray,
    masks: np.ndarray,
    index: pd.DataFrame,
    split: pd.DataFrame,
    params: dict[str, Any],
    modality: str,
    checkpoint: Path | None = None,
) -> engine.TrainedModel:
    """The train stage for the classifier: fit on the split's train rows, keep the best
    epoch by validation AUC, fit the decision on the validation rows; meta.json as data."""
    train_idx = pipeline.split_indices(split, "train")
    val_idx = pipeline.split_indices(split, "val")
    classes = params_mod.classes_for(params, modality, list(index["label"]))
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[lab] for lab in index["label"]])
    cfg = params["train"]["classifier"]
    lesions = None
    if cfg["lesion_attention"]:
        lesions = lesions_mod.lesion_maps(masks, index)
    result, origin = train_classifier(
        images, labels, train_idx, val_idx, len(classes), params["train"], params["seed"],
        checkpoint, lesions, num_workers=params["train"]["num_workers"],
    )  # fmt: skip
    stride = cfg["output_stride"]
    best, _ = build_classifier(cfg["backbone"], None, len(classes), output_stride=stride)
    best.load_state_dict(result.state)
    decision = params["train"]["decision"]
    val_logits = predict_logits(best, images[val_idx], tta=decision["tta"])
    meta = engine.base_meta("classifier", modality, params, len(train_idx), len(val_idx))
    meta |= {"arch": cfg["backbone"], "classes": classes, "weights_origin": origin}
    meta |= {"lesion_attention": float(cfg["lesion_attention"])}
    meta |= {"output_stride": stride}
    # the class mix the calibrated probabilities hold for, one pseudo-count per class (no
    # class at 0): what `radflow predict --adapt-prevalence` reweights from
    counts = np.bincount(labels[val_idx], minlength=len(classes)) + 1.0
    meta |= {"val_prior": (counts / counts.sum()).tolist()}
    meta |= decide(val_logits, labels[val_idx], decision)
    meta |= result.summary()
    return engine.TrainedModel(result.state, meta, result.history)

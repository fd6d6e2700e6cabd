"""Train: fine-tune a timm classifier on the cached arrays of one modality, and the epoch loop
the segmenter (radflow.segmentation) shares.

The best epoch (by validation AUC, or Dice for the segmenter) is kept as a deep copy of the
weights, so later epochs can never overwrite it.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
)
from monai.utils import convert_to_tensor, set_determinism
from sklearn.metrics import roc_auc_score

from radflow.core.fileio import atomic_write
from radflow.learning.models import build_classifier, fast_layout, linear_head, normalise_batch

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    state: dict[str, torch.Tensor]
    history: pd.DataFrame
    best_epoch: int
    best_metric: float
    device: str


def with_masks(indices: np.ndarray | pd.Series, index: pd.DataFrame) -> np.ndarray:
    """The array indices whose image has a mask file: the segmenter learns only from those."""
    has_mask = index.set_index("array_index")["has_mask"].astype(int)
    indices = np.asarray(indices)
    return indices[has_mask.loc[indices].to_numpy() == 1]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed)


def select_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but no CUDA device is visible; use auto or cpu")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def augmentations(aug: dict[str, Any], with_mask: bool) -> Compose:
    """MONAI dictionary transforms from params; the mask moves with the image."""
    keys = ["image", "mask"] if with_mask else ["image"]
    modes = ("bilinear", "nearest") if with_mask else ("bilinear",)
    degrees = math.radians(aug.get("rotate_degrees", 0))
    zoom = aug.get("zoom", [1.0, 1.0])
    transforms = [
        RandFlipd(keys=keys, prob=aug.get("flip_prob", 0.0), spatial_axis=1),
        RandAffined(
            keys=keys,
            prob=0.8,
            rotate_range=(degrees,),
            scale_range=((zoom[0] - 1, zoom[1] - 1),),
            translate_range=(4, 4),
            mode=modes,
            padding_mode="zeros",
        ),
        RandAdjustContrastd(
            keys=["image"], prob=0.5, gamma=tuple(aug.get("contrast_gamma", [1, 1]))
        ),
        RandGaussianNoised(keys=["image"], prob=0.5, std=aug.get("noise_std", 0.0)),
    ]
    return Compose(transforms)


def _augment_batch(
    images: torch.Tensor, masks: torch.Tensor | None, transform: Compose
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 (B, H, W) or (B, C, H, W) -> augmented float [0, 1] (B, C, H, W) (+ masks);
    the channels (neighbouring slices) move together."""
    out_images, out_masks = [], []
    for i in range(len(images)):
        image = images[i] if images.ndim == 4 else images[i][None]
        item = {"image": image.float() / 255.0}
        if masks is not None:
            item["mask"] = masks[i][None].float()
        item = transform(item)
        out_images.append(_plain(item["image"]).clamp(0, 1))
        if masks is not None:
            out_masks.append((_plain(item["mask"]) > 0.5).float())
    stacked_masks = torch.stack(out_masks) if masks is not None else None
    return torch.stack(out_images), stacked_masks


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor: MONAI's MetaTensor would route every later network op through its
    metadata bookkeeping (about 15% slower Lite0 training steps on CPU)."""
    return convert_to_tensor(x, track_meta=False)


def _to_model(x01: torch.Tensor) -> torch.Tensor:
    return normalise_batch(x01 * 255.0)


def _schedule(optimizer: torch.optim.Optimizer, epochs: int, steps: int) -> Any:
    """One warm-up epoch, then cosine decay to zero."""
    total, warm = epochs * steps, steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _batches(n: int, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", labels=range(probs.shape[1])))


def _autocast(device: torch.device) -> Any:
    return torch.autocast(
        device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"
    )


def _param_groups(model: torch.nn.Module, lr: float, backbone_scale: float) -> list[dict]:
    """The classifier head at lr, the pretrained backbone at lr * backbone_scale."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, torch.nn.Module) else set()
    if not head_ids or backbone_scale == 1.0:
        return [{"params": list(model.parameters()), "lr": lr}]
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    return [
        {"params": backbone, "lr": lr * backbone_scale},
        {"params": list(head.parameters()), "lr": lr},
    ]


def fingerprint(train_params: dict[str, Any], seed: int, *arrays: np.ndarray) -> str:
    """What a checkpoint must match to be resumed: the settings, the seed and the data."""
    digest = hashlib.sha256(repr((sorted(train_params.items()), seed)).encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _fit(
    model: torch.nn.Module,
    step: Callable[[np.ndarray, bool], tuple[torch.Tensor, Any]],
    validate: Callable[[], tuple[float, float]],
    n_train: int,
    cfg: dict[str, Any],
    device: torch.device,
    seed: int,
    checkpoint: Path | None = None,
    run_key: str = "",
) -> TrainResult:
    """The shared epoch loop: warm-up + cosine, AMP on CUDA, best-epoch deep copy (or the last
    epoch's, cfg keep: last, where a small validation set cannot rank epochs), early stopping
    (cfg patience), and a per-epoch checkpoint to resume after an interruption."""
    fast_layout(model)
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg["lr"], cfg.get("backbone_lr_scale", 1.0)),
        weight_decay=cfg.get("weight_decay", 1e-4),
    )
    steps = math.ceil(n_train / cfg["batch_size"])
    scheduler = _schedule(optimizer, cfg["epochs"], steps)
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")
    rng = np.random.default_rng(seed)
    state: dict[str, Any] = {
        "rows": [], "best_state": None, "best_epoch": 0, "best_score": (-math.inf, -math.inf),
        "epoch": 0, "fingerprint": run_key,
    }  # fmt: skip
    if checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") == state["fingerprint"]:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            rng.bit_generator.state = saved["rng"]
            torch.set_rng_state(saved["torch_rng"])
            state = saved["state"]
    patience = cfg.get("patience", 0)
    for epoch in range(state["epoch"] + 1, cfg["epochs"] + 1):
        start, losses = time.perf_counter(), []
        model.train()
        for batch in _batches(n_train, cfg["batch_size"], rng):
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device):
                loss, _ = step(batch, True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item() * len(batch))
        model.eval()
        val_loss, val_metric = validate()
        # Higher metric wins; on a tie (small validation sets saturate) the lower loss does.
        score = (val_metric if not math.isnan(val_metric) else -math.inf, -val_loss)
        improved = score > state["best_score"]
        if improved:
            state["best_score"], state["improved_epoch"] = score, epoch
        if improved or cfg.get("keep", "best") == "last":
            state["best_epoch"] = epoch  # the kept epoch
            state["best_state"] = copy.deepcopy(
                {k: v.detach().cpu() for k, v in model.state_dict().items()}
            )
        state["rows"].append(
            {
                "epoch": epoch,
                "train_loss": sum(losses) / n_train,
                "val_loss": val_loss,
                "val_metric": val_metric,
                "lr": optimizer.param_groups[-1]["lr"],
                "seconds": time.perf_counter() - start,
            }
        )
        state["epoch"] = epoch
        row = state["rows"][-1]
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %.4f, val metric %.4f, %.0f s",
            epoch, cfg["epochs"], row["train_loss"], val_loss, val_metric, row["seconds"],
        )  # fmt: skip
        if checkpoint is not None:
            _save_checkpoint(checkpoint, model, optimizer, scheduler, rng, state)
        if patience and epoch - state.get("improved_epoch", state["best_epoch"]) >= patience:
            break
    assert state["best_state"] is not None
    history = pd.DataFrame(state["rows"])
    best_epoch = state["best_epoch"]
    best_metric = float(history.loc[history["epoch"] == best_epoch, "val_metric"].iloc[0])
    return TrainResult(state["best_state"], history, best_epoch, best_metric, device.type)


def _save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rng: np.random.Generator,
    state: dict[str, Any],
) -> None:
    payload = {
        "fingerprint": state["fingerprint"],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng.bit_generator.state,
        "torch_rng": torch.get_rng_state(),
        "state": state,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


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
) -> tuple[TrainResult, str]:
    """Fine-tune from pretrained weights; returns the result and the weights' origin.

    lesions: 0/1 uint8 (N, H, W) beside images (all zero where an image has none), used
    when train.classifier.lesion_attention > 0 to keep the class evidence on the lesion."""
    seed_everything(seed)
    cfg = train_params["classifier"]
    attention = float(cfg.get("lesion_attention", 0.0))
    if attention and (lesions is None or not lesions[train_idx].any()):
        raise ValueError(
            "train.classifier.lesion_attention is above 0 but no training image has a lesion "
            "mask or box (data.boxes, or the mask column); set it to 0 or give the lesions"
        )
    device = select_device(train_params.get("device", "auto"))
    model, origin = build_classifier(
        cfg["backbone"],
        cfg["weights"],
        num_classes,
        cfg.get("allow_download", False),
        cfg.get("output_stride", 32),
    )
    model.to(device)
    head = linear_head(model) if attention else None
    x_train = torch.from_numpy(images[train_idx])
    y_train = torch.from_numpy(labels[train_idx]).long()
    m_train = torch.from_numpy(lesions[train_idx]) if attention else None
    counts = torch.bincount(y_train, minlength=num_classes).float().clamp(min=1)
    weight = (counts.sum() / (num_classes * counts)).to(device)
    criterion = torch.nn.CrossEntropyLoss(weight=weight)
    transform = augmentations(train_params.get("augment", {}), with_mask=bool(attention))

    def step(batch: np.ndarray, _: bool) -> tuple[torch.Tensor, Any]:
        x01, m = _augment_batch(x_train[batch], m_train[batch] if attention else None, transform)
        y = y_train[batch].to(device)
        if head is None:
            logits = model(_to_model(x01).to(device))
            return criterion(logits, y), logits
        features = model.forward_features(_to_model(x01).to(device))
        logits = model.forward_head(features)
        outside = outside_lesion_fraction(features, head, y, m.to(device))
        return criterion(logits, y) + attention * outside, logits

    x_val, y_val = torch.from_numpy(images[val_idx]), labels[val_idx]

    def validate() -> tuple[float, float]:
        probs, loss = _predict(model, x_val, device, torch.from_numpy(y_val).long(), criterion)
        return loss, _auc(y_val, probs)

    data = [images[train_idx], labels[train_idx], val_idx]
    if attention:
        data.append(lesions[train_idx])
    key = fingerprint(train_params, seed, *data)
    result = _fit(model, step, validate, len(train_idx), cfg, device, seed, checkpoint, key)
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
    from radflow.learning.calibration import softmax

    logits = predict_logits(model, images, batch, tta)
    return softmax(logits, temperature) if len(logits) else logits


def decide(logits: np.ndarray, labels: np.ndarray, decision: dict[str, Any]) -> dict[str, Any]:
    """Temperature and (binary) operating threshold fitted on validation logits."""
    from radflow.learning import calibration

    temperature = (
        calibration.fit_temperature(logits, labels)
        if decision.get("temperature_scaling", True)
        else 1.0
    )
    probs = calibration.softmax(logits, temperature)
    out: dict[str, Any] = {
        "temperature": temperature,
        "val_ece_uncalibrated": calibration.expected_calibration_error(
            calibration.softmax(logits), labels
        ),
        "val_ece": calibration.expected_calibration_error(probs, labels),
        "tta": bool(decision.get("tta", False)),
    }
    if logits.shape[1] == 2:
        policy = decision.get("threshold", "youden")
        out["threshold_policy"] = policy
        out["threshold"] = calibration.choose_threshold(
            probs[:, 1], labels == 1, policy, decision.get("target_sensitivity", 0.9)
        )
    return out

"""The learning engine: the one fit loop both tasks (radflow.learning.classifier,
radflow.learning.segmentation) train through, with its schedule (one warm-up epoch, then
cosine), AMP and gradient scaling on CUDA, the kept epoch as a deep copy of the weights (so
later epochs can never overwrite it), early stopping, a per-epoch checkpoint to resume after
an interruption, seeding, the deterministic kernels it trains with, and the device.

A task gives fit a Dataset (radflow.learning.pipeline), a step (a batch -> the loss) and a
validate (-> (loss, metric); higher metric is better); fit owns the DataLoader.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.utils import set_determinism
from torch.utils.data import DataLoader, Dataset

from radflow.core import codegraph, provenance
from radflow.core import params as params_mod
from radflow.core.fileio import atomic_write
from radflow.learning import pipeline
from radflow.learning.models import MEAN, STD, fast_layout

log = logging.getLogger(__name__)

Step = Callable[[dict[str, torch.Tensor]], torch.Tensor]
Validate = Callable[[], tuple[float, float]]


@dataclass
class TrainResult:
    """What fit returns: the kept weights (CPU), one history row per epoch, the kept epoch."""

    state: dict[str, torch.Tensor]
    history: pd.DataFrame
    best_epoch: int
    best_metric: float
    device: str
    threads: int = 0

    def summary(self) -> dict[str, Any]:
        """The meta.json keys that describe the training run."""
        return {
            "trained": True,
            "device": self.device,
            "torch_threads": self.threads,
            "best_epoch": self.best_epoch,
            "best_val_metric": self.best_metric,
        }


@dataclass
class TrainedModel:
    """A train stage's output, plain data for the model directory: the weights and history
    (None for the untrained marker a task writes when it has nothing to learn from) and
    meta.json."""

    state: dict[str, torch.Tensor] | None
    meta: dict[str, Any]
    history: pd.DataFrame | None


def base_meta(
    task: str, modality: str, params: dict[str, Any], n_train: int, n_val: int
) -> dict[str, Any]:
    """The meta.json keys every model directory has: what it was trained on and with."""
    return {
        "task": task,
        "modality": modality,
        "image_size": params["preprocess"]["image_size"],
        "preprocess": params["preprocess"],
        "in_chans": 1,
        "mean": MEAN,
        "std": STD,
        "params_hash": params_mod.params_hash(params),
        "code_digest": codegraph.digest(f"train_{task}"),
        "versions": provenance.versions(),
        "n_train": int(n_train),
        "n_val": int(n_val),
    }


def seed_everything(seed: int) -> None:
    """python, numpy, torch and MONAI (transforms built afterwards take their seed from it)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed)


@contextmanager
def deterministic_algorithms(device: torch.device) -> Iterator[None]:
    """torch's deterministic kernels while a fit runs; the caller's settings back afterwards.

    On the CPU this is what makes a seed fix the weights when other work shares the cores:
    index_put_ with accumulate (the backward of advanced indexing, e.g. the classifier's
    ``head.weight[targets]`` under lesion attention) adds with parallel atomic float adds
    once it has 32768 elements (Lite0's 1280 features: batch 26 and up) and more than one
    thread, so the order of the adds, and the sum's last bits, followed the threads' timing;
    the deterministic kernel adds in index order on one thread, as torch already does below
    that size (BENCHMARKS.md, "Same seed, same bytes"). Results stay a function of the
    thread count (torch_threads in meta.json), which splits the reductions.
    warn_only: an op without a deterministic kernel (some CUDA backward passes) warns rather
    than failing the stage; uninitialised memory is not filled (no op here reads memory
    before writing it, and the fill costs time). On CUDA, cuBLAS gets the fixed workspace
    it needs to be deterministic unless CUBLAS_WORKSPACE_CONFIG is already set.
    """
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.utils.deterministic.fill_uninitialized_memory,
    )
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]


def select_device(preference: str) -> torch.device:
    """train.device: auto takes CUDA when visible; cuda without one is an error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is cuda but no CUDA device is visible; use auto or cpu")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def schedule(optimizer: torch.optim.Optimizer, epochs: int, steps: int) -> Any:
    """One warm-up epoch, then cosine decay to zero."""
    total, warm = epochs * steps, steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: torch.device) -> Any:
    """float16 autocast on CUDA; a no-op context elsewhere."""
    return torch.autocast(
        device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"
    )


def param_groups(model: torch.nn.Module, lr: float, backbone_scale: float) -> list[dict]:
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


def fit(
    model: torch.nn.Module,
    dataset: Dataset,
    step: Step,
    validate: Validate,
    cfg: dict[str, Any],
    device: torch.device,
    seed: int,
    checkpoint: Path | None = None,
    run_key: str = "",
    num_workers: int = 0,
) -> TrainResult:
    """Train on shuffled batches of dataset: warm-up + cosine, AMP on CUDA, best-epoch deep
    copy (or the last epoch's, cfg keep: last, where a small validation set cannot rank
    epochs), early stopping (cfg patience), and a per-epoch checkpoint to resume after an
    interruption (only a checkpoint whose fingerprint is run_key). Trains with torch's
    deterministic kernels (deterministic_algorithms)."""
    with deterministic_algorithms(device):
        return _fit(
            model, dataset, step, validate, cfg, device, seed, checkpoint, run_key, num_workers
        )


def _fit(
    model: torch.nn.Module,
    dataset: Dataset,
    step: Step,
    validate: Validate,
    cfg: dict[str, Any],
    device: torch.device,
    seed: int,
    checkpoint: Path | None,
    run_key: str,
    num_workers: int,
) -> TrainResult:
    fast_layout(model)
    optimizer = torch.optim.AdamW(
        # the segmenter has no pretrained-backbone scale: only the classifier schema has one
        param_groups(model, cfg["lr"], cfg.get("backbone_lr_scale", 1.0)),
        weight_decay=cfg["weight_decay"],
    )
    loader = pipeline.make_loader(
        dataset, cfg["batch_size"], seed, num_workers, pin_memory=device.type == "cuda"
    )
    n_train = len(dataset)
    scheduler = schedule(optimizer, cfg["epochs"], len(loader))
    scaler = torch.amp.GradScaler(enabled=device.type == "cuda")
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
            pipeline.restore_loader_state(loader, saved["loader"])
            torch.set_rng_state(saved["torch_rng"])
            state = saved["state"]
            log.info("resuming from %s after epoch %d", checkpoint, state["epoch"])
    patience = cfg["patience"]
    for epoch in range(state["epoch"] + 1, cfg["epochs"] + 1):
        start, losses = time.perf_counter(), []
        model.train()
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                loss = step(batch)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses.append(loss.item() * len(batch["image"]))
        model.eval()
        val_loss, val_metric = validate()
        # Higher metric wins; on a tie (small validation sets saturate) the lower loss does.
        score = (val_metric if not math.isnan(val_metric) else -math.inf, -val_loss)
        improved = score > state["best_score"]
        if improved:
            state["best_score"], state["improved_epoch"] = score, epoch
        if improved or cfg["keep"] == "last":
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
            save_checkpoint(checkpoint, model, optimizer, scheduler, loader, state)
        if patience and epoch - state.get("improved_epoch", state["best_epoch"]) >= patience:
            break
    assert state["best_state"] is not None
    history = pd.DataFrame(state["rows"])
    best_epoch = state["best_epoch"]
    best_metric = float(history.loc[history["epoch"] == best_epoch, "val_metric"].iloc[0])
    return TrainResult(
        state["best_state"], history, best_epoch, best_metric, device.type, torch.get_num_threads()
    )


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader: DataLoader,
    state: dict[str, Any],
) -> None:
    """Everything fit needs to go on after this epoch as if it had not stopped."""
    payload = {
        "fingerprint": state["fingerprint"],
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "loader": pipeline.loader_state(loader),
        "torch_rng": torch.get_rng_state(),
        "state": state,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))

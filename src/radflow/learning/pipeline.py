"""The input pipeline: a torch Dataset over the preloaded uint8 arrays that applies MONAI
dictionary transforms (the augmentation from params, an optional patch crop), and the
DataLoader the engine iterates.

Determinism: the epoch order comes from a seeded numpy generator (EpochSampler) and the
transforms keep their own seeded random state, so with num_workers 0 the draws are the ones
the loop made before the DataLoader existed. With workers, each worker reseeds the
transforms from the loader's seeded generator (torch gives every worker base seed + id), so
a seed still fixes every batch; the augmentation draws then differ from num_workers 0.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
)
from monai.transforms.transform import Randomizable
from monai.utils import convert_to_tensor
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from radflow.learning.models import normalise_batch


def augmentations(aug: dict[str, Any], with_mask: bool) -> Compose:
    """MONAI dictionary transforms from params; the mask moves with the image."""
    keys = ["image", "mask"] if with_mask else ["image"]
    modes = ("bilinear", "nearest") if with_mask else ("bilinear",)
    degrees = math.radians(aug["rotate_degrees"])
    zoom = aug["zoom"]
    transforms = [
        RandFlipd(keys=keys, prob=aug["flip_prob"], spatial_axis=1),
        RandAffined(
            keys=keys,
            prob=0.8,
            rotate_range=(degrees,),
            scale_range=((zoom[0] - 1, zoom[1] - 1),),
            translate_range=(4, 4),
            mode=modes,
            padding_mode="zeros",
        ),
        RandAdjustContrastd(keys=["image"], prob=0.5, gamma=tuple(aug["contrast_gamma"])),
        RandGaussianNoised(keys=["image"], prob=0.5, std=aug["noise_std"]),
    ]
    return Compose(transforms)


def _plain(x: Any) -> torch.Tensor:
    """A plain tensor: MONAI's MetaTensor would route every later network op through its
    metadata bookkeeping (about 15% slower Lite0 training steps on CPU)."""
    return convert_to_tensor(x, track_meta=False)


def to_model(x01: torch.Tensor) -> torch.Tensor:
    """Augmented float [0, 1] (B, C, H, W) -> the networks' normalised channels-last input."""
    return normalise_batch(x01 * 255.0)


class ArrayDataset(Dataset):
    """Items of preloaded uint8 arrays: {"image": float [0, 1] (C, H, W)} plus "mask" (0/1
    float (1, H, W)) and "label" (long) where given; item i reads row indices[i].

    images: (N, H, W), or (N, C, H, W) with neighbouring slices as channels (they move
    together); masks: (N, H, W) beside them (segmentation masks, or lesion maps). The
    transform sees the image (and mask) first; crop, a MONAI cropper returning a list of
    one sample (e.g. RandCropByPosNegLabeld), cuts a patch from the augmented pair.
    """

    def __init__(
        self,
        images: np.ndarray,
        indices: np.ndarray,
        transform: Compose | None = None,
        masks: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        crop: Randomizable | None = None,
    ) -> None:
        if crop is not None and masks is None:
            raise ValueError("a patch crop needs masks to centre the patches on")
        self.images, self.masks, self.labels = images, masks, labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform, self.crop = transform, crop

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = int(self.indices[i])
        image = torch.from_numpy(np.asarray(self.images[row]))
        item: dict[str, Any] = {"image": (image if image.ndim == 3 else image[None]).float() / 255}
        if self.masks is not None:
            item["mask"] = torch.from_numpy(np.asarray(self.masks[row]))[None].float()
        if self.transform is not None:
            item = self.transform(item)
        out = {"image": _plain(item["image"]).clamp(0, 1)}
        if self.masks is not None:
            out["mask"] = (_plain(item["mask"]) > 0.5).float()
        if self.crop is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no foreground" on lesion-free slices
                patch = self.crop(out)[0]
            out = {"image": _plain(patch["image"]), "mask": _plain(patch["mask"])}
        if self.labels is not None:
            out["label"] = torch.as_tensor(self.labels[row]).long()
        return out

    def reseed(self, seed: int) -> None:
        """New random states for the transform and the crop (one per worker process)."""
        for k, randomiser in enumerate(r for r in (self.transform, self.crop) if r is not None):
            randomiser.set_random_state(seed=(seed + k) % 2**32)


class EpochSampler(Sampler[int]):
    """A fresh permutation of the items every epoch, from a seeded numpy generator whose state
    the checkpoint keeps (loader_state)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.rng = n, np.random.default_rng(seed)

    def __iter__(self) -> Iterator[int]:
        return iter(self.rng.permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


def _seed_worker(worker_id: int) -> None:
    """Worker start-up: python, numpy and the dataset's transforms from the worker's seed
    (base seed drawn from the loader's generator + worker id), so workers differ from each
    other and from epoch to epoch, and a seed fixes them all."""
    info = get_worker_info()
    seed = info.seed % 2**32
    random.seed(seed)
    np.random.seed(seed)
    if isinstance(info.dataset, ArrayDataset):
        info.dataset.reseed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled batches (the last may be short) from `num_workers` processes (0: in the main
    process); a dedicated seeded generator, so the global torch stream (dropout) is left
    as it was."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed),
        num_workers=num_workers,
        worker_init_fn=_seed_worker if num_workers else None,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=pin_memory,
    )


def loader_state(loader: DataLoader) -> dict[str, Any]:
    """What a checkpoint keeps to resume the loader's random streams where they were: the
    epoch order, the workers' seeds and (in the main process) the transforms themselves,
    whose random states MONAI keeps inside them."""
    state: dict[str, Any] = {
        "order": loader.sampler.rng.bit_generator.state,
        "workers": loader.generator.get_state(),
    }
    if isinstance(loader.dataset, ArrayDataset):
        state["transforms"] = (loader.dataset.transform, loader.dataset.crop)
    return state


def restore_loader_state(loader: DataLoader, state: dict[str, Any]) -> None:
    loader.sampler.rng.bit_generator.state = state["order"]
    loader.generator.set_state(state["workers"])
    if isinstance(loader.dataset, ArrayDataset) and "transforms" in state:
        loader.dataset.transform, loader.dataset.crop = state["transforms"]


def split_indices(split: pd.DataFrame, part: str) -> np.ndarray:
    """The array indices of one part (train, val, test) of a split table."""
    return split.loc[split["split"] == part, "array_index"].to_numpy()

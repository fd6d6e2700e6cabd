"""The input pipeline: the Dataset over the preloaded arrays, its MONAI transforms, and the
seeded DataLoader the engine iterates."""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import set_determinism

from radflow.learning import pipeline

AUGMENT = {
    "flip_prob": 0.5,
    "rotate_degrees": 20,
    "zoom": [0.8, 1.2],
    "noise_std": 0.05,
    "contrast_gamma": [0.7, 1.4],
}


def _squares(n: int = 12, size: int = 32, seed: int = 0):
    """Dark images with one bright square each; the mask marks it."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 20, (n, size, size)).astype(np.uint8)
    masks = np.zeros_like(images)
    for i in range(n):
        y, x = rng.integers(6, size - 14, 2)
        images[i, y : y + 8, x : x + 8] = 240
        masks[i, y : y + 8, x : x + 8] = 1
    return images, masks, np.arange(n) % 2


def _batches(loader: torch.utils.data.DataLoader, epochs: int = 2) -> list[dict]:
    return [batch for _ in range(epochs) for batch in loader]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


def _by_item(batches: list[dict]) -> dict[int, torch.Tensor]:
    """Item id (the label column here) -> its image in these batches."""
    ids = torch.cat([b["label"] for b in batches]).tolist()
    return dict(zip(ids, torch.cat([b["image"] for b in batches]), strict=True))


def test_dataloader_with_workers_gives_the_same_batches_as_without():
    images, masks, _ = _squares()
    ids = np.arange(12)  # as labels, to follow the items
    dataset = pipeline.ArrayDataset(images, np.arange(2, 12), masks=masks, labels=ids)
    inline = _batches(pipeline.make_loader(dataset, 4, seed=5, num_workers=0))
    workers = _batches(pipeline.make_loader(dataset, 4, seed=5, num_workers=2))
    _assert_same(inline, workers)
    assert [len(b["label"]) for b in inline] == [4, 4, 2] * 2
    epochs = [torch.cat([b["label"] for b in inline[k : k + 3]]).tolist() for k in (0, 3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(2, 12))  # each item once
    assert epochs[0] != epochs[1]  # shuffled anew every epoch
    other = _batches(pipeline.make_loader(dataset, 4, seed=6, num_workers=0))
    assert torch.cat([b["label"] for b in other[:3]]).tolist() != epochs[0]


def test_augmented_batches_from_workers_repeat_for_a_seed_and_change_each_epoch():
    images, masks, _ = _squares()

    def run(seed: int) -> list[dict]:
        set_determinism(seed=seed)
        transform = pipeline.augmentations(AUGMENT, with_mask=True)
        dataset = pipeline.ArrayDataset(images, np.arange(12), transform, masks, np.arange(12))
        return _batches(pipeline.make_loader(dataset, 3, seed=seed, num_workers=2))

    a, b = run(3), run(3)
    set_determinism(seed=None)
    _assert_same(a, b)
    first, second = _by_item(a[:4]), _by_item(a[4:])
    # workers are reseeded every epoch: the same item is augmented anew
    assert sum(torch.equal(first[i], second[i]) for i in range(12)) <= 1
    # and the two workers do not repeat each other's draws: one image twelve times comes
    # out twelve ways (worker 0 makes batches 0 and 2, worker 1 batches 1 and 3)
    set_determinism(seed=3)
    same = pipeline.ArrayDataset(
        np.repeat(images[:1], 12, axis=0), np.arange(12),
        pipeline.augmentations(AUGMENT, with_mask=False),
    )  # fmt: skip
    set_determinism(seed=None)
    out = torch.cat([b["image"] for b in pipeline.make_loader(same, 3, seed=3, num_workers=2)])
    assert len({tuple(x.flatten()[::7].tolist()) for x in out}) == 12


def test_num_workers_0_draws_the_augmentations_the_loop_drew_before():
    """In the main process the loader hands the transform the items in the order the old
    loop did (a seeded permutation per epoch), so the random stream is the same."""
    images, masks, _ = _squares()
    set_determinism(seed=7)
    dataset = pipeline.ArrayDataset(
        images, np.arange(12), pipeline.augmentations(AUGMENT, True), masks
    )
    batches = _batches(pipeline.make_loader(dataset, 5, seed=7))
    set_determinism(seed=7)
    transform, rng, expected = pipeline.augmentations(AUGMENT, True), np.random.default_rng(7), []
    for _ in range(2):
        order = rng.permutation(12)
        for start in range(0, 12, 5):
            out = []
            for i in order[start : start + 5]:
                item = transform(
                    {
                        "image": torch.from_numpy(images[i])[None].float() / 255,
                        "mask": torch.from_numpy(masks[i])[None].float(),
                    }
                )
                out.append(torch.as_tensor(item["image"]).clamp(0, 1))
            expected.append(torch.stack(out))
    assert len(batches) == len(expected)
    for got, want in zip(batches, expected, strict=True):
        torch.testing.assert_close(got["image"], want.as_subclass(torch.Tensor), rtol=0, atol=0)
    set_determinism(seed=None)


def test_pipeline_moves_the_mask_with_the_image():
    images, masks, _ = _squares()
    aug = AUGMENT | {"flip_prob": 1.0, "noise_std": 0.0, "contrast_gamma": [1, 1]}
    set_determinism(seed=1)
    dataset = pipeline.ArrayDataset(images, np.arange(12), pipeline.augmentations(aug, True), masks)
    moved = 0
    for i in range(len(dataset)):
        item = dataset[i]
        image, mask = item["image"][0], item["mask"][0].bool()
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
        assert mask.any()
        assert image[mask].mean() > 0.75 and image[~mask].mean() < 0.15
        moved += not np.array_equal(mask.numpy(), masks[i].astype(bool))
    assert moved == len(dataset)  # flip_prob 1: every mask moved, and stayed on its square
    set_determinism(seed=None)


def test_items_are_plain_channels_last_ready_tensors_not_metatensors():
    images, masks, labels = _squares()
    set_determinism(seed=0)
    dataset = pipeline.ArrayDataset(
        images, np.arange(12), pipeline.augmentations(AUGMENT, True), masks, labels
    )
    item = dataset[0]
    assert not isinstance(item["image"], MetaTensor) and not isinstance(item["mask"], MetaTensor)
    assert item["image"].dtype == torch.float32 and item["label"].dtype == torch.int64
    batch = next(iter(pipeline.make_loader(dataset, 4, seed=0)))
    x = pipeline.to_model(batch["image"])
    assert x.shape == (4, 1, 32, 32) and x.stride(1) == 1  # channels last
    set_determinism(seed=None)

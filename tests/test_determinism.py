"""Same seed, same bytes: fit trains with torch's deterministic kernels, so a seed fixes the
weights bit for bit for a given thread count, whatever else runs on the cores
(BENCHMARKS.md, "Same seed, same bytes")."""

import io
import os

import numpy as np
import pytest
import torch
from conftest import filled

from radflow.learning import classifier, engine, pipeline, segmentation, weights

AUGMENT = {
    "flip_prob": 0.5, "rotate_degrees": 10, "zoom": [0.9, 1.1], "noise_std": 0.02,
    "contrast_gamma": [0.8, 1.2],
}  # fmt: skip
# Batch 32 with lesion attention: head.weight[targets] has a backward of 32 x 1280 = 40960
# accumulated elements, over torch's GRAIN_SIZE (32768), where its CPU kernel would add them
# with parallel atomic adds.
TRAIN = filled(
    "train",
    {
        "device": "cpu",
        "classifier": {
            "backbone": "tf_efficientnet_lite0",
            "weights": "packaged",
            "epochs": 2,
            "batch_size": 32,
            "lr": 1e-3,
            "lesion_attention": 1.0,
        },  # fmt: skip
        "segmenter": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "channels": [4, 8, 16]},
        "augment": AUGMENT,
    },
)


def _squares(n=40, size=32, seed=0):
    """Half the images carry a bright square; the mask marks it."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    masks = np.zeros_like(images)
    labels = np.arange(n) % 2
    for i in np.flatnonzero(labels):
        y, x = rng.integers(4, size - 12, 2)
        images[i, y : y + 8, x : x + 8] = 220
        masks[i, y : y + 8, x : x + 8] = 1
    return images, masks, labels


def _bytes(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.fixture
def two_threads():
    """Two intra-op threads (the parallel kernels need more than one), then as before."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_fit_trains_with_deterministic_kernels_and_gives_the_settings_back():
    images, _, labels = _squares(16)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 2))
    dataset = pipeline.ArrayDataset(images, np.arange(16), labels=labels)
    seen = []

    def step(batch):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])

    cfg = filled("train", {"classifier": {"lr": 0.1, "batch_size": 8, "epochs": 1}})["classifier"]
    fill = torch.utils.deterministic.fill_uninitialized_memory
    result = engine.fit(model, dataset, step, lambda: (0.0, 1.0), cfg, torch.device("cpu"), 0)
    assert seen == [True, True]
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory == fill
    assert result.summary()["torch_threads"] == torch.get_num_threads()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the parallel kernel needs two cores")
def test_accumulated_index_backward_is_bitwise_repeatable_in_the_fit_settings(two_threads):
    """The kernel behind the drift: without the deterministic setting most of these
    gradients differ in their last bits from the first (parallel atomic float adds)."""
    torch.manual_seed(0)
    weight = torch.randn(2, 1280, requires_grad=True)
    targets, upstream = torch.arange(32) % 2, torch.randn(32, 1280)
    grads = []
    with engine.deterministic_algorithms(torch.device("cpu")):
        for _ in range(40):
            weight.grad = None
            (weight[targets] * upstream).sum().backward()
            grads.append(weight.grad.clone())
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_converting_the_packaged_weights_leaves_the_seeded_generator_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    weights.convert_lite0(weights.packaged_source())
    assert torch.equal(torch.get_rng_state(), before)


def test_same_seed_trains_the_same_weight_bytes(two_threads, tmp_path, monkeypatch):
    """The first training converts the packaged weights into the empty cache (as on a fresh
    machine), the second finds them there: the same bytes all the same."""
    monkeypatch.setenv("RADFLOW_CACHE", str(tmp_path))
    images, masks, labels = _squares()
    train, val = np.arange(32), np.arange(32, 40)

    def classifier_bytes(seed):
        result, _ = classifier.train_classifier(
            images, labels, train, val, 2, TRAIN, seed, lesions=masks
        )
        return _bytes(result.state)

    first = classifier_bytes(3)
    assert classifier_bytes(3) == first
    assert classifier_bytes(4) != first  # the seed is what fixes them

    def segmenter_bytes(seed):
        result, _ = segmentation.train_segmenter(images, masks, train, val, TRAIN, seed)
        return _bytes(result.state)

    assert segmenter_bytes(3) == segmenter_bytes(3)

"""Behaviour of the explanation stage on a hand-made bright-square detector and a timm model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download weights in tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from radflow import explain as ex  # noqa: E402

SIZE = 32
SQUARES = [(4, 18), (20, 6)]  # top-left corners of the 8x8 bright squares
METHODS = sorted(ex.EXPLAINERS)


def square_detector() -> nn.Module:
    """Class 1 = "has a bright square": mean-filter, threshold, pool, linear.

    Built by hand so that the discriminative region is known exactly: only pixels of a
    bright square pass the thresholds.
    """
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 1, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(1, 2),
    )
    with torch.no_grad():
        model[0].weight.fill_(1 / 9)
        model[0].bias.fill_(-0.5)
        model[2].weight.fill_(1 / 18)
        model[2].bias.zero_()
        model[6].weight.copy_(torch.tensor([[-50.0], [50.0]]))
        model[6].bias.copy_(torch.tensor([0.75, -0.75]))
    return model


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, np.ndarray]:
    """Noisy images with one bright square each, and the squares' masks."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(len(SQUARES), 1, SIZE, SIZE, generator=generator) * 0.1
    masks = np.zeros((len(SQUARES), SIZE, SIZE), dtype=bool)
    for i, (r, c) in enumerate(SQUARES):
        images[i, 0, r : r + 8, c : c + 8] += 1.0
        masks[i, r : r + 8, c : c + 8] = True
    return images, masks


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return square_detector()


def test_the_hand_made_model_detects_the_square(model, batch):
    images, _ = batch
    with torch.no_grad():
        assert model(images).argmax(dim=1).tolist() == [1, 1]
        assert model(torch.zeros(1, 1, SIZE, SIZE)).argmax(dim=1).item() == 0


@pytest.mark.parametrize("method", METHODS)
def test_explanation_highlights_the_discriminative_region(method, model, batch):
    images, masks = batch
    maps = ex.explain(model, images, [1, 1], method, seed=0, num_samples=80)
    for heat, inside in zip(maps, masks, strict=True):
        assert heat[inside].mean() > 5 * heat[~inside].mean()
        peak = np.unravel_index(heat.argmax(), heat.shape)
        assert inside[peak]


@pytest.mark.parametrize("method", METHODS)
def test_maps_are_float_in_unit_range_with_the_input_shape(method, model, batch):
    images, _ = batch
    maps = ex.explain(model, images, [1, 0], method, seed=0, num_samples=30)
    assert maps.shape == (len(SQUARES), SIZE, SIZE)
    assert maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.isclose(maps[0].max(), 1.0)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_the_same_explanation(method, model, batch):
    images, _ = batch
    first = ex.explain(model, images, [1, 1], method, seed=3, num_samples=30)
    second = ex.explain(model, images, [1, 1], method, seed=3, num_samples=30)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_randomised_methods_depend_on_the_seed(method, model, batch):
    images, _ = batch
    first = ex.explain(model, images, [1, 1], method, seed=1, num_samples=20)
    other = ex.explain(model, images, [1, 1], method, seed=2, num_samples=20)
    assert not np.array_equal(first, other)


def test_explaining_leaves_the_callers_random_state_alone(model, batch):
    images, _ = batch
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    ex.explain(model, images, [1, 1], "shap", seed=0, num_samples=10)
    assert torch.equal(torch.rand(3), expected_torch)
    np.testing.assert_array_equal(np.random.rand(3), expected_np)


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


@pytest.mark.parametrize("method", METHODS)
def test_explaining_leaves_no_hooks_and_restores_the_training_mode(method, batch):
    images, _ = batch
    model = square_detector().train()
    ex.explain(model, images, [1, 1], method, seed=0, num_samples=10)
    assert _hooks(model) == 0
    assert model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_explaining_uses_eval_mode_so_dropout_does_not_change_the_map(method, batch):
    images, _ = batch
    model = square_detector()
    model.insert(5, nn.Dropout(p=0.5))  # after pooling, before the linear head
    model.train()
    first = ex.explain(model, images, [1, 1], method, seed=0)
    second = ex.explain(model, images, [1, 1], method, seed=1)
    np.testing.assert_array_equal(first, second)


def test_target_layer_is_the_last_conv2d(model):
    assert ex.find_target_layer(model) is model[2]


def test_invalid_requests_fail_loudly(model, batch):
    images, _ = batch
    with pytest.raises(ValueError, match="unknown explanation method"):
        ex.explain(model, images, [1, 1], "magic", seed=0)
    with pytest.raises(ValueError, match="targets"):
        ex.explain(model, images, [1], "gradcam", seed=0)
    with pytest.raises(ValueError, match="outside"):
        ex.explain(model, images, [1, 5], "gradcam", seed=0)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        ex.explain(model, images[:, 0], [1, 1], "gradcam", seed=0)


# ----------------------------------------------------------------- timm integration


def test_gradcam_on_a_timm_efficientnet_uses_conv_head_and_runs():
    timm = pytest.importorskip("timm")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2, in_chans=1)
    assert ex.find_target_layer(net) is net.conv_head
    images = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = ex.explain(net, images, [0, 1], "gradcam", seed=0)
    assert maps.shape == (2, 32, 32)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert _hooks(net) == 0


# --------------------------------------------------------------------- faithfulness


def test_deletion_auc_is_lower_for_the_true_region_than_for_its_complement(model, batch):
    images, masks = batch
    good = ex.deletion_auc(model, images[0], 1, masks[0].astype(np.float32), steps=16)
    bad = ex.deletion_auc(model, images[0], 1, (~masks[0]).astype(np.float32), steps=16)
    assert 0.0 <= good < bad <= 1.0


def test_deletion_auc_ranks_a_real_explanation_above_a_random_map(model, batch):
    images, _ = batch
    heat = ex.explain(model, images[:1], [1], "gradcam", seed=0)[0]
    noise = np.random.default_rng(0).random(heat.shape).astype(np.float32)
    for baseline in ("mean", "blur"):
        real = ex.deletion_auc(model, images[0], 1, heat, steps=16, baseline=baseline)
        random = ex.deletion_auc(model, images[0], 1, noise, steps=16, baseline=baseline)
        assert real < random, baseline


def test_deletion_auc_rejects_a_heatmap_of_another_size(model, batch):
    images, _ = batch
    with pytest.raises(ValueError, match="does not match"):
        ex.deletion_auc(model, images[0], 1, np.zeros((4, 4)), steps=4)


# -------------------------------------------------------------------------- overlays


def test_overlay_is_a_png_and_identical_for_identical_input():
    rng = np.random.default_rng(0)
    image, heat = rng.random((SIZE, SIZE)), rng.random((SIZE, SIZE))
    first = ex.overlay_png(image, heat, "case 1 - gradcam")
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    assert ex.overlay_png(image, heat, "case 1 - gradcam") == first
    assert ex.overlay_png(image, 1.0 - heat, "case 1 - gradcam") != first


def test_overlay_title_with_dollar_signs_is_printed_not_parsed():
    image = np.zeros((8, 8))
    assert ex.overlay_png(image, image, "cost $5 and $x^2$ and a lone $").startswith(b"\x89PNG")


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal 2-D"):
        ex.overlay_png(np.zeros((8, 8)), np.zeros((8, 9)), "x")


def test_overlay_filenames_are_safe_and_distinct():
    names = {ex.overlay_filename(i, "gradcam") for i in ["a/b", "a_b", "../a b", "a b"]}
    assert len(names) == 4
    assert all("/" not in n and " " not in n and n.endswith("_gradcam.png") for n in names)

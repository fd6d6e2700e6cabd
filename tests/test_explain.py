"""Behaviour of the explanation stage on a hand-made bright-square detector and a timm model."""

from __future__ import annotations

import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download weights in tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from radflow.core import lesions  # noqa: E402
from radflow.explain import faithfulness, methods, render, stage  # noqa: E402

SIZE = 32
SQUARES = [(4, 18), (20, 6)]  # top-left corners of the 8x8 bright squares
METHODS = sorted(methods.EXPLAINERS)


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
    maps = methods.explain(model, images, [1, 1], method, seed=0, num_samples=80)
    for heat, inside in zip(maps, masks, strict=True):
        assert heat[inside].mean() > 5 * heat[~inside].mean()
        peak = np.unravel_index(heat.argmax(), heat.shape)
        assert inside[peak]


@pytest.mark.parametrize("method", METHODS)
def test_maps_are_float_in_unit_range_with_the_input_shape(method, model, batch):
    images, _ = batch
    maps = methods.explain(model, images, [1, 0], method, seed=0, num_samples=30)
    assert maps.shape == (len(SQUARES), SIZE, SIZE)
    assert maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert np.isclose(maps[0].max(), 1.0)


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_the_same_explanation(method, model, batch):
    images, _ = batch
    first = methods.explain(model, images, [1, 1], method, seed=3, num_samples=30)
    second = methods.explain(model, images, [1, 1], method, seed=3, num_samples=30)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("method", ["lime", "shap"])
def test_randomised_methods_depend_on_the_seed(method, model, batch):
    images, _ = batch
    first = methods.explain(model, images, [1, 1], method, seed=1, num_samples=20)
    other = methods.explain(model, images, [1, 1], method, seed=2, num_samples=20)
    assert not np.array_equal(first, other)


def test_explaining_leaves_the_callers_random_state_alone(model, batch):
    images, _ = batch
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    methods.explain(model, images, [1, 1], "shap", seed=0, num_samples=10)
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
    methods.explain(model, images, [1, 1], method, seed=0, num_samples=10)
    assert _hooks(model) == 0
    assert model.training
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["gradcam", "saliency"])
def test_explaining_uses_eval_mode_so_dropout_does_not_change_the_map(method, batch):
    images, _ = batch
    model = square_detector()
    model.insert(5, nn.Dropout(p=0.5))  # after pooling, before the linear head
    model.train()
    first = methods.explain(model, images, [1, 1], method, seed=0)
    second = methods.explain(model, images, [1, 1], method, seed=1)
    np.testing.assert_array_equal(first, second)


def test_target_layer_is_the_last_conv2d(model):
    assert methods.find_target_layer(model) is model[2]


def test_invalid_requests_fail_loudly(model, batch):
    images, _ = batch
    with pytest.raises(ValueError, match="unknown explanation method"):
        methods.explain(model, images, [1, 1], "magic", seed=0)
    with pytest.raises(ValueError, match="targets"):
        methods.explain(model, images, [1], "gradcam", seed=0)
    with pytest.raises(ValueError, match="outside"):
        methods.explain(model, images, [1, 5], "gradcam", seed=0)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        methods.explain(model, images[:, 0], [1, 1], "gradcam", seed=0)


# ----------------------------------------------------------------- timm integration


def test_gradcam_on_a_timm_efficientnet_uses_the_stage_before_last_and_runs():
    timm = pytest.importorskip("timm")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2, in_chans=1)
    assert methods.find_target_layer(net) is net.blocks[-2]
    images = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = methods.explain(net, images, [0, 1], "gradcam", seed=0)
    assert maps.shape == (2, 32, 32)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert _hooks(net) == 0


def test_cam_layer_by_name_is_used_and_a_wrong_name_is_an_error(model, batch):
    images, _ = batch
    assert methods.find_target_layer(model, "0") is model[0]
    by_name = methods.explain(model, images, [1, 1], "gradcam", seed=0, cam_layer="0")
    auto = methods.explain(model, images, [1, 1], "gradcam", seed=0)
    assert not np.allclose(by_name, auto)
    with pytest.raises(ValueError, match="cam_layer 'nope'"):
        methods.explain(model, images, [1, 1], "gradcam", seed=0, cam_layer="nope")


def test_gradcam_on_the_feature_layer_is_the_class_activation_map_lesion_attention_trains():
    timm = pytest.importorskip("timm")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2, in_chans=1)
    net.eval()
    assert methods.find_target_layer(net, "features") is net.bn2
    images = torch.randn(2, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cam = torch.relu(torch.einsum("bchw,c->bhw", net.forward_features(images),
                                      net.get_classifier().weight[1]))  # fmt: skip
    maps = methods.explain(net, images, [1, 1], "gradcam", seed=0, cam_layer="features")
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(maps)[:, None], cam.shape[-2:])[:, 0]
    for ours, theirs in zip(pooled, cam, strict=True):
        assert np.corrcoef(ours.flatten(), theirs.flatten())[0, 1] > 0.9


def test_auto_cam_layer_is_the_feature_layer_only_for_lesion_attention_models(model):
    assert stage.cam_layer_for("auto", {"lesion_attention": 1.0}) == "features"
    assert stage.cam_layer_for("auto", {"lesion_attention": 0.0}) == "auto"
    assert stage.cam_layer_for("blocks.5", {"lesion_attention": 1.0}) == "blocks.5"
    with pytest.raises(ValueError, match="features"):
        methods.find_target_layer(model, "features")  # a plain Sequential has no feature layer


# --------------------------------------------------------------------- faithfulness


def test_deletion_auc_is_lower_for_the_true_region_than_for_its_complement(model, batch):
    images, masks = batch
    good = faithfulness.deletion_auc(model, images[0], 1, masks[0].astype(np.float32), steps=16)
    bad = faithfulness.deletion_auc(model, images[0], 1, (~masks[0]).astype(np.float32), steps=16)
    assert 0.0 <= good < bad <= 1.0


def test_deletion_auc_ranks_a_real_explanation_above_a_random_map(model, batch):
    images, _ = batch
    heat = methods.explain(model, images[:1], [1], "gradcam", seed=0)[0]
    noise = np.random.default_rng(0).random(heat.shape).astype(np.float32)
    for baseline in ("mean", "blur"):
        real = faithfulness.deletion_auc(model, images[0], 1, heat, steps=16, baseline=baseline)
        random = faithfulness.deletion_auc(model, images[0], 1, noise, steps=16, baseline=baseline)
        assert real < random, baseline


def test_deletion_auc_rejects_a_heatmap_of_another_size(model, batch):
    images, _ = batch
    with pytest.raises(ValueError, match="does not match"):
        faithfulness.deletion_auc(model, images[0], 1, np.zeros((4, 4)), steps=4)


# -------------------------------------------------------------------------- overlays


def test_overlay_is_a_png_and_identical_for_identical_input():
    rng = np.random.default_rng(0)
    image, heat = rng.random((SIZE, SIZE)), rng.random((SIZE, SIZE))
    first = render.heatmap_overlay_png(image, heat, "case 1 - gradcam")
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    assert render.heatmap_overlay_png(image, heat, "case 1 - gradcam") == first
    assert render.heatmap_overlay_png(image, 1.0 - heat, "case 1 - gradcam") != first


def test_overlay_title_with_dollar_signs_is_printed_not_parsed():
    image = np.zeros((8, 8))
    assert render.heatmap_overlay_png(image, image, "cost $5 and $x^2$ and a lone $").startswith(
        b"\x89PNG"
    )


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal 2-D"):
        render.heatmap_overlay_png(np.zeros((8, 8)), np.zeros((8, 9)), "x")


def test_overlay_filenames_are_safe_and_distinct():
    names = {render.overlay_filename(i, "gradcam") for i in ["a/b", "a_b", "../a b", "a b"]}
    assert len(names) == 4
    assert all("/" not in n and " " not in n and n.endswith("_gradcam.png") for n in names)


# ------------------------------------------------------- insertion, random, localisation


def test_insertion_auc_is_higher_for_the_true_region_than_for_its_complement(model, batch):
    images, masks = batch
    true_map, wrong_map = masks[0].astype(float), (~masks[0]).astype(float)
    good = faithfulness.insertion_auc(model, images[0], 1, true_map)
    bad = faithfulness.insertion_auc(model, images[0], 1, wrong_map)
    assert good > bad


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_real_explanations_beat_the_random_baseline(method, model, batch):
    images, _ = batch
    maps = methods.explain(model, images, [1, 1], method, seed=0)
    baseline = faithfulness.random_baseline(model, images[0], 1, seed=0, n_orders=2)
    assert faithfulness.deletion_auc(model, images[0], 1, maps[0]) < baseline["deletion_auc"]
    assert faithfulness.insertion_auc(model, images[0], 1, maps[0]) > baseline["insertion_auc"]
    assert baseline == faithfulness.random_baseline(model, images[0], 1, seed=0, n_orders=2)


def test_pointing_game_hits_inside_and_within_tolerance_and_misses_outside():
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:50, 40:50] = True
    heat = np.zeros((100, 100))
    heat[45, 45] = 1.0
    assert faithfulness.pointing_game(heat, mask) is True
    near = np.zeros((100, 100))
    near[52, 45] = 1.0  # 3 px below the lesion; tolerance 0.03 * 100 = 3 px
    assert faithfulness.pointing_game(near, mask, tolerance=0.03) is True
    assert faithfulness.pointing_game(near, mask, tolerance=0.0) is False
    far = np.zeros((100, 100))
    far[5, 5] = 1.0
    assert faithfulness.pointing_game(far, mask) is False
    assert faithfulness.pointing_game(far, np.zeros_like(mask)) is None
    assert faithfulness.pointing_game(np.zeros((100, 100)), mask) is None


def test_energy_in_lesion_is_the_share_of_relevance_inside():
    mask = np.zeros((10, 10), dtype=bool)
    mask[:5] = True
    heat = np.zeros((10, 10))
    heat[:5] = 3.0
    heat[5:] = 1.0
    assert faithfulness.energy_in_lesion(heat, mask) == pytest.approx(0.75)
    assert faithfulness.energy_in_lesion(np.ones((10, 10)), mask) == pytest.approx(mask.mean())
    assert faithfulness.energy_in_lesion(heat, np.zeros_like(mask)) is None


def test_box_variants_use_centre_and_size_in_pixels():
    boxes = np.array([[30.0, 20.0, 10.0, 6.0]])  # centre x=30, y=20, 10 wide, 6 high
    mask = lesions.boxes_to_mask((50, 60), boxes)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (17, 22, 25, 34)
    heat = np.zeros((50, 60))
    heat[20, 30] = 1.0
    assert faithfulness.pointing_game_boxes(heat, boxes) is True
    assert faithfulness.energy_in_boxes(heat, boxes) == pytest.approx(1.0)
    heat[20, 30], heat[45, 5] = 0.0, 1.0
    assert faithfulness.pointing_game_boxes(heat, boxes) is False


def test_summary_ranks_methods_by_insertion_minus_deletion():
    def rec(method, dele, ins, hit):
        return {
            "method": method,
            "deletion_auc": dele,
            "insertion_auc": ins,
            "random_deletion_auc": 0.5,
            "random_insertion_auc": 0.5,
            "pointing_hit": hit,
            "energy_in_lesion": 0.3 if hit is not None else None,
        }

    rows = faithfulness.summarise(
        [rec("a", 0.4, 0.6, None), rec("b", 0.1, 0.9, True), rec("b", 0.2, 0.8, False)]
    )
    assert [r["method"] for r in rows] == ["b", "a"] and [r["rank"] for r in rows] == [1, 2]
    best = rows[0]
    assert best["score"] == pytest.approx(0.7) and best["deletion_gain"] == pytest.approx(0.35)
    assert best["pointing_hit_rate"] == 0.5 and best["n_localised"] == 2
    assert rows[1]["pointing_hit_rate"] is None and rows[1]["energy_in_lesion"] is None


def test_case_thumbnail_is_a_deterministic_png_of_both_panels():
    image = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    png = render.case_thumbnail(image, image[::-1], size=48)
    assert png.startswith(b"\x89PNG") and png == render.case_thumbnail(image, image[::-1], size=48)
    from PIL import Image

    assert Image.open(io.BytesIO(png)).size == (98, 48)


def test_overlay_outlines_the_lesion_when_given():
    image = np.linspace(0, 1, 32 * 32).reshape(32, 32)
    lesion = np.zeros((32, 32), dtype=bool)
    lesion[8:16, 8:16] = True
    assert render.heatmap_overlay_png(image, image, "t", lesion) != render.heatmap_overlay_png(
        image, image, "t"
    )

import logging

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import filled, write_png

from radflow.learning import classifier, engine, models, pipeline, predict, weights

NO_AUGMENT = {
    "flip_prob": 0.0, "rotate_degrees": 0, "zoom": [1.0, 1.0], "noise_std": 0.0,
    "contrast_gamma": [1.0, 1.0],
}  # fmt: skip
TRAIN = filled(
    "train",
    {
        "device": "cpu",
        "classifier": {
            "backbone": "tf_efficientnet_lite0",
            "weights": "packaged",
            "epochs": 2,
            "batch_size": 8,
            "lr": 1e-3,
        },
        "segmenter": {"epochs": 2, "batch_size": 4, "lr": 2e-3, "channels": [4, 8, 16]},
        "augment": {
            "flip_prob": 0.5,
            "rotate_degrees": 10,
            "zoom": [0.9, 1.1],
            "noise_std": 0.02,
            "contrast_gamma": [0.8, 1.2],
        },
    },
)


def _squares(n=24, size=32, seed=0):
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


def test_packaged_weights_land_in_the_timm_model_unchanged():
    source = torch.load(weights.packaged_source(), map_location="cpu", weights_only=True)
    model, origin = models.build_classifier("tf_efficientnet_lite0", "packaged", 1000)
    ours = model.state_dict()
    theirs = list(source.values())
    # the stem is adapted to one channel by summing RGB; later layers are copied as is
    for name, tensor in list(zip(ours, theirs, strict=False))[1:20]:
        assert torch.equal(ours[name], tensor), name
    assert "ImageNet" in origin


def test_missing_weights_file_is_an_error_never_random_weights(tmp_path):
    with pytest.raises(weights.WeightsError, match="never falls back"):
        models.build_classifier("resnet18", str(tmp_path / "missing.pth"), 2)


def test_hub_weights_need_an_explicit_allow():
    with pytest.raises(weights.WeightsError, match="allow_download"):
        models.build_classifier("resnet18", "hub", 2)


def test_allowed_hub_weights_still_refuse_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(weights.WeightsError, match="HF_HUB_OFFLINE"):
        models.build_classifier("resnet18", "hub", 2, allow_download=True)


def test_packaged_weights_are_refused_for_another_backbone():
    with pytest.raises(weights.WeightsError, match="only for tf_efficientnet_lite0"):
        models.build_classifier("resnet18", "packaged", 2)


def test_best_checkpoint_is_a_copy_not_the_live_model():
    """The kept epoch (1 here: the validation metric falls after it) must not move while the
    live model trains on for two more epochs, nor share its storage."""
    images, _, labels = _squares()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 2))
    dataset = pipeline.ArrayDataset(images, np.arange(16), labels=labels)
    criterion = torch.nn.CrossEntropyLoss()
    after_epoch = []

    def step(batch):
        return criterion(model(batch["image"]), batch["label"])

    def validate():
        after_epoch.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return 0.0, 1.0 / len(after_epoch)

    cfg = filled("train", {"classifier": {"lr": 0.1, "batch_size": 8, "epochs": 3}})["classifier"]
    result = engine.fit(model, dataset, step, validate, cfg, torch.device("cpu"), seed=0)
    assert result.best_epoch == 1 and list(result.history["epoch"]) == [1, 2, 3]
    live = model.state_dict()
    for name, kept in result.state.items():
        assert torch.equal(kept, after_epoch[0][name]), f"kept {name} moved after epoch 1"
        assert kept.untyped_storage().data_ptr() != live[name].untyped_storage().data_ptr()
    assert not all(torch.equal(result.state[k], live[k]) for k in live)  # training went on


def test_training_is_deterministic_on_cpu_for_a_seed():
    images, _, labels = _squares()
    a, _ = classifier.train_classifier(
        images, labels, np.arange(16), np.arange(16, 24), 2, TRAIN, 3
    )
    b, _ = classifier.train_classifier(
        images, labels, np.arange(16), np.arange(16, 24), 2, TRAIN, 3
    )
    pd.testing.assert_frame_equal(
        a.history.drop(columns="seconds"), b.history.drop(columns="seconds")
    )


def test_saved_model_reloads_and_predicts_a_folder(tmp_path):
    images, _, labels = _squares()
    result, origin = classifier.train_classifier(
        images, labels, np.arange(16), np.arange(16, 24), 2, TRAIN, seed=0
    )
    meta = {
        "task": "classifier",
        "arch": "tf_efficientnet_lite0",
        "classes": ["neg", "pos"],
        "modality": "xray",
        "weights_origin": origin,
        "preprocess": {
            "image_size": 32,
            "ct_window": {"center": 0, "width": 1},
            "percentiles": {"mri": [1, 99], "xray": [0, 100]},
        },
    }
    models.save_model(tmp_path / "m", result.state, meta, result.history)
    for i in range(3):
        write_png(tmp_path / "imgs" / "sub" / f"{i}.png", images[i])
    (tmp_path / "imgs" / "readme.txt").write_text("skip me: not an image")
    table = predict.predict_folder(tmp_path / "m", tmp_path / "imgs")
    assert list(table.columns[:3]) == ["path", "prob_neg", "prob_pos"]
    assert len(table) == 3
    np.testing.assert_allclose(table[["prob_neg", "prob_pos"]].sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="val_prior"):  # a model from before the prior
        predict.predict_folder(tmp_path / "m", tmp_path / "imgs", adapt_prevalence=True)
    models.save_model(tmp_path / "m2", result.state, meta | {"val_prior": [0.5, 0.5]},
                      result.history)  # fmt: skip
    adapted = predict.predict_folder(tmp_path / "m2", tmp_path / "imgs", adapt_prevalence=True)
    priors = adapted[["batch_prior_neg", "batch_prior_pos"]].to_numpy()
    assert np.allclose(priors, priors[0]) and priors[0].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(adapted[["prob_neg", "prob_pos"]].sum(axis=1), 1.0, atol=1e-5)
    shifted = priors[0, 1] > 0.5
    assert (adapted["prob_pos"] >= table["prob_pos"]).all() == shifted  # moved with the mix


def test_training_resumes_from_the_last_checkpoint_after_an_interruption(
    tmp_path, monkeypatch, caplog
):
    images, _, labels = _squares()
    cfg = TRAIN | {"classifier": TRAIN["classifier"] | {"epochs": 3}}
    checkpoint = tmp_path / "ckpt.pt"
    real_save = engine.save_checkpoint

    def save_then_die(path, model, optimizer, scheduler, loader, state):
        real_save(path, model, optimizer, scheduler, loader, state)
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        classifier.train_classifier(images, labels, np.arange(16), np.arange(16, 24), 2, cfg, 0,
                                    checkpoint)  # fmt: skip
    first_two = pd.DataFrame(torch.load(checkpoint, weights_only=False)["state"]["rows"])
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="radflow.learning.engine"):
        result, _ = classifier.train_classifier(
            images, labels, np.arange(16), np.arange(16, 24), 2, cfg, 0, checkpoint
        )
    trained = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [m.split(":")[0] for m in trained] == ["epoch 3/3"], "epochs trained on resume"
    pd.testing.assert_frame_equal(result.history.iloc[:2], first_two)  # seconds too: not rerun
    # and the resumed run is the run that was never interrupted
    whole, _ = classifier.train_classifier(images, labels, np.arange(16), np.arange(16, 24), 2,
                                           cfg, 0)  # fmt: skip
    pd.testing.assert_frame_equal(
        result.history.drop(columns="seconds"), whole.history.drop(columns="seconds")
    )


def test_early_stopping_ends_training_after_patience_epochs_without_gain():
    images, _, labels = _squares()
    cfg = TRAIN | {"classifier": TRAIN["classifier"] | {"epochs": 30, "patience": 2}}
    result, _ = classifier.train_classifier(images, labels, np.arange(16), np.arange(16, 24), 2,
                                       cfg, 0)  # fmt: skip
    assert len(result.history) < 30
    assert len(result.history) - result.best_epoch == 2


def test_backbone_learns_slower_than_the_new_head():
    model, _ = models.build_classifier("tf_efficientnet_lite0", None, 2)
    groups = engine.param_groups(model, 1e-3, 0.1)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    head = {id(p) for p in model.get_classifier().parameters()}
    assert {id(p) for p in groups[1]["params"]} == head


def test_decision_fits_temperature_and_threshold_on_validation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    signal = (labels * 2 - 1) + rng.normal(0, 1, 200)
    logits = np.stack([-signal, signal], axis=1) * 5
    out = classifier.decide(logits, labels, filled("train", {})["decision"])
    assert out["temperature"] > 1 and out["val_ece"] < out["val_ece_uncalibrated"]
    assert 0 < out["threshold"] < 1 and out["threshold_policy"] == "youden"


def test_a_checkpoint_from_other_data_is_not_resumed(tmp_path, monkeypatch):
    images, _, labels = _squares()
    cfg = TRAIN | {"classifier": TRAIN["classifier"] | {"epochs": 2}}
    checkpoint = tmp_path / "ckpt.pt"
    real_save = engine.save_checkpoint

    def save_then_die(path, model, optimizer, scheduler, loader, state):
        real_save(path, model, optimizer, scheduler, loader, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        classifier.train_classifier(images, labels, np.arange(16), np.arange(16, 24), 2, cfg, 0,
                               checkpoint)  # fmt: skip
    old_first = torch.load(checkpoint, weights_only=False)["state"]["rows"][0]["train_loss"]
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    other = images.copy()
    other[:, :4, :4] = 255
    result, _ = classifier.train_classifier(other, labels, np.arange(16), np.arange(16, 24), 2, cfg,
                                       0, checkpoint)  # fmt: skip
    assert list(result.history["epoch"]) == [1, 2]
    assert result.history["train_loss"].iloc[0] != old_first  # epoch 1 was trained anew


def test_channels_last_layout_gives_the_same_predictions():
    import copy

    net = models.build_classifier("tf_efficientnet_lite0", None, 3)[0].eval()
    fast = models.fast_layout(copy.deepcopy(net)).eval()
    # channel stride 1 is what makes convolutions take the channels-last kernels (with one
    # input channel, is_contiguous() is true for both layouts)
    assert fast.conv_stem.weight.stride(1) == 1 and net.conv_stem.weight.stride(1) == 9
    images = torch.randint(0, 256, (2, 64, 64), dtype=torch.uint8)
    x = models.normalise_batch(images)
    assert x.stride(1) == 1
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x.contiguous()), rtol=1e-4, atol=1e-4)


def _confounded(n=32, size=128, seed=0):
    """Positives carry a lesion (masked) and a bright left border, a shortcut that predicts
    the label just as well; negatives carry neither."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    lesions = np.zeros_like(images)
    labels = np.arange(n) % 2
    for i in np.flatnonzero(labels):
        y, x = rng.integers(size // 2, size - 48, 2)
        images[i, y : y + 48, x : x + 48] = 220
        lesions[i, y : y + 48, x : x + 48] = 1
        images[i, :, :16] = 255
    return images, lesions, labels


def test_outside_lesion_fraction_counts_class_evidence_outside_the_lesion_only():
    head = torch.nn.Linear(2, 2, bias=False)
    head.weight.data = torch.eye(2)
    features = torch.zeros(3, 2, 4, 4)
    features[:, 1, 0, 0] = 1.0  # class 1 evidence in the top-left cell only
    masks = torch.zeros(3, 1, 8, 8)
    masks[0, 0, :2, :2] = 1  # the lesion covers that cell
    masks[1, 0, 6:, 6:] = 1  # the lesion is elsewhere; image 2 has none
    targets = torch.ones(3, dtype=torch.long)

    def outside(rows: slice) -> float:
        fraction = classifier.outside_lesion_fraction(
            features[rows], head, targets[rows], masks[rows]
        )
        return float(fraction)

    assert outside(slice(0, 1)) == pytest.approx(0.0)
    assert outside(slice(1, 2)) == pytest.approx(1.0)
    assert outside(slice(0, 3)) == pytest.approx(0.5)  # image 2, without a lesion, does not count
    assert outside(slice(2, 3)) == 0.0


def test_lesion_attention_moves_class_evidence_onto_the_lesion():
    images, lesions, labels = _confounded()
    cfg = {**TRAIN, "augment": NO_AUGMENT}
    cfg["classifier"] = {**TRAIN["classifier"], "epochs": 8, "lr": 3e-3}
    positives = np.flatnonzero(labels)

    def outside_after_training(weight: float) -> float:
        cfg["classifier"]["lesion_attention"] = weight
        result, _ = classifier.train_classifier(
            images, labels, np.arange(24), np.arange(24, 32), 2, cfg, 0, None, lesions
        )
        model, _ = models.build_classifier("tf_efficientnet_lite0", None, 2)
        model.load_state_dict(result.state)
        model.eval()
        with torch.no_grad():
            features = model.forward_features(
                models.normalise_batch(torch.from_numpy(images[positives]))
            )
            return float(
                classifier.outside_lesion_fraction(
                    features,
                    model.get_classifier(),
                    torch.ones(len(positives), dtype=torch.long),
                    torch.from_numpy(lesions[positives])[:, None],
                )
            )

    plain, attended = outside_after_training(0.0), outside_after_training(5.0)
    assert attended < plain - 0.15


def test_lesion_attention_without_any_lesion_is_a_clear_error():
    images, _, labels = _squares()
    cfg = {**TRAIN, "classifier": {**TRAIN["classifier"], "lesion_attention": 1.0}}
    with pytest.raises(ValueError, match="lesion_attention"):
        classifier.train_classifier(
            images, labels, np.arange(16), np.arange(16, 24), 2, cfg, 0, None,
            np.zeros_like(images),
        )  # fmt: skip


def test_lesion_attention_refuses_a_head_that_is_not_pooling_then_linear():
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=2, in_chans=1)
    with pytest.raises(ValueError, match="pooling then one linear layer"):
        models.linear_head(model)
    lite0, _ = models.build_classifier("tf_efficientnet_lite0", None, 2)
    assert models.linear_head(lite0) is lite0.get_classifier()


def test_output_stride_16_doubles_the_feature_map_keeps_the_weights_and_reloads(tmp_path):
    coarse, _ = models.build_classifier("tf_efficientnet_lite0", "packaged", 3)
    fine, _ = models.build_classifier("tf_efficientnet_lite0", "packaged", 3, output_stride=16)
    for (name, a), b in zip(coarse.state_dict().items(), fine.state_dict().values(), strict=True):
        if not name.startswith("classifier"):
            assert torch.equal(a, b), name
    x = torch.zeros(1, 1, 64, 64)
    fine.eval()
    coarse.eval()
    assert fine.forward_features(x).shape[-1] == 2 * coarse.forward_features(x).shape[-1]
    meta = {"task": "classifier", "arch": "tf_efficientnet_lite0", "classes": list("abc")}
    models.save_model(tmp_path, fine.state_dict(), meta | {"output_stride": 16}, pd.DataFrame())
    loaded, _ = models.load_model(tmp_path)
    assert loaded.forward_features(x).shape == fine.forward_features(x).shape


def test_keep_last_returns_the_final_epoch_whatever_the_validation_says():
    images, _, labels = _squares()
    cfg = TRAIN | {"classifier": TRAIN["classifier"] | {"epochs": 3, "keep": "last"}}
    result, _ = classifier.train_classifier(
        images, labels, np.arange(16), np.arange(16, 24), 2, cfg, 0
    )
    assert result.best_epoch == 3
    assert result.best_metric == result.history["val_metric"].iloc[-1]


def test_output_stride_on_a_backbone_that_cannot_dilate_is_a_clear_error():
    with pytest.raises(ValueError, match="output_stride 16: vit_tiny_patch16_224 cannot dilate"):
        models.build_classifier("vit_tiny_patch16_224", None, 2, output_stride=16)


def test_early_stopping_still_counts_from_the_best_epoch_when_the_last_is_kept():
    images, _, labels = _squares()
    cfg = TRAIN | {"classifier": TRAIN["classifier"] | {"epochs": 30, "patience": 2}}
    best, _ = classifier.train_classifier(
        images, labels, np.arange(16), np.arange(16, 24), 2, cfg, 0
    )
    cfg["classifier"] = cfg["classifier"] | {"keep": "last"}
    last, _ = classifier.train_classifier(
        images, labels, np.arange(16), np.arange(16, 24), 2, cfg, 0
    )
    assert len(last.history) == len(best.history) < 30
    assert last.best_epoch == len(last.history)

"""The segmenter: architectures from params, training, post-processing, geometry, metrics per
slice and per patient, exports (PNG, NIfTI, DICOM SEG), predict, the LGG overlay."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from conftest import filled, train_segmenter_dir, write_dicom, write_png
from PIL import Image

from radflow import cli
from radflow.core import export, params
from radflow.core.fileio import read_json
from radflow.data import sources
from radflow.data.preprocess import to_square
from radflow.evaluation import segmentation as evseg
from radflow.evaluation.render import mask_overlay_png
from radflow.learning import models, overlap, pipeline, predict, segmentation, weights

ROOT = Path(__file__).resolve().parents[1]
LGG = ROOT.parent / "shared" / "datasets" / "mri-lgg-segmentation"

TRAIN = filled("train", {
    "device": "cpu",
    "segmenter": {"arch": "unet", "epochs": 10, "batch_size": 4, "lr": 1e-2,
                  "channels": [4, 8, 16]},
    "augment": {"flip_prob": 0.5, "rotate_degrees": 10, "zoom": [0.9, 1.1], "noise_std": 0.02,
                "contrast_gamma": [0.8, 1.2]},
})  # fmt: skip


def _squares(n: int = 32, size: int = 32, seed: int = 0):
    """Half the images carry a bright square; the mask marks it."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
    masks = np.zeros_like(images)
    for i in range(1, n, 2):
        y, x = rng.integers(4, size - 12, 2)
        images[i, y : y + 8, x : x + 8] = 220
        masks[i, y : y + 8, x : x + 8] = 1
    return images, masks


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small U-Net trained on squares, saved as a model directory."""
    images, masks = _squares()
    return train_segmenter_dir(tmp_path_factory.mktemp("segmenter"), images, masks, 24, TRAIN)


# --------------------------------------------------------------------- architectures


def test_flexible_unet_lite0_encoder_starts_from_the_packaged_imagenet_weights():
    model, origin = models.build_segmenter({"arch": "flexible_unet_lite0"})
    classifier, _ = models.build_classifier("tf_efficientnet_lite0", "packaged", 2)
    ours, theirs = model.encoder.model.state_dict(), classifier.state_dict()
    shared = [k for k in ours if k in theirs]
    assert len(shared) > 100
    for name in shared:
        assert torch.equal(ours[name], theirs[name]), name
    assert "ImageNet" in origin
    out = model.eval()(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, 1, 64, 64)


def test_lite0_encoder_with_a_missing_weights_file_is_an_error_not_random_weights(tmp_path):
    cfg = {"arch": "flexible_unet_lite0", "encoder_weights": str(tmp_path / "none.pth")}
    with pytest.raises(weights.WeightsError, match="never falls back"):
        models.build_segmenter(cfg)


def test_unknown_architecture_names_the_params_key():
    with pytest.raises(ValueError, match="train.segmenter.arch"):
        models.build_segmenter({"arch": "vnet"})


def test_saved_lite0_segmenter_reloads_without_pretrained_weights(tmp_path):
    cfg = {"arch": "flexible_unet_lite0", "decoder_channels": [32, 16, 8, 8, 8]}
    model, _ = models.build_segmenter(cfg)
    meta = {"task": "segmenter", "trained": True, **segmentation.settings(cfg)}
    models.save_model(tmp_path, model.state_dict(), meta, pd.DataFrame())
    loaded, _ = models.load_model(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():  # same weights; float sums may differ in the last bits
        torch.testing.assert_close(loaded(x), model.eval()(x), atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------- training


def test_segmenter_outlines_the_squares(trained):
    model, meta = models.load_model(trained)
    images, masks = _squares()
    lesion = np.arange(25, 32, 2)
    pred, probs = segmentation.predict_masks(model, images[lesion], meta)
    assert overlap.mean_dice(pred, masks[lesion] > 0) > 0.7
    assert probs.shape == pred.shape and probs.min() >= 0 and probs.max() <= 1
    assert meta["arch"] == "unet" and meta["postprocess"]["threshold"] == 0.5


def test_patch_training_runs_on_lesion_centred_patches():
    images, masks = _squares(n=16, size=48)
    crop = segmentation.patch_sampler({"patch_size": 24, "patch_lesion_fraction": 1.0}, 48, 0)
    lesion = pipeline.ArrayDataset(images, np.arange(1, 16, 2), masks=masks, crop=crop)
    items = [lesion[i] for i in range(len(lesion))]
    assert all(it["image"].shape == it["mask"].shape == (1, 24, 24) for it in items)
    assert all(it["mask"].any() for it in items)  # every patch centred on the lesion
    assert segmentation.patch_sampler({"patch_size": 0}, 48, 0) is None
    cfg = TRAIN | {"segmenter": TRAIN["segmenter"] | {"epochs": 1, "patch_size": 24}}
    result, _ = segmentation.train_segmenter(
        images, masks, np.arange(12), np.arange(12, 16), cfg, 0
    )
    assert len(result.history) == 1


def test_lesion_slices_are_oversampled_per_epoch():
    masks = np.zeros((6, 4, 4), dtype=np.uint8)
    masks[[1, 3], 0, 0] = 1
    idx = np.arange(6)
    assert list(segmentation.epoch_indices(idx, masks, 1.0)) == list(idx)
    assert sorted(segmentation.epoch_indices(idx, masks, 2.0)) == [0, 1, 1, 2, 3, 3, 4, 5]
    assert len(segmentation.epoch_indices(idx, masks, 1.5)) == 7


# ------------------------------------------------------------- inference and post


def test_sliding_window_inference_covers_the_whole_image(trained):
    model, meta = models.load_model(trained)
    images, _ = _squares(n=2, size=48)
    window = {"mode": "sliding_window", "roi_size": 32, "overlap": 0.5}
    probs = segmentation.predict_mask_probs(model, images, window)
    assert probs.shape == (2, 48, 48) and np.isfinite(probs).all()
    mirrored = segmentation.predict_mask_probs(model, images[:, :, ::-1].copy(), {"flip_tta": True})
    plain = segmentation.predict_mask_probs(model, images, {"flip_tta": True})
    np.testing.assert_allclose(mirrored, plain[:, :, ::-1], atol=1e-5)  # symmetric by design
    with pytest.raises(ValueError, match="sliding_window"):
        segmentation.predict_mask_probs(model, images, {"mode": "tiles"})


def test_postprocess_removes_small_components_then_keeps_the_largest():
    probs = np.zeros((1, 20, 20))
    probs[0, 1:3, 1:3] = 0.9  # 4 pixels
    probs[0, 5:10, 5:10] = 0.8  # 25 pixels
    probs[0, 12:18, 12:18] = 0.7  # 36 pixels
    assert segmentation.postprocess(probs, {"threshold": 0.5}).sum() == 65
    assert segmentation.postprocess(probs, {"threshold": 0.75}).sum() == 29
    assert segmentation.postprocess(probs, {"min_size": 10}).sum() == 61
    largest = segmentation.postprocess(probs, {"largest_component": True})
    assert largest.sum() == 36 and largest[0, 15, 15]


def test_masks_return_to_the_original_grid_after_pad_and_resize():
    original = np.zeros((30, 20), dtype=bool)
    original[10:20, 4:12] = True
    # the model's view: padded to 30 x 30 and resized to 16, as preprocess does with images
    probs = to_square(original.astype(np.float32), 16, "area")
    small = probs > 0.5
    back = segmentation.restore_geometry(probs, small, original.shape)
    assert back.shape == original.shape
    inter = (back & original).sum()
    assert 2 * inter / (back.sum() + original.sum()) > 0.9
    assert not segmentation.restore_geometry(probs, np.zeros_like(small), (30, 20)).any()


def test_best_median_and_worst_cases_come_from_lesion_images_only():
    dice = np.array([1.0, 0.9, 0.2, 0.5, 0.7])
    lesion = np.array([False, True, True, True, True])
    cases = evseg.pick_cases(dice, dice, lesion)
    assert [(c.rank, c.position) for c in cases] == [("best", 1), ("median", 4), ("worst", 2)]
    assert evseg.pick_cases(dice, dice, np.zeros(5, dtype=bool)) == []


# ------------------------------------------------------------------------ metrics


def _square(size: int, r: int, c: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[r : r + side, c : c + side] = True
    return mask


def test_hd95_is_defined_only_where_truth_and_prediction_both_exist():
    true = np.stack([_square(32, 8, 8, 8), _square(32, 8, 8, 8), np.zeros((32, 32), bool)])
    pred = np.stack([_square(32, 8, 11, 8), np.zeros((32, 32), bool), _square(32, 1, 1, 3)])
    hd = evseg.hd95_per_image(pred, true)
    assert hd[0] == pytest.approx(3.0)
    assert np.isnan(hd[1]) and np.isnan(hd[2])


def test_empty_cases_are_reported_apart_as_false_positive_and_missed_rates():
    empty = np.zeros((32, 32), bool)
    true = np.stack([_square(32, 8, 8, 8), _square(32, 8, 8, 8), empty, empty, empty, empty])
    pred = np.stack([_square(32, 8, 8, 8), empty, _square(32, 1, 1, 3), empty, empty, empty])
    summary, table = evseg.segmentation_metrics(pred, true, 50, 0.95, 0)
    assert summary["n_empty"] == 4 and summary["n_lesion"] == 2
    assert summary["fp_rate_empty"]["value"] == pytest.approx(0.25)
    assert summary["fn_rate_lesion"]["value"] == pytest.approx(0.5)
    assert summary["hd95"]["value"] == pytest.approx(0.0) and summary["n_hd95"] == 1
    assert table["pred_empty"].tolist() == [False, True, False, True, True, True]
    json.dumps(summary, allow_nan=False)


def test_per_patient_dice_pools_the_slices_of_each_patient():
    a = _square(16, 2, 2, 4)  # 16 pixels
    b = _square(16, 2, 2, 8)  # 64 pixels
    true = np.stack([a, b, b])
    pred = np.stack([a, np.zeros_like(b), b])
    summary, _ = evseg.segmentation_metrics(
        pred, true, 200, 0.95, 0, patients=np.array(["p", "p", "q"])
    )
    per = summary["per_patient"]
    assert per["n_patients"] == 2
    # p: overlap 16 of sizes 16 + (16 + 64) -> 2*16/96; q: perfect
    assert per["dice"]["value"] == pytest.approx((32 / 96 + 1.0) / 2)
    assert per["dice"]["ci_low"] <= per["dice"]["value"] <= per["dice"]["ci_high"]
    assert summary["bootstrap"].startswith("patients")
    with pytest.raises(ValueError, match="patient keys"):
        evseg.segmentation_metrics(pred, true, 10, 0.95, 0, patients=np.array(["p"]))


# ------------------------------------------------------------------------ exports


def _mr_with_geometry(path: Path, pixels: np.ndarray) -> Path:
    """An MR image with the frame of reference and plane geometry a viewer needs."""
    ds = pydicom.dcmread(write_dicom(path, pixels, "MR"))
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.ImagePositionPatient = [-100.0, -120.0, 30.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 3.0
    ds.save_as(path, enforce_file_format=True)
    return path


def test_nifti_export_keeps_the_mask_and_the_dicom_geometry():
    ds = pydicom.Dataset()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-100.0, -120.0, 30.0]
    ds.PixelSpacing = [0.5, 0.8]  # row spacing, column spacing
    mask = _square(20, 3, 5, 4)[:, :12]
    affine = export.nifti_affine(ds)
    image = nib.Nifti1Image.from_bytes(
        __import__("gzip").decompress(export.nifti_bytes(mask, affine))
    )
    assert np.array_equal(np.asarray(image.dataobj)[:, :, 0].T.astype(bool), mask)
    np.testing.assert_allclose(image.affine[:3, 3], [100.0, 120.0, 30.0])
    np.testing.assert_allclose(np.diag(image.affine)[:2], [-0.8, -0.5])
    assert np.allclose(export.nifti_affine(None), np.eye(4))


def test_dicom_seg_references_its_source_and_holds_the_mask(tmp_path):
    source = pydicom.dcmread(_mr_with_geometry(tmp_path / "a.dcm", np.zeros((16, 16))))
    mask = _square(16, 4, 4, 5)
    seg = export.dicom_seg(source, mask, "tumour")
    again = pydicom.dcmread(__import__("io").BytesIO(export.dicom_bytes(seg)))
    assert again.Modality == "SEG" and again.SegmentSequence[0].SegmentLabel == "tumour"
    ref = again.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert again.StudyInstanceUID == source.StudyInstanceUID
    assert np.array_equal(again.pixel_array.astype(bool), mask)
    with pytest.raises(ValueError, match="does not match"):
        export.dicom_seg(source, mask[:8], "tumour")
    bare = pydicom.dcmread(write_dicom(tmp_path / "b.dcm", np.zeros((16, 16)), "MR"))
    with pytest.raises(ValueError, match="Frame Of Reference"):
        export.dicom_seg(bare, mask, "tumour")


# ------------------------------------------------------------------------ predict


def test_predict_writes_a_mask_png_per_image_with_area_and_confidence(trained, tmp_path):
    images, masks = _squares(n=4)
    folder = tmp_path / "in"
    for i, image in enumerate(images):
        write_png(folder / ("sub" if i % 2 else "") / f"img{i}.png", image)
    _mr_with_geometry(folder / "scan" / "IMG1.dcm", images[1].astype(np.uint16))
    write_dicom(folder / "scan" / "IMG2.dcm", images[1].astype(np.uint16), "MR")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert (
        cli.main(["predict", "--model", str(trained), "--images", str(folder), "--out", str(out)])
        == 0
    )
    table = pd.read_csv(out / predict.MASK_TABLE, keep_default_na=False)
    assert len(table) == 7
    row = table.set_index("path").loc["sub/img1.png"]
    png = np.asarray(Image.open(out / "sub" / "img1.png"))
    assert set(np.unique(png)) <= {0, 255} and png.shape == (32, 32)
    assert int(row["tumour_pixels"]) == int((png == 255).sum()) > 0
    assert float(row["confidence"]) > 0.5
    assert (out / "sub" / "img1.nii.gz").is_file()
    assert table.set_index("path").loc["broken.png", "error"] != ""
    dicom_row = table.set_index("path").loc["scan/IMG1.dcm"]
    assert dicom_row["mask"] == "scan/IMG1.png" and dicom_row["dicom_seg"] == "scan/IMG1.seg.dcm"
    assert pydicom.dcmread(out / "scan" / "IMG1.seg.dcm").Modality == "SEG"
    bare = table.set_index("path").loc["scan/IMG2.dcm"]  # no frame of reference: PNG only
    assert bare["dicom_seg"] == "" and "Frame Of Reference" in bare["note"]
    assert (out / "scan" / "IMG2.png").is_file()


def test_predict_refuses_to_overwrite_a_folder_of_other_files(trained, tmp_path):
    (tmp_path / "in").mkdir()
    write_png(tmp_path / "in" / "a.png", np.zeros((32, 32)))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    args = ["predict", "--model", str(trained), "--images", str(tmp_path / "in")]
    assert cli.main([*args, "--out", str(tmp_path / "busy")]) == 2
    assert (tmp_path / "busy" / "notes.txt").exists()


def test_predict_refuses_two_images_that_would_share_one_mask(trained, tmp_path):
    write_png(tmp_path / "in" / "a.png", np.zeros((32, 32)))
    write_png(tmp_path / "in" / "a.jpg", np.zeros((32, 32)))
    with pytest.raises(ValueError, match="same mask"):
        list(predict.segment_folder(trained, tmp_path / "in"))


# -------------------------------------------------------------- sources and overlay


def test_label_from_a_numeric_column_and_masks_from_their_own_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "s.csv").write_text("file,patient,pixels\na.png,P1,0\nb.png,P1,12\n")
    data = {
        "raw_dir": str(tmp_path / "images"), "labels_csv": str(tmp_path / "s.csv"),
        "columns": {"path": "file", "mask": "file", "patient_id": "patient"},
        "mask_dir": str(tmp_path / "masks"),
        "label_from": {"column": "pixels", "threshold": 0, "above": "tumour",
                       "otherwise": "no_tumour"},
    }  # fmt: skip
    table = sources.labels_table(sources.from_params(filled("data", data)))
    assert table["label"].tolist() == ["no_tumour", "tumour"]
    assert table["mask"].tolist() == ["../masks/a.png", "../masks/b.png"]
    (tmp_path / "s.csv").write_text("file,patient,pixels\na.png,P1,lots\nb.png,P1,3\n")
    table = sources.labels_table(sources.from_params(filled("data", data)))
    assert table["label"].tolist() == ["", "tumour"]
    assert table["problem"].tolist() == [
        "column 'pixels' (data.label_from.column) holds 'lots', not a number",
        "",
    ]


def test_lgg_overlay_is_valid_and_enables_the_pretrained_unet():
    overlay = params.read_yaml(ROOT / "params" / "mri-lgg-segmentation.yaml")
    merged = params.validate(params.merge(params.read_yaml(ROOT / "params.yaml"), overlay))
    seg = merged["train"]["segmenter"]
    assert seg["arch"] == "flexible_unet_lite0" and seg["encoder_weights"] == "packaged"
    assert merged["data"]["patient_key"]["source"] == "column"


@pytest.mark.skipif(not LGG.is_dir(), reason="../shared/datasets/mri-lgg-segmentation absent")
def test_lgg_adapter_labels_every_slice_and_finds_every_mask(monkeypatch):
    monkeypatch.chdir(ROOT)
    overlay = params.read_yaml(ROOT / "params" / "mri-lgg-segmentation.yaml")
    source = sources.from_params(filled("data", overlay["data"]))
    table = sources.labels_table(source)
    # judged against slices.csv read independently, so the set may grow (22 -> 88 patients)
    truth = pd.read_csv(LGG / "slices.csv")
    assert len(table) == len(truth) > 0
    assert (table["label"] == "tumour").sum() == (truth["tumour_pixels"] > 0).sum()
    assert all((source.raw_dir / m).is_file() for m in table["mask"])
    assert table["patient_id"].nunique() == truth["patient"].nunique()


def test_evaluate_writes_per_patient_metrics_and_case_overlays(trained, tmp_path):
    images, masks = _squares(n=8)
    index = pd.DataFrame({"array_index": range(8), "has_mask": 1})
    test = pd.DataFrame(
        {"image_id": [f"i{k}" for k in range(8)], "array_index": range(8),
         "patient_key": ["a", "a", "b", "b", "c", "c", "d", "d"]}
    )  # fmt: skip
    model, meta = models.load_model(trained)
    summary, table, overlays = evseg.evaluate_segmenter(
        model, meta, images, masks, index, test, 50, 0.95, 0
    )
    assert summary["per_patient"]["n_patients"] == 4
    assert [c["rank"] for c in summary["cases"]] == ["best", "median", "worst"]
    assert set(overlays) == {c["file"] for c in summary["cases"]}
    assert list(table.columns[:2]) == ["image_id", "patient_key"]
    assert read_json(trained / "meta.json")["arch"] == summary["settings"]["arch"]


# ------------------------------------------------------------------------- report


def test_report_shows_per_patient_metrics_and_best_median_worst_overlays():
    from test_report import _context

    from radflow.report import pages

    true = np.stack([_square(16, 2, 2, 6)] * 4 + [np.zeros((16, 16), bool)] * 2)
    pred = np.stack([_square(16, 2, 2 + k, 6) for k in range(4)] + [np.zeros((16, 16), bool)] * 2)
    summary, table = evseg.segmentation_metrics(
        pred, true, 50, 0.95, 0, patients=np.array(list("aabbcc"))
    )
    picks = evseg.pick_cases(
        table["dice"].to_numpy(), table["iou"].to_numpy(), ~table["truth_empty"].to_numpy()
    )
    summary["cases"] = [
        {"rank": c.rank, "image_id": f"img{c.position}", "dice": c.dice, "iou": c.iou,
         "hd95": None, "file": f"overlays/{c.rank}.png"}
        for c in picks
    ]  # fmt: skip
    overlays = {
        f"overlays/{c.rank}.png": mask_overlay_png(
            pred[c.position] * 200, true[c.position], pred[c.position]
        )
        for c in picks
    }
    context = _context()
    context["metrics"]["segmentation"] = summary
    context["segmentation_overlays"] = overlays
    context["segmenter_meta"] = {
        "trained": True,
        "arch": "flexible_unet_lite0",
        "weights_origin": "ImageNet",
        "postprocess": {"min_size": 30},
    }
    html = pages.render_modality_page(context)
    section = html[
        html.index('<section id="segmentation">') : html.index('<section id="explanations">')
    ]
    for key in ("patient-dice", "patient-iou", "patient-hd95", "fp_rate_empty", "hd95"):
        assert f'data-metric="{key}"' in section, key
    assert [m for m in ("best", "median", "worst") if f'data-rank="{m}"' in section] == [
        "best", "median", "worst"
    ]  # fmt: skip
    assert section.count("data:image/png;base64,") == 3
    assert "flexible_unet_lite0" in section and "min_size: 30" in section

"""2.5-D segmentation: slice positions from CSV and DICOM, neighbouring slices as channels,
and a segmenter that uses them in training, evaluation and predict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from conftest import filled, train_segmenter_dir, write_dicom, write_png

from radflow.core import imaging, volumes
from radflow.data import ingest, sources
from radflow.learning import models, overlap, predict, segmentation, weights
from radflow.report import views

TRAIN = filled("train", {
    "device": "cpu",
    "segmenter": {"arch": "unet", "epochs": 30, "batch_size": 8, "lr": 1e-2,
                  "channels": [8, 16, 32], "context_slices": 1},
    "augment": {"flip_prob": 0.0, "rotate_degrees": 0, "zoom": [1.0, 1.0], "noise_std": 0.0,
                "contrast_gamma": [1.0, 1.0]},
})  # fmt: skip


def _index(patients: list[str], positions: list[str], series: list[str] | None = None):
    return pd.DataFrame(
        {
            "patient_key": patients,
            "series_key": series or [""] * len(patients),
            "slice_position": positions,
            "source_path": [f"img{i}.png" for i in range(len(patients))],
        }
    )


def test_neighbours_follow_slice_position_within_each_volume():
    # rows out of order, two patients interleaved, a gap in the numbering (2 is missing)
    index = _index(["a", "b", "a", "a", "b", "a"], ["3", "10", "1", "4", "11", "0"])
    rows = volumes.neighbours(index, 1)
    # patient a in slice order: rows 5 (0), 2 (1), 0 (3), 3 (4)
    assert rows[5].tolist() == [5, 5, 2]  # first slice: its own lower neighbour
    assert rows[2].tolist() == [5, 2, 0]
    assert rows[0].tolist() == [2, 0, 3]  # the gap is bridged, not filled with another patient
    assert rows[3].tolist() == [0, 3, 3]
    assert rows[1].tolist() == [1, 1, 4] and rows[4].tolist() == [1, 4, 4]
    assert volumes.neighbours(index, 0).tolist() == [[i] for i in range(6)]


def test_two_series_of_one_patient_are_separate_volumes():
    index = _index(["a"] * 4, ["1", "2", "1", "2"], series=["s1", "s1", "s2", "s2"])
    rows = volumes.neighbours(index, 1)
    assert set(rows[:2].ravel()) == {0, 1} and set(rows[2:].ravel()) == {2, 3}


def test_context_without_slice_positions_is_an_error_that_names_the_keys():
    index = _index(["a", "a"], ["1", ""])
    with pytest.raises(
        volumes.SlicePositionError, match=r"1 of 2 .*img1\.png.*data\.columns\.slice"
    ):
        volumes.neighbours(index, 1)
    assert volumes.neighbours(index, 0).shape == (2, 1)  # no context: positions not needed


def test_stack_gives_channels_only_with_context():
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2)
    assert volumes.stack(images, np.array([[0], [1], [2]])).shape == (3, 2, 2)
    stacked = volumes.stack(images, np.array([[0, 0, 1], [0, 1, 2]]))
    assert stacked.shape == (2, 3, 2, 2)
    assert np.array_equal(stacked[1, 2], images[2])


def test_dicom_slice_position_runs_along_the_slice_normal():
    ds = pydicom.Dataset()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal: rows x columns = +y
    ds.ImagePositionPatient = [-100.0, 42.5, 30.0]
    assert float(imaging.slice_position(ds)) == pytest.approx(42.5)
    del ds.ImagePositionPatient
    ds.InstanceNumber = 7
    assert imaging.slice_position(ds) == "7"
    assert imaging.slice_position(pydicom.Dataset()) == ""


def test_the_csv_slice_column_reaches_the_manifest_and_a_non_number_quarantines_its_row(
    tmp_path,
):
    for value, name in enumerate(("p_1.png", "p_2.png")):
        write_png(tmp_path / "images" / name, np.arange(64).reshape(8, 8) + value)
    (tmp_path / "s.csv").write_text("file,patient,n,y\np_1.png,P,1,a\np_2.png,P,2,a\n")
    data = {
        "raw_dir": str(tmp_path / "images"), "labels_csv": str(tmp_path / "s.csv"),
        "columns": {"path": "file", "label": "y", "patient_id": "patient", "slice": "n"},
        "modality": "mri", "patient_key": {"source": "column"},
    }  # fmt: skip
    result = ingest.ingest(sources.from_params(filled("data", data)))
    assert sorted(result.manifest["slice_position"]) == ["1", "2"]
    (tmp_path / "s.csv").write_text("file,patient,n,y\np_1.png,P,first,a\np_2.png,P,2,a\n")
    result = ingest.ingest(sources.from_params(filled("data", data)))
    assert result.manifest["slice_position"].tolist() == ["2"]
    (reason,) = result.quarantine["reason"]
    assert reason == "column 'n' (data.columns.slice) holds 'first', not a number"


def test_the_lite0_encoder_takes_three_slices_on_the_unchanged_imagenet_stem():
    cfg = {"arch": "flexible_unet_lite0", "context_slices": 1}
    model, _ = models.build_segmenter(cfg)
    classifier = torch.load(
        weights.resolve(weights.PACKAGED_ARCH, weights.PACKAGED)[0], weights_only=True
    )
    assert torch.equal(model.encoder.model.conv_stem.weight, classifier["conv_stem.weight"])
    assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


# ------------------------------------------------------- a lesion told apart by its neighbours


def _tubes_and_blips(volumes_n: int = 24, depth: int = 5, size: int = 24, seed: int = 0):
    """Volumes in which a bright square that continues over three slices is lesion (masked),
    and the same square on one slice alone is not: one slice cannot tell them apart, the
    slice with its neighbours can."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (volumes_n * depth, size, size)).astype(np.uint8)
    images[:, 0, 0] = 255  # every slice spans 0..255, so min-max scaling leaves it alone
    masks = np.zeros_like(images)
    for v in range(volumes_n):
        y, x = rng.integers(2, size - 10, 2)
        first = v * depth + 1
        if v % 2:
            images[first : first + 3, y : y + 8, x : x + 8] = 200
            masks[first : first + 3, y : y + 8, x : x + 8] = 1
        else:
            images[first + 1, y : y + 8, x : x + 8] = 200
    positions = [str(s) for _ in range(volumes_n) for s in range(depth)]
    patients = [f"v{v}" for v in range(volumes_n) for _ in range(depth)]
    return images, masks, _index(patients, positions)


@pytest.fixture(scope="module")
def context_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, masks, index = _tubes_and_blips()
    inputs = segmentation.model_input(images, index, TRAIN["segmenter"])
    assert inputs.shape == (120, 3, 24, 24)
    out = tmp_path_factory.mktemp("context-segmenter")
    return train_segmenter_dir(out, inputs, masks, 100, TRAIN)


def test_a_context_segmenter_tells_a_lesion_through_slices_from_a_one_slice_blip(context_model):
    model, meta = models.load_model(context_model)
    assert meta["context_slices"] == 1
    images, masks, index = _tubes_and_blips(volumes_n=4, seed=1)
    inputs = segmentation.model_input(images, index, meta)
    pred, _ = segmentation.predict_masks(model, inputs, meta)
    tube = masks.reshape(len(masks), -1).any(1)
    assert overlap.mean_dice(pred[tube], masks[tube] > 0) > 0.7
    blip = np.array([v * 5 + 2 for v in (0, 2)])  # the one-slice squares, 64 pixels each
    assert pred[blip].sum() < 0.2 * 64 * len(blip)


def test_predict_reads_raster_slices_in_the_order_of_their_numbers(context_model, tmp_path):
    images, masks, _ = _tubes_and_blips(volumes_n=2, seed=2)
    folder = tmp_path / "in"
    for i, image in enumerate(images):  # names sort as strings out of slice order
        write_png(folder / f"case{i // 5}" / f"slice_{(i % 5) * 5}.png", image)
    write_png(folder / "loose.png", images[0])
    rows = {r["path"]: r for r, _ in predict.segment_folder(context_model, folder)}
    assert "neighbouring slice" in rows["loose.png"]["error"]
    for i in range(len(images)):
        row = rows[f"case{i // 5}/slice_{(i % 5) * 5}.png"]
        assert row["error"] == ""
        assert bool(row["tumour"]) == bool(masks[i].any()), i


def test_predict_groups_dicom_slices_by_series_and_position(tmp_path):
    paths = []
    for series, z in (("1.2.3", 5.0), ("1.2.3", -5.0), ("1.2.4", 0.0)):
        path = write_dicom(tmp_path / f"{series}_{z}.dcm", np.zeros((8, 8), np.uint16), "MR")
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    groups = list(predict.slice_groups(sorted(paths), tmp_path, 1, 16))
    assert [[p.name for p in g] for g, _ in groups] == [
        ["1.2.3_-5.0.dcm", "1.2.3_5.0.dcm"],
        ["1.2.4_0.0.dcm"],
    ]
    assert all(why == "" for _, why in groups)


def test_the_report_says_when_the_segmenter_reads_neighbouring_slices():
    base = {"trained": True, "arch": "unet", "weights_origin": "none"}
    assert "input" not in dict(views.segmenter_settings(base))
    rows = dict(views.segmenter_settings(base | {"context_slices": 1}))
    assert "1 neighbouring slice" in rows["input"]

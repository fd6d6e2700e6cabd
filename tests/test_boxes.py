"""Lesion boxes: from a labels CSV (data.boxes) through the manifest and preprocessing to the
lesion an explanation is scored against."""

import numpy as np
import pandas as pd
import pytest
from conftest import filled, write_png

from radflow.core import lesions, manifest
from radflow.data import ingest, preprocess, sources


def _boxed_cohort(root, rng, box_x="30", box_w="20"):
    write_png(root / "images/1.png", rng.integers(0, 255, (40, 80)))
    write_png(root / "images/2.png", rng.integers(0, 255, (40, 80)))
    pd.DataFrame(
        {
            "file": ["1.png", "2.png"],
            "label_name": ["glioma", "pituitary"],
            "box_x": [box_x, ""],
            "box_y": ["20", ""],
            "box_w": [box_w, ""],
            "box_h": ["10", ""],
            "patient": ["P1", "P2"],
        }
    ).to_csv(root / "labels.csv", index=False)
    return {
        "raw_dir": str(root / "images"),
        "labels_csv": str(root / "labels.csv"),
        "columns": {"path": "file", "label": "label_name", "patient_id": "patient"},
        "modality": "mri",
        "patient_key": {"source": "column"},
        "boxes": {"columns": ["box_x", "box_y", "box_w", "box_h"], "format": "cxcywh"},
    }


@pytest.mark.parametrize(
    ("fmt", "values", "corners"),
    [
        ("cxcywh", ["30", "20", "20", "10"], "20 15 40 25"),
        ("xywh", ["20", "15", "20", "10"], "20 15 40 25"),
        ("xyxy", ["20", "15", "40", "25"], "20 15 40 25"),
    ],
)
def test_box_formats_become_the_same_corners(fmt, values, corners):
    raw = pd.DataFrame([values], columns=["a", "b", "c", "d"])
    rule = sources.BoxRule(columns=("a", "b", "c", "d"), format=fmt)
    boxes, problems = rule.apply(raw, "labels.csv")
    assert boxes.iloc[0] == corners and problems.iloc[0] == ""


def test_boxes_reach_the_manifest_and_rows_without_one_stay_empty(tmp_path, rng):
    source = sources.from_params(filled("data", _boxed_cohort(tmp_path, rng)))
    frame = manifest.validate(ingest.ingest(source).manifest).set_index("label")
    assert frame.loc["glioma", "box"] == "20 15 40 25"
    assert frame.loc["pituitary", "box"] == ""


def test_non_numeric_box_quarantines_its_row_naming_the_key(tmp_path, rng):
    source = sources.from_params(filled("data", _boxed_cohort(tmp_path, rng, box_x="left")))
    result = ingest.ingest(source)
    assert len(result.manifest) == 1 and result.manifest["box"].tolist() == [""]
    (reason,) = result.quarantine["reason"]
    assert "non-numeric box" in reason and "data.boxes" in reason


def test_missing_box_column_is_an_error_naming_it(tmp_path, rng):
    data = _boxed_cohort(tmp_path, rng)
    data["boxes"]["columns"] = ["box_x", "box_y", "box_w", "width"]
    with pytest.raises(sources.SourceError, match="width"):
        ingest.ingest(sources.from_params(filled("data", data)))


def test_box_follows_the_centred_pad_and_resize():
    # 40 rows x 80 cols: padded by 20 rows above, then 80 -> 40 px (scale 0.5)
    assert preprocess.box_to_processed("20 15 40 25", (40, 80), 40) == "10.00 17.50 20.00 22.50"
    assert preprocess.box_to_processed("", (40, 80), 40) == ""


def test_box_marks_the_same_pixels_as_the_image_content_after_preprocessing():
    image = np.zeros((40, 80), dtype=np.float32)
    image[15:25, 20:40] = 1.0  # a bright block exactly where the box is
    processed = preprocess.to_square(image, 40, "nearest") > 0.5
    box = preprocess.box_to_processed("20 15 40 25", image.shape, 40)
    index = pd.DataFrame({"array_index": [0], "has_mask": [0], "box": [box]})
    lesion = lesions.lesions_from_index(np.zeros((1, 40, 40), np.uint8), index)[0]
    assert (lesion == processed).mean() > 0.97


def test_a_mask_wins_over_a_box_and_images_without_either_have_no_lesion():
    masks = np.zeros((3, 8, 8), np.uint8)
    masks[0, 1:3, 1:3] = 1
    index = pd.DataFrame(
        {"array_index": [0, 1, 2], "has_mask": [1, 0, 0], "box": ["4 4 8 8", "4 4 8 8", ""]}
    )
    found = lesions.lesions_from_index(masks, index)
    assert found[0].sum() == 4 and found[0][1, 1]
    assert found[1][4:, 4:].all() and found[1].sum() == 16
    assert 2 not in found

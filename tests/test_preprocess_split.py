import numpy as np
import pandas as pd
import pytest

from radflow.core import imaging
from radflow.data import preprocess, split

PP = {
    "image_size": 32,
    "ct_window": {"center": 40, "width": 400},
    "percentiles": {"mri": [1, 99], "xray": [0.5, 99.5]},
}


def test_ct_window_maps_hounsfield_units_to_unit_range():
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    out = preprocess.normalise(hu, "ct", PP)
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]])


def test_percentile_scaling_is_robust_to_a_hot_pixel(rng):
    pixels = rng.normal(100, 10, (64, 64))
    pixels[0, 0] = 1e6
    out = preprocess.normalise(pixels, "mri", PP)
    assert out.min() == 0.0 and out.max() == 1.0
    assert 0.3 < np.median(out) < 0.7  # the hot pixel did not squash the rest


def test_non_square_images_keep_their_aspect_ratio():
    pixels = np.zeros((40, 80), dtype=np.float32)
    pixels[:, :] = 1.0
    out = preprocess.to_square(pixels, 32, "area")
    assert out.shape == (32, 32)
    # padded rows top and bottom stay empty, the image band is in the middle
    assert out[0].max() == 0 and out[16].min() > 0.9


def test_mask_resize_stays_binary_and_aligned():
    mask = np.zeros((64, 64), bool)
    mask[8:24, 40:56] = True
    out = preprocess.prepare_mask(mask, 32)
    assert set(np.unique(out)) <= {0, 1}
    ys, xs = np.nonzero(out)
    assert 3 <= ys.min() <= 5 and 19 <= xs.min() <= 21


def test_a_row_whose_mask_or_image_fails_is_quarantined_and_the_rest_go_on():
    rows = pd.DataFrame(
        [
            {"source_path": p, "format": "png", "modality": "mri", "mask_path": m}
            for p, m in (("a", "m-small"), ("b", ""), ("broken", ""), ("c", "m"))
        ]
    )

    def pixels(path, fmt):
        if path == "broken":
            raise imaging.ImageReadError("pixel data cannot be decoded")
        return np.arange(400.0).reshape(20, 20)

    def mask(path):
        return np.ones((10, 10) if path == "m-small" else (20, 20), bool)

    done = preprocess.build_arrays(rows, PP, pixels, mask)
    assert done.index["source_path"].tolist() == ["b", "c"]
    assert done.index["array_index"].tolist() == [0, 1]
    assert done.index["has_mask"].tolist() == [0, 1]
    assert done.images.shape[0] == done.masks.shape[0] == 2
    assert done.masks[0].sum() == 0 and done.masks[1].all()
    reasons = {q.path: q.reason for q in done.quarantine}
    assert set(reasons) == {"a", "broken"}
    assert "pixel grid" in reasons["a"] and "decoded" in reasons["broken"]


def _index(n_patients=30, per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = "pos" if rng.random() < 0.4 else "neg"
        for k in range(per_patient):
            rows.append(
                {
                    "image_id": f"{p}-{k}",
                    "array_index": len(rows),
                    "patient_key": f"P{p}",
                    "label": label,
                }
            )
    return pd.DataFrame(rows)


def test_split_never_puts_a_patient_in_two_sets():
    table = split.assign_splits(_index(), 0.15, 0.15, seed=1)
    assert (table.groupby("patient_key")["split"].nunique() == 1).all()


def test_split_does_not_move_an_image_when_the_pseudonymisation_key_changes():
    index = _index()
    renamed = index.copy()  # another key: other pseudonyms, in another sorted order
    rng = np.random.default_rng(5)
    names = {p: f"RF-{rng.integers(1 << 40):010x}" for p in index["patient_key"].unique()}
    renamed["patient_key"] = renamed["patient_key"].map(names)
    a = split.assign_splits(index, 0.15, 0.15, seed=1)
    b = split.assign_splits(renamed, 0.15, 0.15, seed=1)
    assert (a["split"] == b["split"]).all()
    assert (b.groupby("patient_key")["split"].nunique() == 1).all()


def test_split_is_stratified_and_follows_the_fractions():
    table = split.assign_splits(_index(60), 0.15, 0.15, seed=1)
    shares = table["split"].value_counts(normalize=True)
    assert 0.08 < shares["test"] < 0.25 and 0.08 < shares["val"] < 0.25
    for part in ("train", "val", "test"):
        assert set(table.loc[table["split"] == part, "label"]) == {"pos", "neg"}


def test_split_is_reproducible_for_a_seed_and_changes_with_it():
    a = split.assign_splits(_index(), 0.15, 0.15, seed=1)
    b = split.assign_splits(_index(), 0.15, 0.15, seed=1)
    c = split.assign_splits(_index(), 0.15, 0.15, seed=2)
    assert a.equals(b) and not a["split"].equals(c["split"])


def test_split_refuses_too_few_patients():
    with pytest.raises(ValueError, match="patient"):
        split.assign_splits(_index(n_patients=2), 0.15, 0.15, seed=1)


def test_split_puts_every_class_in_every_set_even_with_few_patients():
    for seed in range(5):
        table = split.assign_splits(_index(n_patients=12, seed=seed), 0.2, 0.2, seed=seed)
        assert split.missing_cells(table) == [], seed
        assert (table.groupby("patient_key")["split"].nunique() == 1).all()

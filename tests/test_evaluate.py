"""Behaviour of the evaluation stage: metrics, bootstrap intervals, ROC/confusion tables, Dice."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from radflow.evaluation import bootstrap, reliability, subgroups
from radflow.evaluation import classification as cl
from radflow.evaluation import segmentation as seg
from radflow.learning import calibration as decision

CLASSES2 = ["negative", "positive"]
CLASSES3 = ["a", "b", "c"]


def _cases(n: int, n_classes: int, seed: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities of an imperfect classifier."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += signal
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


def _run(y, probs, classes, n_boot=300, ci_level=0.95, seed=0):
    return cl.classification_metrics(y, probs, classes, n_boot, ci_level, seed)


# ------------------------------------------------------------------ point estimates


@pytest.mark.parametrize("n_classes", [2, 3])
def test_vectorised_metrics_agree_with_scikit_learn_on_the_full_sample(n_classes):
    y, probs = _cases(60, n_classes, seed=1)
    batched = cl.batched_metrics(y[None], probs[None])
    points = cl.sklearn_point_estimates(y, probs)
    for name in cl.METRICS:
        assert batched[name][0] == pytest.approx(points[name], abs=1e-12), name


def test_binary_metrics_are_for_the_last_class():
    y, probs = _cases(80, 2, seed=2)
    pred = probs.argmax(axis=1)
    result = _run(y, probs, CLASSES2, n_boot=0)["classification"]
    assert result["sensitivity"]["value"] == pytest.approx(skm.recall_score(y, pred, pos_label=1))
    assert result["specificity"]["value"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert result["f1"]["value"] == pytest.approx(skm.f1_score(y, pred, pos_label=1))
    assert result["auc"]["value"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))


def test_swapping_the_class_order_swaps_sensitivity_and_specificity():
    y, probs = _cases(80, 2, seed=3)
    forward = _run(y, probs, CLASSES2, n_boot=0)["classification"]
    swapped = _run(1 - y, probs[:, ::-1], CLASSES2[::-1], n_boot=0)["classification"]
    assert swapped["sensitivity"]["value"] == pytest.approx(forward["specificity"]["value"])
    assert swapped["specificity"]["value"] == pytest.approx(forward["sensitivity"]["value"])
    assert swapped["auc"]["value"] == pytest.approx(forward["auc"]["value"])


def test_multiclass_uses_macro_averages_and_one_vs_rest_auc():
    y, probs = _cases(90, 3, seed=4)
    pred = probs.argmax(axis=1)
    result = _run(y, probs, CLASSES3, n_boot=0)["classification"]
    assert result["sensitivity"]["value"] == pytest.approx(result["balanced_accuracy"]["value"])
    assert result["f1"]["value"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    expected_auc = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert result["auc"]["value"] == pytest.approx(expected_auc)
    mcm = skm.multilabel_confusion_matrix(y, pred)
    spec = np.mean(mcm[:, 0, 0] / (mcm[:, 0, 0] + mcm[:, 0, 1]))
    assert result["specificity"]["value"] == pytest.approx(spec)


def test_confusion_matrix_rows_are_actual_and_columns_predicted():
    y = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    confusion = _run(y, probs, CLASSES2, n_boot=0)["confusion_matrix"]
    assert confusion["labels"] == CLASSES2
    assert confusion["matrix"] == skm.confusion_matrix(y, probs.argmax(axis=1)).tolist()
    assert confusion["matrix"][0][1] == int(np.sum((y == 0) & (probs.argmax(axis=1) == 1)))


# ------------------------------------------------------------------------ intervals


@pytest.mark.parametrize("n_classes", [2, 3])
def test_bootstrap_ci_contains_the_point_estimate(n_classes):
    y, probs = _cases(120, n_classes, seed=5)
    for name, interval in _run(y, probs, CLASSES2 if n_classes == 2 else CLASSES3)[
        "classification"
    ].items():
        assert interval["ci_low"] <= interval["value"] <= interval["ci_high"], name
        assert interval["ci_low"] < interval["ci_high"], name


def test_same_seed_gives_the_same_intervals_and_another_seed_differs():
    y, probs = _cases(60, 2, seed=6)
    first = _run(y, probs, CLASSES2, seed=7)
    assert _run(y, probs, CLASSES2, seed=7) == first
    other = _run(y, probs, CLASSES2, seed=8)["classification"]
    assert any(other[m]["ci_low"] != first["classification"][m]["ci_low"] for m in cl.METRICS)


def test_a_higher_ci_level_gives_a_wider_interval():
    y, probs = _cases(60, 2, seed=9)
    narrow = _run(y, probs, CLASSES2, ci_level=0.5)["classification"]["auc"]
    wide = _run(y, probs, CLASSES2, ci_level=0.99)["classification"]["auc"]
    assert wide["ci_low"] < narrow["ci_low"] and wide["ci_high"] > narrow["ci_high"]


def test_stratified_resamples_keep_every_class_count():
    y = np.array([0] * 7 + [1] * 3 + [2] * 5)
    idx = bootstrap.stratified_resamples(y, n_boot=50, seed=0)
    assert idx.shape == (50, y.size)
    for row in idx:
        assert np.bincount(y[row], minlength=3).tolist() == np.bincount(y).tolist()


def test_perfect_classifier_scores_one_with_a_degenerate_interval():
    y = np.array([0, 1] * 10)
    probs = np.eye(2)[y] * 0.8 + 0.1
    for name, interval in _run(y, probs, CLASSES2)["classification"].items():
        assert interval == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}, name


def test_no_bootstrap_samples_gives_values_without_intervals():
    y, probs = _cases(30, 2, seed=10)
    for interval in _run(y, probs, CLASSES2, n_boot=0)["classification"].values():
        assert interval["value"] is not None
        assert interval["ci_low"] is None and interval["ci_high"] is None


# ---------------------------------------------------------------- undefined metrics


def test_auc_is_none_when_only_one_class_present():
    y = np.zeros(12, dtype=int)
    probs = np.tile([0.7, 0.3], (12, 1))
    result = _run(y, probs, CLASSES2)
    cls = result["classification"]
    assert cls["auc"] == {"value": None, "ci_low": None, "ci_high": None}
    assert cls["sensitivity"]["value"] is None  # no positive case
    assert cls["f1"]["value"] is None  # no positive case and none predicted
    assert cls["accuracy"]["value"] == pytest.approx(1.0)
    json.dumps(result, allow_nan=False)


def test_multiclass_auc_is_none_when_a_class_is_missing_but_others_still_report():
    y, probs = _cases(40, 3, seed=12)
    keep = y != 2
    cls = _run(y[keep], probs[keep], CLASSES3)["classification"]
    assert cls["auc"]["value"] is None
    assert cls["accuracy"]["value"] is not None and cls["accuracy"]["ci_low"] is not None


def test_result_is_strict_json_with_plain_python_numbers():
    y, probs = _cases(40, 3, seed=13)
    result = _run(y, probs, CLASSES3)
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert all(type(v) is int for row in result["confusion_matrix"]["matrix"] for v in row)


@pytest.mark.parametrize(
    ("y", "probs", "message"),
    [
        (np.array([0, 1]), np.full((3, 2), 0.5), "shape"),
        (np.array([0, 2]), np.full((2, 2), 0.5), "outside"),
        (np.array([0.0, 1.0]), np.full((2, 2), 0.5), "integer"),
        (np.array([0, 1]), np.full((2, 3), 1 / 3), "shape"),
        (np.array([0, 1]), np.array([[np.nan, 1], [0.5, 0.5]]), "NaN"),
    ],
)
def test_malformed_inputs_fail_loudly(y, probs, message):
    with pytest.raises(ValueError, match=message):
        cl.classification_metrics(y, probs, CLASSES2, 10, 0.95, 0)


# --------------------------------------------------------------------------- tables


def test_binary_roc_table_runs_from_origin_to_corner_and_matches_auc():
    y, probs = _cases(60, 2, seed=14)
    roc = cl.roc_table(y, probs, CLASSES2)
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert (roc["fpr"].iloc[0], roc["tpr"].iloc[0]) == (0.0, 0.0)
    assert (roc["fpr"].iloc[-1], roc["tpr"].iloc[-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    auc = _run(y, probs, CLASSES2, n_boot=0)["classification"]["auc"]["value"]
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(auc)


def test_multiclass_roc_table_is_the_micro_average():
    y, probs = _cases(45, 3, seed=15)
    roc = cl.roc_table(y, probs, CLASSES3)
    onehot = np.eye(3, dtype=bool)[y]
    micro_auc = skm.roc_auc_score(onehot, probs, average="micro")
    assert np.trapezoid(roc["tpr"], roc["fpr"]) == pytest.approx(micro_auc)


def test_roc_table_is_empty_when_only_one_class_present():
    roc = cl.roc_table(np.ones(5, dtype=int), np.tile([0.2, 0.8], (5, 1)), CLASSES2)
    assert roc.empty and list(roc.columns) == ["fpr", "tpr", "threshold"]


def test_confusion_table_names_the_classes_one_row_per_case():
    table = cl.confusion_table(np.array([0, 2, 1]), np.array([0, 1, 1]), CLASSES3)
    assert table.to_dict("list") == {"actual": ["a", "c", "b"], "predicted": ["a", "b", "b"]}


def test_positive_class_is_the_last_of_two_and_none_otherwise():
    assert cl.positive_class(CLASSES2) == "positive"
    assert cl.positive_class(CLASSES3) is None


# --------------------------------------------------------------------- segmentation


def _masks(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth squares and predictions shifted by a random offset (so overlap varies)."""
    rng = np.random.default_rng(seed)
    true = np.zeros((n, size, size), dtype=bool)
    pred = np.zeros_like(true)
    for i in range(n):
        r, c = rng.integers(2, size - 10, size=2)
        dr, dc = rng.integers(-3, 4, size=2)
        true[i, r : r + 8, c : c + 8] = True
        pred[i, r + dr : r + dr + 8, c + dc : c + dc + 8] = True
    return pred, true


def test_dice_and_iou_follow_their_definitions_per_image():
    pred, true = _masks(6, 24, seed=0)
    summary, table = seg.segmentation_metrics(pred, true, 100, 0.95, 0)
    inter = (pred & true).sum(axis=(1, 2))
    sizes = pred.sum(axis=(1, 2)) + true.sum(axis=(1, 2))
    np.testing.assert_allclose(table["dice"], 2 * inter / sizes, rtol=1e-6)
    np.testing.assert_allclose(table["iou"], inter / (sizes - inter), rtol=1e-6)
    assert summary["dice"]["value"] == pytest.approx(table["dice"].mean())
    assert summary["n_images"] == 6


def test_empty_truth_scores_one_when_prediction_is_empty_and_zero_otherwise():
    pred, true = _masks(3, 24, seed=1)
    true[0] = pred[0] = False  # both empty
    true[1] = False  # truth empty, prediction not
    _, table = seg.segmentation_metrics(pred, true, 0, 0.95, 0)
    assert table.loc[0, ["dice", "iou"]].tolist() == [1.0, 1.0]
    assert table.loc[1, ["dice", "iou"]].tolist() == [0.0, 0.0]
    assert table["truth_empty"].tolist() == [True, True, False]


def test_lesion_dice_averages_only_images_with_a_lesion():
    pred, true = _masks(5, 24, seed=2)
    true[:2] = pred[:2] = False
    summary, table = seg.segmentation_metrics(pred, true, 200, 0.95, 0)
    assert summary["n_lesion"] == 3
    assert summary["dice_lesion"]["value"] == pytest.approx(table["dice"][2:].mean())
    assert summary["dice"]["value"] > summary["dice_lesion"]["value"]  # empty pairs score 1
    for key in ("dice", "iou", "dice_lesion", "iou_lesion"):
        assert summary[key]["ci_low"] <= summary[key]["value"] <= summary[key]["ci_high"]


def test_lesion_dice_is_none_when_no_image_has_a_lesion():
    empty = np.zeros((3, 8, 8), dtype=bool)
    summary, table = seg.segmentation_metrics(empty, empty, 50, 0.95, 0)
    assert summary["dice"]["value"] == 1.0
    assert summary["dice_lesion"] == {"value": None, "ci_low": None, "ci_high": None}
    assert list(table.columns) == ["index", "dice", "iou", "hd95", "truth_empty", "pred_empty"]
    json.dumps(summary, allow_nan=False)


def test_segmentation_rejects_probabilities_and_mismatched_shapes():
    true = np.zeros((2, 8, 8), dtype=bool)
    with pytest.raises(ValueError, match="binary"):
        seg.segmentation_metrics(np.full((2, 8, 8), 0.4), true, 10, 0.95, 0)
    with pytest.raises(ValueError, match="differ"):
        seg.segmentation_metrics(np.zeros((2, 8, 9), dtype=bool), true, 10, 0.95, 0)


def test_predictions_table_has_one_probability_column_per_class():
    import pandas as pd

    cases = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "array_index": [3, 7],
            "patient_key": ["P1", "P2"],
            "label": ["neg", "pos"],
        }
    )
    probs = np.array([[0.8, 0.2], [0.3, 0.7]])
    table = cl.predictions_table(cases, probs, ["neg", "pos"])
    assert list(table["pred_label"]) == ["neg", "pos"]
    assert list(table.columns[-2:]) == ["prob_neg", "prob_pos"]
    np.testing.assert_allclose(table["prob_pos"], [0.2, 0.7])


# ------------------------------------------------- operating point, curves, calibration


def _binary_case(seed: int = 0, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    p1 = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.25, n), 0.01, 0.99)
    return y, np.stack([1 - p1, p1], axis=1)


def test_a_threshold_changes_the_decisions_and_the_bootstrap_follows():
    y, probs = _binary_case()
    default = cl.classification_metrics(y, probs, ["neg", "pos"], 200, 0.95, 0)
    low = cl.classification_metrics(y, probs, ["neg", "pos"], 200, 0.95, 0, threshold=0.1)
    sens_low = low["classification"]["sensitivity"]
    assert sens_low["value"] >= default["classification"]["sensitivity"]["value"]
    assert sens_low["ci_low"] <= sens_low["value"] <= sens_low["ci_high"]
    assert low["classification"]["auc"] == default["classification"]["auc"]
    assert np.array_equal(decision.decide(probs, 0.1), (probs[:, 1] >= 0.1).astype(int))


def test_operating_point_records_the_rule_and_lies_on_the_roc_curve():
    y, probs = _binary_case()
    classes = ["neg", "pos"]
    arg = cl.operating_point(y, probs, classes, None)
    thr = cl.operating_point(y, probs, classes, 0.3)
    assert arg["rule"] == "argmax" and arg["threshold"] is None
    assert thr["rule"] == "threshold" and thr["threshold"] == 0.3
    fpr, tpr, cut = skm.roc_curve(y, probs[:, 1], drop_intermediate=False)
    on_curve = np.flatnonzero(cut >= 0.3)[-1]
    assert thr["fpr"] == pytest.approx(fpr[on_curve]) and thr["tpr"] == pytest.approx(tpr[on_curve])
    result = cl.classification_metrics(y, probs, classes, 0, 0.95, 0, threshold=0.3)
    assert thr["tpr"] == pytest.approx(result["classification"]["sensitivity"]["value"])
    with pytest.raises(ValueError, match="threshold"):
        cl.operating_point(y, probs, classes, 1.5)


def test_multiclass_ignores_a_threshold_and_uses_argmax():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=30)
    y = np.arange(30) % 3
    point = cl.operating_point(y, probs, ["a", "b", "c"], 0.3)
    assert point["rule"] == "argmax"
    accuracy = float(np.mean(probs.argmax(1) == y))
    assert point["tpr"] == pytest.approx(accuracy)  # micro TPR = accuracy


def test_pr_table_matches_average_precision_and_ends_without_threshold():
    y, probs = _binary_case()
    table = cl.pr_table(y, probs, ["neg", "pos"])
    assert np.isnan(table["threshold"].iloc[-1])
    ap = -np.sum(np.diff(table["recall"]) * table["precision"].to_numpy()[:-1])
    assert ap == pytest.approx(skm.average_precision_score(y, probs[:, 1]))


def test_ece_is_the_case_weighted_gap_between_top_label_confidence_and_accuracy():
    y = np.array([1] * 8 + [0] * 2 + [1] * 2 + [0] * 8)
    p1 = np.array([0.85] * 10 + [0.15] * 10)  # every top-label confidence 0.85, accuracy 0.8
    probs = np.stack([1 - p1, p1], axis=1)
    cal = reliability.calibration(y, probs, ["neg", "pos"], 10, 200, 0.95, 0)
    assert cal["ece"]["value"] == pytest.approx(0.05)
    assert cal["ece"]["ci_low"] <= 0.05 <= cal["ece"]["ci_high"]
    counts = [b["count"] for b in cal["bins"]]
    assert sum(counts) == 20 and counts[8] == 20
    assert cal["bins"][8]["observed"] == pytest.approx(0.8)
    assert cal["bins"][8]["mean_confidence"] == pytest.approx(0.85)
    assert cal["bins"][0]["mean_confidence"] is None
    assert cal["kind"] == "top-label confidence"


def test_binary_ece_is_top_label_not_the_probability_of_the_positive_class():
    # P(pos) = 0.85 with 90 % positives and P(pos) = 0.15 with 20 % positives: per P(pos) bin
    # each is 0.05 off (ECE 0.05), but both are top-label confidence 0.85 at accuracy 0.85.
    y = np.array([1] * 9 + [0] * 1 + [1] * 2 + [0] * 8)
    p1 = np.array([0.85] * 10 + [0.15] * 10)
    probs = np.stack([1 - p1, p1], axis=1)
    cal = reliability.calibration(y, probs, ["neg", "pos"], 10, 0, 0.95, 0)
    assert cal["ece"]["value"] == pytest.approx(0.0)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_metrics_json_ece_is_the_one_training_records_in_meta_json(n_classes):
    y, probs = _cases(90, n_classes, seed=4)
    classes = CLASSES2 if n_classes == 2 else CLASSES3
    cal = reliability.calibration(y, probs, classes, 10, 0, 0.95, 0)
    assert cal["ece"]["value"] == pytest.approx(
        decision.expected_calibration_error(probs, y, 10), abs=1e-12
    )


def test_batched_ece_agrees_with_a_direct_loop():
    y, probs = _binary_case(3)
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0, 1, 8)
    direct = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > low) & (conf <= high)
        if inside.any():
            direct += abs(conf[inside].mean() - correct[inside].mean()) * inside.sum() / len(y)
    value = reliability.calibration(y, probs, ["n", "p"], 7, 0, 0.95, 0)["ece"]["value"]
    assert value == pytest.approx(direct)


# ------------------------------------------------------------------------- subgroups


def test_subgroups_from_present_columns_with_age_banded():
    y, probs = _binary_case(n=40)
    groups = pd.DataFrame(
        {"sex": ["F", "M"] * 20, "age": ["034Y", "71"] * 10 + [""] * 20, "other": 1}
    )
    result = subgroups.subgroup_metrics(groups, y, probs, ["neg", "pos"], 50, 0.95, 0)
    assert result["columns"] == ["sex", "age_band"]
    names = {(g["column"], g["group"]): g["n"] for g in result["groups"]}
    assert names[("sex", "F")] == 20 and names[("age_band", "unknown")] == 20
    assert names[("age_band", "18-39")] + names[("age_band", "60-79")] == 20
    sex_f = next(g for g in result["groups"] if g["group"] == "F")
    assert set(sex_f["metrics"]) == set(subgroups.SUBGROUP_METRICS)


def test_no_subgroup_columns_gives_an_empty_analysis():
    y, probs = _binary_case(n=10)
    result = subgroups.subgroup_metrics(
        pd.DataFrame({"label": ["x"] * 10}), y, probs, ["a", "b"], 10, 0.95, 0
    )
    assert result == {"columns": [], "groups": []}


def test_age_bands():
    assert [subgroups.age_band(a) for a in ("5", "018Y", "59", "80", "abc", "")] == [
        "0-17",
        "18-39",
        "40-59",
        "80+",
        "unknown",
        "unknown",
    ]


def test_misclassified_lists_wrong_cases_by_confidence():
    table = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "label": ["x", "x", "y"],
            "pred_label": ["y", "x", "x"],
            "prob_x": [0.3, 0.9, 0.8],
            "prob_y": [0.7, 0.1, 0.2],
        }
    )
    wrong = cl.misclassified(table)
    assert list(wrong["image_id"]) == ["c", "a"]
    assert list(wrong["confidence"]) == [0.8, 0.7]


def test_the_segmenter_validates_with_the_dice_evaluation_reports():
    from radflow.learning import overlap

    pred, true = _masks(6, 24, seed=2)
    true[0] = pred[0] = False  # both empty: 1.0 in both places
    _, table = seg.segmentation_metrics(pred, true, 0, 0.95, 0)
    assert overlap.mean_dice(pred, true) == pytest.approx(table["dice"].mean())
    assert table["dice"][0] == 1.0

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from radflow.learning import calibration


def _overconfident(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    signal = (labels * 2 - 1) * 1.0 + rng.normal(0, 1.0, n)
    logits = np.stack([-signal, signal], axis=1) * 4.0  # 4x too sharp
    return logits, labels


def test_temperature_scaling_cools_overconfident_logits_and_lowers_ece():
    logits, labels = _overconfident()
    t = calibration.fit_temperature(logits, labels)
    assert t > 2.0
    before = calibration.expected_calibration_error(calibration.softmax(logits), labels)
    after = calibration.expected_calibration_error(calibration.softmax(logits, t), labels)
    assert after < before


def _nll(logits, labels, t):
    probs = calibration.softmax(logits, t)
    return -np.mean(np.log(probs[np.arange(len(labels)), labels]))


def test_fitted_temperature_minimises_validation_nll_near_the_generating_one():
    # The classes are N(+-1, 1) in `signal`: the true log-odds are 2 * signal, the logits'
    # 8 * signal, so T = 4 restores calibration.
    logits, labels = _overconfident()
    t = calibration.fit_temperature(logits, labels)
    assert t == pytest.approx(4.0, abs=0.5)
    best = _nll(logits, labels, t)
    assert best < _nll(logits, labels, 1.0)
    assert best <= min(_nll(logits, labels, t * 1.1), _nll(logits, labels, t / 1.1))


def test_ece_bins_are_equal_width_and_closed_on_the_right():
    assert calibration.bin_ids(np.array([0.0, 0.1, 0.3, 0.30001, 0.95, 1.0]), 10).tolist() == [
        0, 0, 2, 3, 9, 9
    ]  # fmt: skip
    probs = np.array([[0.3, 0.7], [0.7, 0.3], [0.45, 0.55], [0.2, 0.8]])
    labels = np.array([1, 1, 0, 1])
    # bins (0.6, 0.7]: conf 0.7, 0.7 acc 1/2; (0.5, 0.6]: 0.55 acc 0; (0.7, 0.8]: 0.8 acc 1
    expected = (2 * abs(0.7 - 0.5) + abs(0.55 - 0.0) + abs(0.8 - 1.0)) / 4
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_decide_uses_the_threshold_for_two_classes_and_the_argmax_otherwise():
    probs = np.array([[0.7, 0.3], [0.4, 0.6]])
    assert calibration.decide(probs).tolist() == [0, 1]
    assert calibration.decide(probs, 0.25).tolist() == [1, 1]
    three = np.array([[0.2, 0.3, 0.5]])
    assert calibration.decide(three, 0.1).tolist() == [2]


def test_sensitivity_policy_reaches_the_target_on_validation():
    logits, labels = _overconfident()
    probs = calibration.softmax(logits)[:, 1]
    thr = calibration.choose_threshold(probs, labels == 1, "sensitivity", 0.95)
    assert (probs[labels == 1] >= thr).mean() >= 0.95


def test_specificity_policy_keeps_the_target_and_is_the_most_sensitive_that_does():
    logits, labels = _overconfident()
    probs = calibration.softmax(logits)[:, 1]
    thr = calibration.choose_threshold(probs, labels == 1, "specificity", 0.9)
    assert (probs[labels == 0] < thr).mean() >= 0.9
    _, _, candidates = roc_curve(labels == 1, probs)
    lower = candidates[candidates < thr].max()  # the next ROC point down breaks the target
    assert (probs[labels == 0] < lower).mean() < 0.9


def test_youden_threshold_beats_a_bad_fixed_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    probs = np.clip(0.05 + 0.1 * labels + rng.normal(0, 0.03, 500), 0, 1)  # all below 0.5
    thr = calibration.choose_threshold(probs, labels == 1, "youden", 0.9)

    def balanced(t):
        pred = probs >= t
        return (pred[labels == 1].mean() + (~pred[labels == 0]).mean()) / 2

    assert balanced(thr) > 0.9 > balanced(0.5)


def test_single_class_validation_falls_back_to_neutral_choices():
    logits = np.zeros((5, 2))
    labels = np.zeros(5, dtype=int)
    assert calibration.fit_temperature(logits, labels) == 1.0
    assert calibration.choose_threshold(np.full(5, 0.3), labels == 1, "youden", 0.9) == 0.5

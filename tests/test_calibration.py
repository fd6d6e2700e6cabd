import numpy as np

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


def test_temperature_keeps_the_ranking():
    logits, labels = _overconfident()
    t = calibration.fit_temperature(logits, labels)
    p1 = calibration.softmax(logits)[:, 1]
    pt = calibration.softmax(logits, t)[:, 1]
    assert (np.argsort(p1, kind="stable") == np.argsort(pt, kind="stable")).all()


def test_sensitivity_policy_reaches_the_target_on_validation():
    logits, labels = _overconfident()
    probs = calibration.softmax(logits)[:, 1]
    thr = calibration.choose_threshold(probs, labels == 1, "sensitivity", 0.95)
    assert (probs[labels == 1] >= thr).mean() >= 0.95


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

"""Label-shift adaptation (Saerens et al. 2002): the batch's class prior from unlabelled
calibrated probabilities, and the probabilities reweighted to it."""

import numpy as np
import pytest

from radflow.learning import label_shift


def _batch(prior_positive, n=4000, seed=0):
    """Two unit-variance Gaussians at -1 and +1; probabilities exact under a 50/50 prior."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < prior_positive
    x = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    positive = 1 / (1 + np.exp(-2 * x))  # the exact posterior under equal priors
    return np.stack([1 - positive, positive], axis=1), y


@pytest.mark.parametrize("prevalence", [0.1, 0.5, 0.8])
def test_em_recovers_the_batch_prevalence_from_unlabelled_probabilities(prevalence):
    probs, _ = _batch(prevalence)
    adapted = label_shift.adapt_to_batch(probs, np.array([0.5, 0.5]))
    assert adapted.converged
    assert adapted.prior[1] == pytest.approx(prevalence, abs=0.03)
    assert np.allclose(adapted.probs.sum(axis=1), 1.0)


def test_reweighted_probabilities_decide_better_under_a_shifted_prevalence():
    probs, y = _batch(0.1, seed=1)
    adapted = label_shift.adapt_to_batch(probs, np.array([0.5, 0.5]))
    before = np.mean((probs[:, 1] >= 0.5) == y)
    after = np.mean((adapted.probs[:, 1] >= 0.5) == y)
    assert after > before + 0.02
    log_loss = [-np.mean(np.log(np.where(y, p[:, 1], p[:, 0]))) for p in (probs, adapted.probs)]
    assert log_loss[1] < log_loss[0]


def test_a_batch_like_validation_is_left_almost_as_it_was():
    probs, _ = _batch(0.5, seed=2)
    adapted = label_shift.adapt_to_batch(probs, np.array([0.5, 0.5]))
    assert np.abs(adapted.probs - probs).max() < 0.05


def test_impossible_priors_and_shapes_are_refused():
    probs, _ = _batch(0.5, n=10)
    with pytest.raises(ValueError, match="positive"):
        label_shift.adapt_to_batch(probs, np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="match"):
        label_shift.adapt_to_batch(probs, np.array([0.2, 0.3, 0.5]))

"""Label shift: a batch of new images whose class mix differs from the validation set's.

With calibrated probabilities p(y | x) fitted under the validation prior, the batch's prior
is estimated from the unlabelled batch alone by expectation maximisation (Saerens, Latinne
and Decaestecker 2002, Neural Computation 14:21-41), and each probability is reweighted by
the ratio of the new prior to the old. Deciding on the reweighted probabilities with the
validation threshold moves the decision as the prevalence moved. It assumes only the class
mix changed, not how each class looks; under other shift the estimate is biased, so it is
off by default and recorded in the output wherever it is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Adapted:
    probs: np.ndarray  # (N, K) the reweighted probabilities
    prior: np.ndarray  # (K,) the batch's estimated class prior
    iterations: int
    converged: bool


def reweight(probs: np.ndarray, ratio: np.ndarray) -> np.ndarray:
    weighted = probs * ratio
    return weighted / weighted.sum(axis=1, keepdims=True)


def adapt_to_batch(
    probs: np.ndarray, source_prior: np.ndarray, max_iter: int = 1000, tol: float = 1e-6
) -> Adapted:
    """EM for the batch's class prior: reweight, average the posteriors, repeat until the
    prior moves by less than tol. probs: (N, K) rows summing to 1 under source_prior."""
    probs = np.asarray(probs, dtype=np.float64)
    source = np.asarray(source_prior, dtype=np.float64)
    if probs.ndim != 2 or len(probs) == 0 or probs.shape[1] != len(source):
        raise ValueError(f"probs {probs.shape} do not match a prior over {len(source)} classes")
    if np.any(source <= 0) or not np.isclose(source.sum(), 1.0):
        raise ValueError(f"the source prior {source.tolist()} must be positive and sum to 1")
    prior, converged, iteration = source.copy(), False, 0
    while not converged and iteration < max_iter:
        iteration += 1
        new = reweight(probs, prior / source).mean(axis=0)
        converged = bool(np.abs(new - prior).max() < tol)
        prior = new
    return Adapted(reweight(probs, prior / source), prior, iteration, converged)

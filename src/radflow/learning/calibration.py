"""Decision quality: temperature scaling and the operating threshold, both fitted on validation.

Kept apart from training and evaluation so the test set never informs either choice.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_curve


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The T > 0 minimising the validation NLL of softmax(logits / T) (Guo et al. 2017)."""
    if len(np.unique(labels)) < 2:
        return 1.0
    x = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def choose_threshold(
    positive_probs: np.ndarray, is_positive: np.ndarray, policy: str, target: float
) -> float:
    """Probability of the positive class at which to call positive.

    youden: maximise sensitivity + specificity - 1; sensitivity: the highest threshold that
    reaches the target sensitivity on validation; specificity: the lowest threshold that
    keeps the target specificity on validation (the most sensitive one that does; where
    a validation part cannot show the shift, Youden picks a threshold near the positives
    and calls the next hospital's normals positive); argmax: 0.5.
    """
    if policy == "argmax" or len(np.unique(is_positive)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(is_positive, positive_probs)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if policy == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    if policy == "specificity":  # fpr rises as the threshold falls; index 0 has fpr 0
        return float(thresholds[np.flatnonzero(1 - fpr >= target)[-1]])
    reaching = np.flatnonzero(tpr >= target)
    return float(thresholds[reaching[0]]) if len(reaching) else float(thresholds[-1])


def decide(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted class indices at the operating point: binary with a threshold, positive
    (index 1) when ``probs[..., 1] >= threshold``; otherwise (no threshold, or multi-class)
    the argmax. Works on (N, C) and batched (B, N, C) probabilities.

    Here, below evaluation and prediction, so that both decide with the same rule.
    """
    probs = np.asarray(probs)
    if threshold is None or probs.shape[-1] != 2:
        return probs.argmax(axis=-1)
    return (probs[..., 1] >= threshold).astype(np.int64)


# ------------------------------------------------------- expected calibration error
#
# One convention, Guo et al. 2017 ("On calibration of modern neural networks"): the
# confidence is the top-label probability (that of the predicted, argmax, class), the
# outcome whether that prediction is right; M equal-width bins ((m-1)/M, m/M]; ECE = sum
# over bins of (bin size / N) * |accuracy - mean confidence|. Training records it as
# meta.json's val_ece and evaluation as metrics.json's calibration.ece (with a bootstrap
# CI over the same per-case confidences and bins).

ECE_CONVENTION = "top-label confidence, equal-width bins (low, high], Guo et al. 2017"


def top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, correct as 0/1 float) per case: the top-label probability and whether
    the argmax class is the true one."""
    probs = np.asarray(probs, dtype=np.float64)
    correct = probs.argmax(axis=-1) == np.asarray(labels)
    return probs.max(axis=-1), correct.astype(np.float64)


def bin_ids(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin m (0-based) of each confidence for the bins (m/M, (m+1)/M]; 0 goes to the first.

    The edges are ``np.linspace(0, 1, M + 1)``, so a confidence on an edge falls in the bin
    below it, as with ``low < c <= high`` comparisons.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)


def batched_ece(
    confidence: np.ndarray, correct: np.ndarray, bins: np.ndarray, n_bins: int
) -> np.ndarray:
    """(B, N) confidences, outcomes and bin ids -> (B,) ECEs (bootstrap resamples in one go)."""
    n_batch, n = confidence.shape
    flat = (np.arange(n_batch)[:, None] * n_bins + bins).ravel()
    size = n_batch * n_bins
    conf_sum = np.bincount(flat, weights=confidence.ravel(), minlength=size)
    correct_sum = np.bincount(flat, weights=correct.ravel(), minlength=size)
    gaps = np.abs(conf_sum - correct_sum).reshape(n_batch, n_bins)
    return gaps.sum(axis=1) / n


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of (N, C) probabilities against integer labels (the convention above)."""
    confidence, correct = top_label(probs, labels)
    if confidence.size == 0:
        return 0.0  # no cases, no gap (as before the definitions were merged)
    ids = bin_ids(confidence, bins)
    return float(batched_ece(confidence[None], correct[None], ids[None], bins)[0])

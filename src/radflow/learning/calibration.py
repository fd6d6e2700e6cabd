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
    positive_probs: np.ndarray, is_positive: np.ndarray, policy: str, target_sensitivity: float
) -> float:
    """Probability of the positive class at which to call positive.

    youden: maximise sensitivity + specificity - 1; sensitivity: the highest threshold that
    reaches the target sensitivity on validation; argmax: 0.5.
    """
    if policy == "argmax" or len(np.unique(is_positive)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(is_positive, positive_probs)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if policy == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])
    reaching = np.flatnonzero(tpr >= target_sensitivity)
    return float(thresholds[reaching[0]]) if len(reaching) else float(thresholds[-1])


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence, equal-width bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)

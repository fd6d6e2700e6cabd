"""Bootstrap confidence intervals shared by every metric of the evaluation stage.

Percentile intervals at ``ci_level`` around a point estimate. Classification resamples
within each true class (stratified: every resample keeps the class counts, so metrics
defined on the full data stay defined); segmentation resamples images within the empty /
non-empty strata, or whole patients (cluster bootstrap) when patient keys are given. A
sample that is undefined (NaN) is skipped; an undefined point estimate has value, ci_low
and ci_high None (JSON null).
"""

from __future__ import annotations

import numpy as np

Interval = dict[str, float | None]

NO_INTERVAL: Interval = {"value": None, "ci_low": None, "ci_high": None}


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: an undefined metric is written as null."""
    x = float(x)
    return x if np.isfinite(x) else None


def interval(value: float, samples: np.ndarray, ci_level: float) -> Interval:
    """Percentile interval of the defined bootstrap samples around a point estimate."""
    point = finite_or_none(value)
    samples = samples[np.isfinite(samples)]
    if point is None or samples.size == 0:
        return {"value": point, "ci_low": None, "ci_high": None}
    tail = 100.0 * (1.0 - ci_level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return {"value": point, "ci_low": float(low), "ci_high": float(high)}


def check_ci(n_boot: int, ci_level: float) -> None:
    """Refuse a negative number of resamples or a level outside (0, 1) before any work."""
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < ci_level < 1.0:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")


def stratified_resamples(strata: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, N) row indices, each row resampling with replacement inside every stratum.

    Keeping stratum sizes fixed keeps every class present in every resample, so metrics
    defined on the full data (AUC, sensitivity...) stay defined on the resamples.
    """
    rng = np.random.default_rng(seed)
    blocks = []
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        blocks.append(members[rng.integers(0, members.size, size=(n_boot, members.size))])
    if not blocks:
        return np.empty((n_boot, 0), dtype=np.int64)
    return np.concatenate(blocks, axis=1)


def mean_interval(
    values: np.ndarray, strata: np.ndarray, n_boot: int, ci_level: float, seed: int
) -> Interval:
    """Mean of per-unit values with a bootstrap stratified by ``strata``."""
    if values.size == 0:
        return dict(NO_INTERVAL)
    idx = stratified_resamples(strata, n_boot, seed)
    return interval(float(values.mean()), values[idx].mean(axis=1), ci_level)


def cluster_interval(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, ci_level: float, seed: int
) -> Interval:
    """Ratio of per-patient sums (mean over the pooled units) with a patient bootstrap."""
    if counts.sum() == 0:
        return dict(NO_INTERVAL)
    point = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    n = len(sums)
    draws = rng.integers(0, n, size=(n_boot, n))
    weights = np.stack([np.bincount(row, minlength=n) for row in draws]) if n_boot else None
    samples = np.empty(0)
    if weights is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            samples = (weights @ sums) / (weights @ counts)
    return interval(point, samples, ci_level)


def grouped(
    values: np.ndarray, members: np.ndarray, codes: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-patient (sum, count) of values over the members (NaNs excluded)."""
    use = members & np.isfinite(values)
    sums = np.bincount(codes[use], weights=values[use], minlength=n)
    counts = np.bincount(codes[use], minlength=n).astype(np.float64)
    return sums, counts

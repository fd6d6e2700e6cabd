"""Benchmark: how long the evaluation stage's bootstrap takes (target: 1000 resamples of 50
cases under 2 s, so `radflow evaluate` stays interactive).

Times :func:`radflow.evaluation.classification.classification_metrics` and the calibration
ECE (:func:`radflow.evaluation.reliability.calibration`) on synthetic binary and 3-class
predictions for a few cohort sizes, after one warm-up call, and prints the median of
``--repeats`` runs per row.

    .venv/bin/python benchmarks/bootstrap_speed.py --resamples 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from radflow.evaluation.classification import classification_metrics
from radflow.evaluation.reliability import calibration


def cases(n: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities of an imperfect classifier."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits)
    return y, probs / probs.sum(axis=1, keepdims=True)


def seconds(call, repeats: int) -> float:
    call()  # warm imports and caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    args = parser.parse_args()
    rows = []
    for n_classes in (2, 3):
        classes = [f"c{k}" for k in range(n_classes)]
        for n in args.sizes:
            y, probs = cases(n, n_classes, seed=n)
            metrics_s = seconds(
                lambda y=y, probs=probs, classes=classes: classification_metrics(
                    y, probs, classes, args.resamples, 0.95, 0
                ),
                args.repeats,
            )
            ece_s = seconds(
                lambda y=y, probs=probs, classes=classes: calibration(
                    y, probs, classes, 10, args.resamples, 0.95, 0
                ),
                args.repeats,
            )
            rows.append(
                {
                    "classes": n_classes,
                    "cases": n,
                    "resamples": args.resamples,
                    "metrics_s": round(metrics_s, 3),
                    "ece_s": round(ece_s, 3),
                    "under_2s": metrics_s + ece_s < 2.0,
                }
            )
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

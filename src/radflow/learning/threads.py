"""How many threads torch runs: one setting for every torch stage, whoever starts it."""

from __future__ import annotations

import os

import torch


def pin(num_threads: int) -> int:
    """Run torch on num_threads threads (0: every core) and return the count.

    A float sum splits across threads, so the thread count changes the last bits of every
    result: Snakemake sets OMP_NUM_THREADS to the cores a job reserved, DVC sets nothing, and
    the same model then wrote predictions differing in the 7th digit. Pinning the count from
    params gives the same bytes under both.
    """
    count = num_threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count

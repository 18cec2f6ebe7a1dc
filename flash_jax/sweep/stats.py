"""Intervals over seeds: the mean with a t-distribution confidence interval, and the paired difference
of two methods run on the same seeds (a paired t-test, read as: does its interval exclude zero)."""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


class Interval(NamedTuple):
    mean: float
    half_width: float  # NaN with fewer than two values: no interval
    n: int

    def excludes_zero(self) -> bool:
        return math.isfinite(self.half_width) and abs(self.mean) > self.half_width


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean ± t_{(1+c)/2, n-1} · s / sqrt(n), with s the sample standard deviation."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    if n == 1:
        return Interval(float(values[0]), math.nan, 1)
    t = stats.t.ppf((1 + confidence) / 2, n - 1)
    return Interval(float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(n)), n)


def paired_difference(first: dict, second: dict, confidence: float = CONFIDENCE) -> Interval:
    """The interval of first - second over the keys (seeds) both have."""
    common = sorted(set(first) & set(second))
    return mean_interval([first[key] - second[key] for key in common], confidence)

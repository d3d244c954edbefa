"""Interval and test statistics: Wilson intervals for rates, exact McNemar tests for paired proportions, paired
bootstrap and t intervals for mean differences."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import binomtest


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% by default). (0, 1) for n == 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from discordant counts b (0->1) and c (1->0)."""
    n = b + c
    if n == 0:
        return 1.0
    return float(binomtest(min(b, c), n, 0.5, alternative="two-sided").pvalue)


def rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": (k / n) if n else float("nan"), "ci_low": lo, "ci_high": hi}


def rate_difference(k1: int, n1: int, k2: int, n2: int) -> dict[str, Any]:
    """``k1/n1 - k2/n2`` of two independent proportions with Newcombe's hybrid-score 95% interval (from the two
    Wilson intervals), e.g. selectivity = refusal on harmful prompts minus refusal on benign ones."""
    if not n1 or not n2:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n1": n1, "n2": n2}
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return {"diff": d, "ci_low": max(-1.0, lo), "ci_high": min(1.0, hi), "n1": n1, "n2": n2}


def bootstrap_mean_ci(d: np.ndarray, *, n_boot: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile interval of the mean of ``d`` from ``n_boot`` seeded resamples (NaNs when empty)."""
    if len(d) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return float(lo), float(hi)


def t_mean_ci(d: np.ndarray, confidence: float) -> tuple[float, float]:
    """Student-t interval of the mean of ``d`` (NaNs for fewer than two values)."""
    from scipy.stats import t

    n = len(d)
    if n < 2:
        return float("nan"), float("nan")
    m, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(n))
    if se == 0:
        return m, m
    h = float(t.ppf(0.5 + confidence / 2, n - 1)) * se
    return m - h, m + h

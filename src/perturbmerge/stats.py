"""Uncertainty of paired comparisons over seeds: the mean difference with its 95 % t-interval and a paired
bootstrap percentile interval (what every summary `compare` writes carries, and what docs quote).

    t-interval          d̄ ± t_{1−(1−c)/2, n−1} · s / √n       (s: sample std of the n per-seed differences)
    paired bootstrap    the (1−c)/2 and 1−(1−c)/2 percentiles of the means of n differences drawn with
                        replacement, `resamples` times, from a numpy generator seeded `seed`
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def t_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """The t-interval of the mean of `differences`; None for fewer than 2."""
    from scipy.stats import t

    values = np.asarray(differences, dtype=np.float64)
    if values.size < 2:
        return None
    half = float(t.ppf(0.5 + level / 2, values.size - 1)) * float(values.std(ddof=1)) / math.sqrt(values.size)
    mean = float(values.mean())
    return mean - half, mean + half


def bootstrap_interval(differences: Sequence[float], level: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float] | None:
    """The paired bootstrap percentile interval of the mean of `differences`; None for fewer than 2."""
    values = np.asarray(differences, dtype=np.float64)
    if values.size < 2:
        return None
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)
    low, high = np.percentile(means, [100 * (0.5 - level / 2), 100 * (0.5 + level / 2)])
    return float(low), float(high)


def paired_summary(differences: Sequence[float], level: float = 0.95) -> dict[str, object]:
    """Mean, sample std, n and both intervals of per-seed differences (JSON-friendly)."""
    values = [float(v) for v in differences]
    return {"n": len(values), "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None, "level": level,
            "t_interval": t_interval(values, level), "bootstrap_interval": bootstrap_interval(values, level)}


def bracket_text(differences: Sequence[float], level: float = 0.95) -> str:
    """'+8.22 [+4.43, +12.01]': the mean difference and its t-interval, the form README and docs quote; '–' below
    two values."""
    interval = t_interval(differences, level)
    if interval is None:
        return "–"
    return f"{math.fsum(differences) / len(differences):+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}]"


def interval_text(summary: dict[str, object]) -> str:
    """'+9.21 ± 5.37 (3 seeds; 95 % CI t −4.13 … +22.55, bootstrap +3.10 … +13.47)'."""
    n, mean, std = summary["n"], summary["mean"], summary["std"]
    if not n:
        return "no common seed"
    if std is None:
        return f"{mean:+.2f} (1 seed; no interval)"
    t_low, t_high = summary["t_interval"]
    b_low, b_high = summary["bootstrap_interval"]
    level = round(100 * summary["level"])
    return (f"{mean:+.2f} ± {std:.2f} ({n} seeds; {level} % CI t {t_low:+.2f} … {t_high:+.2f}, bootstrap "
            f"{b_low:+.2f} … {b_high:+.2f})")

"""Paired intervals over seeds (stats.py) against hand computations and scipy's reference implementations."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from perturbmerge.stats import bootstrap_interval, interval_text, paired_summary, t_interval


def test_t_interval_by_hand():
    low, high = t_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, t(0.975, 2) = 4.302653
    assert low == pytest.approx(2 - 4.302652729749464 / 3 ** 0.5, abs=1e-9)
    assert high == pytest.approx(2 + 4.302652729749464 / 3 ** 0.5, abs=1e-9)


def test_t_interval_matches_scipy():
    values = np.random.default_rng(3).normal(1.0, 2.0, size=10)
    expected = scipy_stats.t.interval(0.95, 9, loc=values.mean(), scale=scipy_stats.sem(values))
    assert t_interval(values) == pytest.approx(expected, abs=1e-12)


def test_the_readme_headline_interval_contains_zero():
    """Issue 50: +9.21 ± 5.37 on 3 paired seeds has the t-interval of about −4.1 … +22.5."""
    mean, std, n = 9.21, 5.37, 3
    values = [mean - std, mean, mean + std]  # a sample with that mean and sample std
    low, high = t_interval(values)
    assert low == pytest.approx(-4.13, abs=0.01) and high == pytest.approx(22.55, abs=0.01)


def test_bootstrap_interval_is_the_percentiles_of_resampled_means():
    values = np.array([0.5, -1.0, 2.0, 3.5, 1.0])
    rng = np.random.default_rng(0)
    means = np.array([values[rng.integers(0, 5, size=5)].mean() for _ in range(10_000)])
    low, high = bootstrap_interval(values)
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    scipy_result = scipy_stats.bootstrap((values,), np.mean, confidence_level=0.95, method="percentile",
                                         n_resamples=10_000, random_state=1).confidence_interval
    assert low == pytest.approx(scipy_result.low, abs=0.15) and high == pytest.approx(scipy_result.high, abs=0.15)


def test_one_seed_has_no_interval():
    summary = paired_summary([2.0])
    assert summary["t_interval"] is None and summary["bootstrap_interval"] is None
    assert interval_text(summary) == "+2.00 (1 seed; no interval)"
    assert "3 seeds; 95 % CI t" in interval_text(paired_summary([1.0, 2.0, 3.0]))

"""Tests of experiments.stats against values computed independently."""

import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import stats


def test_t_interval_matches_the_textbook_formula():
  x = np.array([0.61, 0.64, 0.58, 0.70, 0.66, 0.59, 0.63, 0.68, 0.62, 0.65])
  est = stats.interval(x)
  # t_{0.99, 9} = 2.821 (printed tables); half = t * sd / sqrt(n).
  half = 2.821 * x.std(ddof=1) / np.sqrt(10)
  assert est.mean == pytest.approx(x.mean())
  assert est.low == pytest.approx(x.mean() - half, abs=1e-4)
  assert est.high == pytest.approx(x.mean() + half, abs=1e-4)
  assert est.n == 10


def test_98_percent_t_interval_covers_the_true_mean_about_98_percent():
  rng = np.random.default_rng(1)
  covered = sum(stats.interval(rng.normal(size=5)).excludes_zero() is False
                for _ in range(2000))
  assert 0.97 <= covered / 2000 <= 0.99


def test_sign_flip_p_by_enumerating_every_flip_by_hand():
  d = np.array([0.3, 0.1, -0.2, 0.5, 0.4])
  count = 0
  for signs in itertools.product((1, -1), repeat=5):
    count += abs(np.dot(signs, d)) >= abs(d.sum()) - 1e-12
  assert stats.sign_flip_p(d) == pytest.approx(count / 32)
  # All five positive: only the all-plus and all-minus flips are as extreme.
  assert stats.sign_flip_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
  assert stats.sign_flip_p(np.ones(10)) == pytest.approx(2 / 1024)


def test_sign_flip_p_by_monte_carlo_above_exact_max_is_never_zero():
  n = stats.EXACT_MAX + 84
  # All of one sign: no random flip of 100 pairs is as extreme (2 / 2^100),
  # so only the observed signs count: 1 / (2^16 + 1).
  assert stats.sign_flip_p(np.ones(n)) == pytest.approx(1 / (2**16 + 1))
  assert stats.min_sign_flip_p(n) == pytest.approx(1 / (2**16 + 1))
  # Symmetric differences: every flip is as extreme as the observed mean 0.
  assert stats.sign_flip_p(np.r_[np.ones(n // 2), -np.ones(n // 2)]) == 1.0
  # A real effect: close to the normal approximation of the exact test.
  d = np.random.default_rng(1).normal(0.25, 1.0, n)
  z = abs(d.mean()) / np.sqrt(np.mean(d**2) / n)
  assert stats.sign_flip_p(d) == pytest.approx(
      2 * scipy_stats.norm.sf(z), rel=0.15, abs=2e-4)


def test_holm_adjusts_in_order_and_keeps_monotonicity():
  adjusted = stats.holm([0.01, 0.04, 0.03, float("nan")])
  # Sorted: 0.01 * 3, max(0.03 * 2, .03), max(0.04 * 1, .06).
  np.testing.assert_allclose(adjusted[:3], [0.03, 0.06, 0.06])
  assert np.isnan(adjusted[3])


def test_paired_difference_detects_a_consistent_shift_that_unpaired_noise_hides():
  rng = np.random.default_rng(2)
  base = rng.normal(scale=1.0, size=10)
  diff = stats.paired_difference(base + 0.1 + 0.01 * rng.normal(size=10), base)
  assert diff.excludes_zero() and diff.p == pytest.approx(2 / 1024)


def test_nan_values_are_dropped():
  est = stats.interval([1.0, np.nan, 3.0])
  assert est.n == 2 and est.mean == 2.0


def test_one_value_gives_no_interval():
  est = stats.interval([0.7])
  assert est.n == 1 and est.mean == 0.7
  assert np.isnan(est.low) and np.isnan(est.high)
  assert "n/a" in str(est) and not est.excludes_zero()
  assert str(stats.interval([])) == "n/a"

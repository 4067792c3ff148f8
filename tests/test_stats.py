"""Tests of experiments.stats: bootstrap intervals and paired differences."""

import numpy as np

from experiments import stats


def test_constant_values_give_a_zero_width_interval():
  est = stats.bootstrap_ci([0.5] * 6)
  assert (est.mean, est.low, est.high, est.n) == (0.5, 0.5, 0.5, 6)


def test_interval_contains_the_mean_and_narrows_with_more_seeds():
  rng = np.random.default_rng(0)
  small = stats.bootstrap_ci(rng.normal(size=5))
  large = stats.bootstrap_ci(rng.normal(size=500))
  assert small.low <= small.mean <= small.high
  assert (large.high - large.low) < (small.high - small.low)


def test_98_percent_interval_covers_the_true_mean_about_98_percent():
  rng = np.random.default_rng(1)
  covered = 0
  for i in range(200):
    est = stats.bootstrap_ci(rng.normal(size=30), seed=i)
    covered += est.low <= 0.0 <= est.high
  assert 0.93 <= covered / 200 <= 1.0


def test_paired_difference_detects_a_consistent_shift_that_unpaired_noise_hides():
  rng = np.random.default_rng(2)
  base = rng.normal(scale=1.0, size=8)
  diff = stats.paired_difference(base + 0.1, base)
  assert diff.excludes_zero() and abs(diff.mean - 0.1) < 1e-12


def test_nan_values_are_dropped():
  est = stats.bootstrap_ci([1.0, np.nan, 3.0])
  assert est.n == 2 and est.mean == 2.0


def test_one_value_gives_no_interval():
  est = stats.bootstrap_ci([0.7])
  assert est.n == 1 and est.mean == 0.7
  assert np.isnan(est.low) and np.isnan(est.high)
  assert "n/a" in str(est) and not est.excludes_zero()
  assert str(stats.bootstrap_ci([])) == "n/a"

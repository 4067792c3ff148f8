"""Tests of experiments.stats against values computed independently."""

import itertools
import warnings

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


def test_paired_difference_is_arm_minus_reference_seed_by_seed():
  # Pairs by index: a shuffled b would give another spread, not this one.
  est = stats.paired_difference([0.9, 0.7, 0.8], [0.6, 0.5, 0.4])
  assert est.mean == pytest.approx(0.3) and est.n == 3
  assert est.low == pytest.approx(stats.interval([0.3, 0.2, 0.4]).low)
  worse = stats.paired_difference([0.6, 0.5, 0.4], [0.9, 0.7, 0.8])
  assert worse.mean == pytest.approx(-0.3)
  assert worse.high == pytest.approx(-est.low)
  assert worse.p == est.p == pytest.approx(2 / 8)
  with pytest.raises(ValueError, match="paired samples need equal shapes"):
    stats.paired_difference([1.0, 2.0], [1.0])


def test_nan_values_are_dropped():
  est = stats.interval([1.0, np.nan, 3.0])
  assert est.n == 2 and est.mean == 2.0


def test_one_value_gives_no_interval():
  est = stats.interval([0.7])
  assert est.n == 1 and est.mean == 0.7
  assert np.isnan(est.low) and np.isnan(est.high)
  assert "n/a" in str(est) and not est.excludes_zero()
  assert str(stats.interval([])) == "n/a"


# Independent computations: the sign-flip p by enumerating every flip in
# integers (exact: no rounding, so ties are ties), the t interval by its
# formula, Holm by hand.


def _brute_force_p(k):
  """Exact sign-flip p of integer differences ``k``, by enumeration."""
  k = [int(v) for v in k]
  hits = 0
  for signs in itertools.product((1, -1), repeat=len(k)):
    hits += abs(sum(s * v for s, v in zip(signs, k))) >= abs(sum(k))
  return hits / 2**len(k)


def _integer_cases(n, rng):
  """Integer differences with ties, zeros, and means that are exactly 0."""
  return [rng.integers(-3, 4, n),  # Ties and zeros.
          rng.integers(-40, 41, n),  # Accuracy-like spread (k / N).
          rng.choice([-1, 1], n),  # All |d| equal.
          rng.choice([-1, 0, 1], n),  # Equal |d| and zeros.
          np.r_[np.ones(n // 2), -np.ones(n - n // 2)],  # Mean 0 (n even).
          np.r_[rng.integers(1, 5, max(n - 2, 0)),  # One sign, zeros.
                np.zeros(min(n, 2), int)],
          np.ones(n), np.zeros(n)]


@pytest.mark.parametrize("n", [1, 2, 5, 10, 12])
def test_sign_flip_p_equals_brute_force_enumeration_with_ties_and_zeros(n):
  rng = np.random.default_rng(n)
  for k in _integer_cases(n, rng):
    expected = _brute_force_p(k)
    # As floats the way they arise (differences of accuracies k / N, which
    # rounding leaves unequal) and scaled: the same p.
    a = rng.integers(800, 900, n)
    for d in (k / 400, (a + k) / 400 - a / 400, k * 0.1, k * (1 / 3),
              k * 1e-8, k * 7.3e5):
      assert stats.sign_flip_p(d) == expected, (k, d)


@pytest.mark.parametrize("n", [5, 10, 12])
def test_sign_flip_p_equals_scipy_permutation_test_without_ties(n):
  # The plain two-sided SciPy call, as in NOTES.md.
  rng = np.random.default_rng(n)
  for _ in range(3):
    d = rng.normal(0.3, 1.0, n)
    plain = scipy_stats.permutation_test(
        (d,), np.mean, permutation_type="samples", vectorized=True,
        n_resamples=2**16).pvalue
    assert stats.sign_flip_p(d) == plain


def test_monte_carlo_p_is_hits_plus_one_over_draws_plus_one_near_exact():
  n = stats.EXACT_MAX + 4
  k = np.random.default_rng(5).integers(-2, 5, n)
  draws = 2**stats.EXACT_MAX
  p = stats.sign_flip_p(k / 400)
  hits = p * (draws + 1) - 1
  assert hits == pytest.approx(round(hits), abs=1e-6) and round(hits) >= 0
  assert p == stats.sign_flip_p(k / 400, seed=0) != stats.sign_flip_p(
      k / 400, seed=1)
  # Every one of the 2^20 flips, in integers.
  signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
  exact = np.mean(np.abs(signs @ k) >= abs(k.sum()))
  assert abs(p - exact) < 4 * np.sqrt(exact * (1 - exact) / draws)
  assert stats.min_sign_flip_p(n) == 1 / (draws + 1)
  assert stats.sign_flip_p(np.ones(n)) == stats.min_sign_flip_p(n)
  for m in (5, 10, 12):
    assert stats.sign_flip_p(np.arange(1, m + 1)) == stats.min_sign_flip_p(m)


def test_t_interval_equals_the_formula_to_1e_12():
  rng = np.random.default_rng(4)
  for n in range(2, 17):
    for x in (rng.normal(0.8, 0.05, n), rng.integers(300, 330, n) / 400,
              np.full(n, 0.1)):
      half = (scipy_stats.t.ppf((1 + stats.LEVEL) / 2, n - 1) *
              np.std(x, ddof=1) / np.sqrt(n))
      est = stats.interval(x)
      assert est.n == n and est.mean == np.mean(x)
      assert abs(est.low - (np.mean(x) - half)) < 1e-12
      assert abs(est.high - (np.mean(x) + half)) < 1e-12
  with np.errstate(all="raise"), warnings.catch_warnings():
    warnings.simplefilter("error")
    assert tuple(stats.interval(np.zeros(12)))[:3] == (0.0, 0.0, 0.0)


def test_holm_on_the_textbook_example():
  # Holm's step-down at alpha = 0.05 with p = 0.01, 0.04, 0.03, 0.005
  # (Wikipedia, "Holm-Bonferroni method"): sorted 0.005, 0.01, 0.03, 0.04
  # are compared with 0.05/4, 0.05/3, 0.05/2, 0.05/1; H4 and H1 are
  # rejected, and the procedure stops at 0.03 > 0.025. Adjusted by hand:
  # 4 * 0.005 = 0.02, 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, max(1 * 0.04, 0.06).
  adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
  np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-15)
  assert [p < 0.05 for p in adjusted] == [True, False, False, True]
  # Capped at 1; ties keep their order; NaNs are not counted.
  np.testing.assert_allclose(stats.holm([0.4, 0.2, 0.2, np.nan])[:3],
                             [0.6, 0.6, 0.6])
  assert stats.holm([0.5, 0.9]) == [1.0, 1.0]


"""Statistics over seeds: t intervals, exact paired tests, Holm's correction.

Every report uses these definitions (``LEVEL``: the one place for it):

- a mean over seeds gets a Student-t confidence interval at ``LEVEL`` (98%,
  the level of the authors' earlier work); with fewer than ``MIN_SEEDS``
  values there is no interval and it prints as ``n/a``. (A percentile
  bootstrap over 5 seeds covered the true mean only ~88% of the time in a
  simulation; the t interval is exact for normal data and close otherwise.)
- a paired difference (arm - reference, seed by seed) gets the same interval
  and the p-value of the exact two-sided sign-flip (permutation) test: under
  the null the sign of each seed's difference is a coin flip, so
  ``p = #{flips s: |mean(s * d)| >= |mean(d)|} / 2^n`` (exact up to 16 pairs;
  above, Monte Carlo over 2^16 random flips, (hits + 1) / (2^16 + 1), so
  never 0). A flip within 1e-12 of the observed ``|mean(d)|``, relative to
  the larger of it and ``max |d|``, counts as a tie, so that rounding does not
  break exact ties (equal or zero differences, a mean that is exactly 0).
  With n pairs p >= 2 / 2^n: 5 pairs can never reach p < 0.02, which is why
  verdicts need 10 seeds, and after Holm over m comparisons the floor is
  m * 2 / 2^n (:func:`min_sign_flip_p`).
- :func:`holm` adjusts a family of p-values (the settings x arms of a claim)
  for multiple comparisons.

SciPy computes the interval (``scipy.stats.ttest_1samp``) and the sign-flip
test (``scipy.stats.permutation_test``); tests/test_stats.py checks both
against independent computations. Holm is here because SciPy has none.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.98
ALPHA = 1 - LEVEL  # Significance threshold of a (Holm-adjusted) p-value.
MIN_SEEDS = 2  # Fewer values give no interval.
EXACT_MAX = 16  # Up to this many pairs the sign-flip test enumerates all.


class Estimate(NamedTuple):
  """A mean over seeds with its confidence interval (and a test's p)."""

  mean: float
  low: float
  high: float
  n: int
  p: float = float("nan")  # Sign-flip p-value of a paired difference.

  def excludes_zero(self) -> bool:
    return bool(self.low > 0 or self.high < 0)

  def __str__(self) -> str:
    if not np.isfinite(self.mean):
      return "n/a"
    if self.n < MIN_SEEDS:
      return f"{self.mean:.4f} [n/a: {self.n} value]"
    return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


def _finite(values) -> np.ndarray:
  x = np.asarray(values, np.float64).ravel()
  return x[np.isfinite(x)]


def interval(values, level: float = LEVEL) -> Estimate:
  """Mean of ``values`` (NaNs dropped) with a Student-t interval.

  ``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)`` (``scipy.stats.
  ttest_1samp``); NaN bounds below ``MIN_SEEDS`` values.
  """
  if not 0 < level < 1:
    raise ValueError(f"level={level} must be between 0 and 1.")
  x = _finite(values)
  if x.size == 0:
    return Estimate(float("nan"), float("nan"), float("nan"), 0)
  if x.size < MIN_SEEDS:
    return Estimate(float(x.mean()), float("nan"), float("nan"), int(x.size))
  with warnings.catch_warnings():  # "Precision loss" on (near) equal values.
    warnings.simplefilter("ignore", RuntimeWarning)
    ci = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(level)
  return Estimate(float(x.mean()), float(ci.low), float(ci.high),
                  int(x.size))


def sign_flip_p(diffs, seed: int = 0) -> float:
  """Two-sided p-value of the paired sign-flip test of ``mean(diffs) = 0``.

  ``scipy.stats.permutation_test`` with ``permutation_type="samples"`` (a
  single sample: its signs are flipped) enumerates every flip up to
  ``EXACT_MAX`` pairs and draws 2^EXACT_MAX random flips (seeded by
  ``seed``) above, counting the observed signs as one of them. The test is
  one-sided on ``|mean|``, which is the two-sided test on the mean (the flips
  come in pairs ``s, -s``) and keeps Monte Carlo's p at ``(hits + 1) /
  (draws + 1)``.
  """
  d = _finite(diffs)
  if d.size == 0:
    return float("nan")
  if d.size == 1:  # Both flips are as extreme (SciPy wants 2 values).
    return 1.0
  observed = abs(d.mean())
  tol = 1e-12 * max(observed, np.abs(d).max(), 1e-300)

  def statistic(x, axis):
    # |mean| of each flip; one within tol of the observed value is a tie.
    # (SciPy's own tolerance, 100 float64 eps, misses ties that rounding
    # broke, e.g. among differences of accuracies k / N.)
    m = np.abs(np.mean(x, axis=axis))
    return np.where(m >= observed - tol, np.maximum(m, observed), m)

  result = scipy_stats.permutation_test(
      (d,), statistic, permutation_type="samples", vectorized=True,
      n_resamples=2**EXACT_MAX, batch=2**12, alternative="greater",
      rng=np.random.default_rng(seed))
  return float(result.pvalue)


def min_sign_flip_p(n: int) -> float:
  """The smallest p :func:`sign_flip_p` can give with ``n`` pairs (all of
  one sign): 2 / 2^n exactly, 1 / (2^EXACT_MAX + 1) by Monte Carlo above
  ``EXACT_MAX`` pairs."""
  if n <= 0:
    return 1.0
  return 2.0 / 2.0**n if n <= EXACT_MAX else 1.0 / (2.0**EXACT_MAX + 1)


def paired_difference(a, b, level: float = LEVEL) -> Estimate:
  """``mean(a - b)`` over seeds paired by index, its interval and its p."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired samples need equal shapes, got {a.shape} and "
                     f"{b.shape}.")
  d = a - b
  return interval(d, level)._replace(p=sign_flip_p(d))


def holm(pvalues: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values (NaNs stay NaN, not counted)."""
  p = np.asarray(pvalues, np.float64)
  ok = np.flatnonzero(np.isfinite(p))
  out = np.full(p.shape, np.nan)
  m = ok.size
  running = 0.0
  for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return out.tolist()


def band(values_ExS, level: float = LEVEL
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean, low and high over seeds at each of E points (for figure bands)."""
  ests = [interval(v, level) for v in values_ExS]
  return tuple(np.array([getattr(e, f) for e in ests])
               for f in ("mean", "low", "high"))

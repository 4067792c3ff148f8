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
  never 0). With n pairs p >= 2 / 2^n: 5 pairs
  can never reach p < 0.02, which is why verdicts need 10 seeds, and after
  Holm over m comparisons the floor is m * 2 / 2^n (:func:`min_sign_flip_p`).
- :func:`holm` adjusts a family of p-values (the settings x arms of a claim)
  for multiple comparisons.
"""

from __future__ import annotations

import itertools
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

  ``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)``; NaN bounds below
  ``MIN_SEEDS`` values.
  """
  if not 0 < level < 1:
    raise ValueError(f"level={level} must be between 0 and 1.")
  x = _finite(values)
  if x.size == 0:
    return Estimate(float("nan"), float("nan"), float("nan"), 0)
  if x.size < MIN_SEEDS:
    return Estimate(float(x.mean()), float("nan"), float("nan"), int(x.size))
  half = (scipy_stats.t.ppf((1 + level) / 2, x.size - 1) *
          x.std(ddof=1) / np.sqrt(x.size))
  return Estimate(float(x.mean()), float(x.mean() - half),
                  float(x.mean() + half), int(x.size))


def sign_flip_p(diffs, seed: int = 0) -> float:
  """Two-sided p-value of the paired sign-flip test of ``mean(diffs) = 0``."""
  d = _finite(diffs)
  if d.size == 0:
    return float("nan")
  observed = abs(d.mean())
  tol = 1e-12 * max(observed, 1e-300)
  if d.size <= EXACT_MAX:  # Every flip: exact.
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    return float(np.mean(np.abs(signs @ d) / d.size >= observed - tol))
  # Monte Carlo over 2^EXACT_MAX random flips, counting the observed signs
  # as one of them, so that p is never 0: (hits + 1) / (draws + 1).
  signs = np.random.default_rng(seed).choice((1.0, -1.0),
                                              size=(2**EXACT_MAX, d.size))
  hits = np.sum(np.abs(signs @ d) / d.size >= observed - tol)
  return float((hits + 1) / (signs.shape[0] + 1))


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

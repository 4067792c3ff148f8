"""Statistics over seeds: bootstrap confidence intervals and paired tests.

The authors' earlier work reports means over trials with 98% bootstrap
confidence intervals from 500 resamples; these are the defaults here
(``LEVEL``, ``RESAMPLES``: the one definition every report uses). With fewer
than ``MIN_SEEDS`` values there is no interval: it prints as ``n/a``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

LEVEL = 0.98
RESAMPLES = 500
MIN_SEEDS = 2  # Fewer values give no interval.


class Estimate(NamedTuple):
  """A mean over seeds with its bootstrap confidence interval."""

  mean: float
  low: float
  high: float
  n: int

  def excludes_zero(self) -> bool:
    return bool(self.low > 0 or self.high < 0)

  def __str__(self) -> str:
    if not np.isfinite(self.mean):
      return "n/a"
    if self.n < MIN_SEEDS:
      return f"{self.mean:.4f} [n/a: {self.n} value]"
    return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


def bootstrap_ci(values, level: float = LEVEL,
                 num_resamples: int = RESAMPLES, seed: int = 0) -> Estimate:
  """Percentile bootstrap CI of the mean of ``values`` (NaNs are dropped).

  Args:
    values: one number per seed.
    level: coverage of the interval, e.g. 0.98.
    num_resamples: bootstrap resamples.
    seed: seed of the resampling, so reports are reproducible.

  Returns:
    An :class:`Estimate`; with fewer than ``MIN_SEEDS`` finite values the
    interval is NaN (no claim can rest on it).
  """
  if not 0 < level < 1:
    raise ValueError(f"level={level} must be between 0 and 1.")
  x = np.asarray(values, np.float64).ravel()
  x = x[np.isfinite(x)]
  if x.size == 0:
    return Estimate(float("nan"), float("nan"), float("nan"), 0)
  if x.size < MIN_SEEDS:
    return Estimate(float(x.mean()), float("nan"), float("nan"), int(x.size))
  rng = np.random.default_rng(seed)
  means = x[rng.integers(0, x.size, (num_resamples, x.size))].mean(axis=1)
  alpha = (1 - level) / 2
  low, high = np.quantile(means, [alpha, 1 - alpha])
  return Estimate(float(x.mean()), float(low), float(high), int(x.size))


def paired_difference(a, b, **kwargs) -> Estimate:
  """Bootstrap CI of ``mean(a - b)`` over seeds paired by index."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired samples need equal shapes, got {a.shape} and "
                     f"{b.shape}.")
  return bootstrap_ci(a - b, **kwargs)


def bootstrap_band(values_ExS, level: float = LEVEL,
                   num_resamples: int = RESAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean, low and high over seeds at each of E points (for figure bands)."""
  ests = [bootstrap_ci(v, level, num_resamples, seed) for v in values_ExS]
  return tuple(np.array([getattr(e, f) for e in ests])
               for f in ("mean", "low", "high"))

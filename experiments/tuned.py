"""Operating points chosen on validation: each rule, setting and budget.

A tuned config (``config.tune``) runs each of its rules (arms) twice: as
itself on the verdict's seeds,
trained on the whole training set and scored on the test set, and as
``val_<rule>`` on tuning seeds of its own (``tuning_seeds`` from
``tuning_seed`` on, disjoint from the verdict's: ``config.tune``,
``experiments.config.tuning_overrides``), with validation held out of each
seed's own training data (for the embedded sets, samples of a pool that no
split's test set contains: ``experiments.data``). Both sweep the same grid.

At every axis value, every *setting* of the grid's other swept fields (e.g.
``model_gain``) and every declared evaluation point (the *budget*, in passes;
the end), each rule is taken at the grid point of its tuned fields
(:data:`TUNED`) with the best mean validation metric over the tuning seeds
(a diverged seed scores ``analysis.FAILED``, as in the tests), and its test
values there, one per verdict seed, are what the claim compares. A budget's
choice is its own: the point chosen after one pass need not be the point
chosen after three.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from experiments import analysis
from experiments import config as config_lib
from experiments import report

TUNED = ("lr", "oja_lr")  # Grid fields chosen on validation.

FLAT = 0.02  # A grid whose validation means all lie within this is flat.
EDGE_NOTE = (
    "Each rule's grid point with the best mean validation value of the "
    "claim's metric over the "
    "tuning seeds, chosen separately at each setting and budget; 'edge' "
    "names a chosen value at its grid's edge (the grid should reach past "
    "it; past an Oja rate's low edge lies Oja rate 0, the arm without Oja "
    f"that the table also holds), and 'flat' a grid whose validation means all lie within {FLAT:g} "
    "of one another (e.g. at chance at every rate), where no choice is "
    "informative.")


def tuning_arm(rule: str) -> str:
  """The arm that chooses ``rule``'s operating points."""
  return config_lib.TUNING_PREFIX + rule


class Chosen(NamedTuple):
  """One rule at its validation-chosen point for one (axis value, setting,
  budget), with its test values over the verdict's seeds."""

  rule: str
  axis_value: str
  setting: tuple[tuple[str, float], ...]  # The grid's other swept fields.
  budget: str  # "1 pass", "end (12000 samples)", ...
  rates: dict[str, float]  # The chosen values of the tuned fields.
  val: float  # Mean validation metric there (tuning seeds).
  val_seeds: int
  edge: str  # Chosen fields at their grid's edge ("-": none).
  values: np.ndarray  # (S,) test metric there, verdict seeds.
  diverged: np.ndarray  # (S,) bool.
  index: int = 0  # The chosen grid point.
  at: int = -1  # Its evaluation in the test job.

  @property
  def key(self) -> tuple[Any, ...]:
    """Where it was chosen: (axis value, setting, budget)."""
    return self.axis_value, self.setting, self.budget


def _setting(point: dict[str, float]) -> tuple[tuple[str, float], ...]:
  return tuple((k, v) for k, v in point.items() if k not in TUNED)


def _edge(grid: Sequence[dict[str, float]], group: list[int], g: int) -> str:
  """Tuned fields of point ``g`` at the edge of the values ``group`` has."""
  edges = []
  for k in TUNED:
    values = sorted({grid[i][k] for i in group if k in grid[i]})
    if len(values) > 1 and grid[g][k] in (values[0], values[-1]):
      edges.append(f"{k} {'low' if grid[g][k] == values[0] else 'high'}")
  return ", ".join(edges) or "-"


def mean_scored(r, metric: str, g: int, at: int) -> float:
  """Mean over seeds of ``metric``, a diverged seed at its worst value."""
  return float(np.mean(analysis.scored(r, metric, g, at)))


def choose(claim, rule: str, metric: str) -> Iterator[Chosen]:
  """``rule`` at its validation-chosen point at every axis value, setting
  and declared point that both of its arms have (``claim``: a
  ``claims.Claim``; a point a job lacks is noted there)."""
  run = claim.run
  for test in [r for r in run.results if r.job.arm == rule]:
    val = analysis.find(run, tuning_arm(rule), test.job.axis_value)
    if val is None:
      claim.notes[f"{rule} at {test.job.axis_value}: no tuning arm "
                  f"{tuning_arm(rule)} in the run"] = None
      continue
    if list(val.grid) != list(test.grid):
      raise ValueError(f"arms {tuning_arm(rule)} and {rule} sweep different "
                       "grids; a tuned rule's arms must share one.")
    groups: dict[Any, list[int]] = {}
    for g, p in enumerate(val.grid):
      groups.setdefault(_setting(p), []).append(g)
    for point in claim.points:
      at_val, at_test = claim.at(val, point), claim.at(test, point)
      if at_val.index is None or at_test.index is None:
        continue
      budget = (f"end ({at_test.samples} samples)" if point.passes is None
                else point.label)
      for setting, group in groups.items():
        means = {i: mean_scored(val, metric, i, at_val.index) for i in group}
        g = max(group, key=means.get)  # The first of equal means.
        flat = len(group) > 1 and max(means.values()) - min(
            means.values()) < FLAT
        yield Chosen(
            rule, test.job.axis_value, setting, budget,
            {k: v for k, v in val.grid[g].items() if k in TUNED},
            means[g], int(val.history["diverged_at"].shape[-1]),
            _edge(val.grid, group, g) + ("; flat" if flat else ""),
            analysis.value(test, metric, g, at_test.index),
            analysis.diverged(test, g, at_test.index), g, at_test.index)


def setting_label(axis: str, c: Chosen) -> str:
  parts = ([f"{axis}={c.axis_value}"] if axis else []) + [
      f"{k.replace('model_', '')}={v:g}" for k, v in c.setting]
  return ", ".join(parts + [c.budget])


def compare(a: Chosen, b: Chosen, axis: str, metric: str,
            margin: float = 0.0) -> analysis.Comparison:
  """``a + margin - b`` paired over the verdict's seeds, each at its chosen
  point (``margin`` > 0: a non-inferiority test; a diverged seed still
  scores its metric's worst value, without the margin)."""
  arm = f"{a.rule} + {margin:g}" if margin else a.rule
  return analysis.paired(setting_label(axis, a), arm, b.rule,
                         a.values + margin, b.values, a.diverged, b.diverged,
                         metric)


def best(candidates: Sequence[Chosen]) -> Chosen:
  """The candidate with the best validation metric (first on ties)."""
  return max(candidates, key=lambda c: c.val)


def chosen_table(chosen: Sequence[Chosen], axis: str, metric: str) -> str:
  """Markdown: per setting, budget and rule, the chosen point, its mean
  validation ``metric`` and the edges it sits at."""
  rows = [[setting_label(axis, c), c.rule,
           ", ".join(f"{k}={v:g}" for k, v in c.rates.items()),
           f"{c.val:.3f}", c.edge] for c in chosen]
  return report.table(["setting, budget", "rule", "chosen point",
                       f"val {analysis.words(metric)} (tuning seeds)",
                       "edge"], rows)


def outcome(c: analysis.Comparison) -> str:
  """beats / loses to / ties with, from a (Holm-adjusted) comparison."""
  return "beats" if c.better else "loses to" if c.worse else "ties with"

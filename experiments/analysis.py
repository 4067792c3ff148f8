r"""Compares the arms of a finished run, paired over seeds.

A run is its config and its job results (``experiments.schema.JobResult``),
each with ``history[key]`` shaped ``(E, G, S)`` (evaluations, sweep points,
seeds) or ``(E, G, S, L)`` for per-layer diagnostics.

Every comparison is a paired difference over seeds of a metric between an arm
and a reference arm at one *setting* (axis value, sweep point, evaluation):
``d_s = m_s(arm) - m_s(ref)``, its mean with a 98% Student-t interval and the
p-value of the exact sign-flip test (``experiments.stats``).

A seed that diverged (``diverged_at >= 0`` by that evaluation, see
``ojax.train``) is a failure of its arm: in a metric of :data:`FAILED`
(accuracies, memory capacity) it scores that metric's worst value, 0, in its
pair, whatever its numbers say; a pair where both arms diverged is a tie
(difference 0). Every seed stays in the pairs, so the interval, the sign-flip
p and Holm run over all seeds, and an arm that diverges where its baseline
learns is worse there. (0 rather than chance level: a diverged network has
non-finite parameters and no usable output, and 0 is what tuning and the
validation choice of an operating point score it too.) In a metric with no
worst value (a weight or activation norm, reported beside a claim) the pairs
where either arm diverged are left out and marked so. The p-values of a
claim's family (its settings x Oja arms) are Holm-adjusted; a difference is
*significant* when its adjusted p is below 0.02, *better* or *worse* by its
sign.

Verdict rule (the same for every experiment; :data:`RULE`): over the claim's
settings, the primary Oja arm (the reference formulation) is compared with
its baseline. With B settings better and W worse out of N:

- reproduced: B >= N/2 and W = 0;
- partly reproduced: 0 < B < N/2 and W = 0;
- mixed: B > 0 and W > 0 (both counts are stated);
- contradicted: W > N/2 and B = 0;
- not reproduced: otherwise (B = 0);
- no verdict, with its cause: no setting; seeds that diverged in a metric
  with no worst value to score them; fewer than ``MIN_SEEDS_VERDICT`` seeds
  per arm; every seed of both arms diverged at every setting (nothing was
  compared); or too few seeds for the exact test to reach significance
  after Holm over the family.

The evidence line names the diverged seeds of each arm over the settings.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, NamedTuple, Optional, Sequence

import ml_collections
import numpy as np

from experiments import schema
from experiments import stats
from experiments.config import Job, expand
from experiments.schema import JobResult, merge_splits

MIN_SEEDS_VERDICT = 10
# The score of a diverged seed in a paired comparison of each metric: the
# worst value the metric can take. Other keys (norms, losses) have none.
FAILED = {"test_accuracy": 0.0, "online_accuracy": 0.0,
          "memory_capacity": 0.0}
# Each metric's words in a table header ("val acc", "final test acc").
WORDS = {"test_accuracy": "acc", "online_accuracy": "online acc",
         "memory_capacity": "memory capacity"}


def words(metric: str) -> str:
  """``metric``'s words in a table header."""
  return WORDS.get(metric, metric.replace("_", " "))
RULE = ("Verdict rule: at each of the claim's N settings the reference-"
        "formulation arm (Oja on all layers) is compared with its baseline, "
        "paired over seeds (exact sign-flip test, p-values Holm-adjusted over "
        "the claim's settings x Oja arms; significant below "
        f"{stats.ALPHA:g}; {stats.LEVEL:.0%} t intervals). With B settings "
        "significantly better and W worse: *reproduced* if B >= N/2 and W = 0; "
        "*partly reproduced* if 0 < B < N/2 and W = 0; *mixed* if B > 0 and "
        "W > 0; *contradicted* if W > N/2 and B = 0; *not reproduced* "
        f"otherwise. Fewer than {MIN_SEEDS_VERDICT} seeds per arm, or too "
        "few for the smallest possible sign-flip p (2 / 2^n) to pass Holm "
        "over the family: no verdict. A seed that diverged is a failure of "
        "its arm: it scores 0 (the worst accuracy or memory capacity) in its "
        "pair, a pair where both arms diverged is a tie, and every seed "
        "stays in the test; the verdict line names the diverged seeds of "
        "each arm.")


class Run(NamedTuple):
  run_dir: str
  config: ml_collections.ConfigDict
  results: list[JobResult]


class Comparison(NamedTuple):
  setting: str
  arm: str
  reference: str
  diff: stats.Estimate  # Mean, t interval, n and raw sign-flip p.
  diverged: tuple[int, int] = (0, 0)  # Diverged seeds: (arm, reference).
  p_adj: float = float("nan")  # Holm-adjusted over the claim's family.
  # True: each diverged seed scored its metric's worst value (FAILED) in its
  # pair. False: diverged seeds were left out of the pairs (a metric with
  # no worst value), or nothing could diverge (hand-built comparisons,
  # meta_plasticity's episodes).
  scored: bool = False

  @property
  def significant(self) -> bool:
    p = self.p_adj if np.isfinite(self.p_adj) else self.diff.p
    return bool(p < stats.ALPHA)

  @property
  def better(self) -> bool:
    return self.significant and self.diff.mean > 0

  @property
  def worse(self) -> bool:
    return self.significant and self.diff.mean < 0


def adjust(comparisons: Sequence[Comparison]) -> list[Comparison]:
  """Holm-adjusts the p-values of one family of comparisons."""
  adjusted = stats.holm([c.diff.p for c in comparisons])
  return [c._replace(p_adj=p) for c, p in zip(comparisons, adjusted)]


def label(value: Any) -> str:
  """A short text for an axis value: ``(170, 130)`` -> ``170-130``."""
  if isinstance(value, (list, tuple)):
    return "-".join(str(v) for v in value)
  return str(value)


def from_results(run_dir: str, config: ml_collections.ConfigDict,
                 results: Sequence[JobResult]) -> Run:
  """A :class:`Run` of results in memory; axis values become labels."""
  return Run(run_dir, config, [
      JobResult(Job(r.job.id, label(r.job.axis_value), r.job.arm, config),
                r.grid, {k: np.asarray(v, np.float64)
                         for k, v in r.history.items()}) for r in results])


def load_run(run_dir: str) -> Run:
  """The config and the finished jobs (in config order) of ``run_dir``."""
  with open(os.path.join(run_dir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  results, jobs = [], expand(config)
  for job in jobs:
    path = os.path.join(run_dir, "jobs", f"{job.id}.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      results.append(schema.result_from_json(job, json.load(f)))
  results = merge_splits(results, jobs)
  if not results:
    raise FileNotFoundError(f"no finished jobs in {run_dir}/jobs")
  return from_results(run_dir, config, results)


def find(run: Run, arm: str, axis_value: Any = None) -> Optional[JobResult]:
  for r in run.results:
    if r.job.arm == arm and (axis_value is None or
                             r.job.axis_value == label(axis_value)):
      return r
  return None


def eval_index(result: JobResult, samples: int) -> Optional[int]:
  """Index of the evaluation after ``samples`` samples, if there is one."""
  hits = np.flatnonzero(result.history["samples"] == samples)
  return int(hits[0]) if hits.size else None


def value(result: JobResult, key: str = "test_accuracy", point: int = 0,
          at: int = -1) -> np.ndarray:
  """Per-seed ``key`` at evaluation ``at`` and sweep point ``point``."""
  return result.history[key][at, point]


def diverged(result: JobResult, point: int = 0, at: int = -1) -> np.ndarray:
  """Per seed: did it diverge by evaluation ``at``?"""
  return np.asarray(result.history["diverged_at"][at, point]) >= 0


def scored(result: JobResult, key: str = "test_accuracy", point: int = 0,
           at: int = -1) -> np.ndarray:
  """Per-seed ``key`` with each diverged seed at ``FAILED[key]`` (a key with
  no worst value: NaN)."""
  return np.where(diverged(result, point, at), FAILED.get(key, np.nan),
                  value(result, key, point, at))


def paired(setting: str, arm: str, reference: str, a, b, diverged_a,
           diverged_b, key: str = "test_accuracy") -> Comparison:
  """``a - b`` seed by seed, a diverged seed counted as its arm's failure.

  ``a``, ``b``: per-seed values of ``key`` (or of a measure of it, e.g. a
  mean over evaluations); ``diverged_a``, ``diverged_b``: per seed, did it
  diverge. With ``key`` in :data:`FAILED` a diverged seed scores
  ``FAILED[key]`` in its arm and every seed is paired (both diverged: a tie,
  difference 0); otherwise the pairs where either diverged are left out.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  da, db = np.asarray(diverged_a, bool), np.asarray(diverged_b, bool)
  if key in FAILED:
    diff = stats.paired_difference(np.where(da, FAILED[key], a),
                                   np.where(db, FAILED[key], b))
  else:
    keep = ~da & ~db
    diff = stats.paired_difference(a[keep], b[keep])
  return Comparison(setting, arm, reference, diff,
                    (int(da.sum()), int(db.sum())), scored=key in FAILED)


def compare(a: JobResult, b: JobResult, setting: str, key="test_accuracy",
            point: int = 0, at: int = -1,
            reduce: Callable[[np.ndarray], np.ndarray] = lambda v: v,
            values: Optional[Callable[[JobResult], np.ndarray]] = None
            ) -> Comparison:
  """Paired ``key(a) - key(b)`` over seeds, diverged ones as :func:`paired`
  counts them (by evaluation ``at``).

  ``values(result) -> (S,)`` replaces the per-seed metric (a measure of
  ``key``, e.g. a mean over evaluations); by default ``reduce(value(result,
  key, point, at))``.
  """
  get = values or (lambda r: reduce(value(r, key, point, at)))
  return paired(setting, a.job.arm, b.job.arm, get(a), get(b),
                diverged(a, point, at), diverged(b, point, at), key)


def pairwise(run: Run, arm: str, reference: str, keep=lambda v, g: True,
             at: int = -1, key: str = "test_accuracy") -> list[Comparison]:
  """``arm - reference`` at every axis value and sweep point ``keep`` keeps."""
  out = []
  for r in run.results:
    if r.job.arm != arm:
      continue
    base = find(run, reference, r.job.axis_value)
    if base is None:
      continue
    for g, point in enumerate(r.grid):
      if not keep(r.job.axis_value, point):
        continue
      parts = ([f"{run.config.axis.split('.')[-1]}={r.job.axis_value}"]
               if run.config.axis else []) + [f"{k}={v:g}" for k, v in
                                              point.items()]
      out.append(compare(r, base, ", ".join(parts) or "-", key, g, at))
  return out


def verdict(primary: Sequence[Comparison],
            secondary: Sequence[Comparison] = ()) -> tuple[str, str]:
  """The verdict of :data:`RULE` and a one-line count of the evidence.

  ``primary`` and ``secondary`` should be Holm-adjusted together
  (:func:`adjust`); only ``primary`` decides, ``secondary`` is reported.
  A withheld verdict ("no verdict") gives its cause, the first of: no
  setting; diverged seeds left out of the pairs (a metric with no worst
  value); too few seeds; every seed of both arms diverged everywhere; too
  few seeds for the family's Holm correction.
  """
  n = len(primary)
  if not n:
    return "no verdict", "no claim settings in this run."
  arm = primary[0].arm
  # Every reference the claim's arm met (tricks: one per trick), named.
  refs = list(dict.fromkeys(c.reference for c in primary))
  ref = "`, `".join(refs)
  lost = [c for c in primary if not c.scored and any(c.diverged)]
  if lost:
    return "no verdict", (
        f"seeds diverged at {len(lost)}/{n} claim settings (`{arm}` "
        f"{sum(c.diverged[0] for c in lost)}, `{ref}` "
        f"{sum(c.diverged[1] for c in lost)}) in a metric with no worst "
        "value to score them, so they were left out of the pairs; compare "
        f"on one that has one ({', '.join(FAILED)}).")
  seeds = min(c.diff.n for c in primary)
  if seeds < MIN_SEEDS_VERDICT:
    return "no verdict", (f"only {seeds} seed(s) per arm; the rule needs at "
                          f"least {MIN_SEEDS_VERDICT}.")
  total = sum(c.diff.n for c in primary)
  failed = (f"diverged seeds over {n} setting{'s' * (n > 1)}: `{arm}` "
            f"{sum(c.diverged[0] for c in primary)}/{total}, `{ref}` "
            f"{sum(c.diverged[1] for c in primary)}/{total}")
  if all(c.scored for c in primary) and all(
      c.diverged == (c.diff.n, c.diff.n) for c in primary):
    return "no verdict", (f"every seed of both arms diverged at every claim "
                          f"setting ({failed}): nothing was compared.")
  family = len(primary) + len(secondary)
  if family * stats.min_sign_flip_p(seeds) >= stats.ALPHA:
    need = next(k for k in range(seeds, 64)
                if family * stats.min_sign_flip_p(k) < stats.ALPHA)
    return "no verdict", (
        f"with {seeds} seeds the sign-flip test cannot reach p < "
        f"{stats.ALPHA:g} after Holm over {family} comparisons (smallest "
        f"possible p: {family * stats.min_sign_flip_p(seeds):.3g}); the "
        f"family needs at least {need} seeds.")
  better = sum(c.better for c in primary)
  worse = sum(c.worse for c in primary)
  if better and worse:
    word = "mixed"
  elif better:
    word = "reproduced" if 2 * better >= n else "partly reproduced"
  elif 2 * worse > n:
    word = "contradicted"
  else:
    word = "not reproduced"
  text = (f"`{arm}` significantly better in {better}/{n} claim "
          f"settings, significantly worse in {worse}/{n}")
  if secondary:
    pairs = dict.fromkeys((c.arm, c.reference) for c in secondary)
    name = ", ".join(f"`{a}`" if refs == [r] else f"`{a}` vs `{r}`"
                     for a, r in pairs)
    text += (f"; {name} better in "
             f"{sum(c.better for c in secondary)}/{len(secondary)}, worse in "
             f"{sum(c.worse for c in secondary)}/{len(secondary)}")
  text += " (Holm-adjusted sign-flip tests)"
  if all(c.scored for c in primary):
    text += (f"; {failed} (a diverged seed scores 0, a failure of its arm; "
             "both diverged: a tie)")
  return word, text + "."


def comparison_table(comparisons: Sequence[Comparison],
                     what: str = "final test acc",
                     words: tuple[str, str] = ("better", "worse")) -> str:
  """Markdown rows: setting, arms, paired difference, p-values, significance.

  ``words`` name a significant positive and negative difference. Unless the
  comparisons were adjusted already (a claim's family), the table's rows are
  Holm-adjusted as one family. The last column counts the diverged seeds
  of each arm (scored 0 in their pairs, or "left out" where the metric has
  no worst value).
  """
  if comparisons and not any(np.isfinite(c.p_adj) for c in comparisons):
    comparisons = adjust(comparisons)  # The table is its own family.
  lines = [f"| setting | arm - baseline | {what} difference "
           f"[{stats.LEVEL:.0%} CI] | p (sign-flip) | p (Holm) | significant "
           "| diverged (arm / base) |", "|---|---|---|---|---|---|---|"]
  for c in comparisons:
    sig = (f"yes, {words[0]}" if c.better else f"yes, {words[1]}"
           if c.worse else "n/a" if not np.isfinite(c.diff.p) else "no")
    out = "" if c.scored or not any(c.diverged) else ", left out"
    lines.append(f"| {c.setting} | {c.arm} - {c.reference} | {c.diff} | "
                 f"{c.diff.p:.3g} | {c.p_adj:.3g} | {sig} | "
                 f"{c.diverged[0]} / {c.diverged[1]}{out} |")
  return "\n".join(lines)

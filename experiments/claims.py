"""The claim each experiment tests, and its evidence from a run.

A verdict config declares its claim as data, ``config.claim``
(``experiments.configs.base.claim``): the statement, the arm and its
baseline, the secondary arms of its Holm family, the arms reported beside,
the metric, the counted settings (``axis_min``, ``gains_below`` /
``gains_above``) and the evaluation points in passes over the training set
(one pass = the training samples the job's dataset gives, validation held
out: ``experiments.data.train_size``) and/or at the end.

``section(run) -> Section``: the claim in one sentence, the tables, the
figure and the verdict computed by ``analysis.verdict`` (see
``analysis.RULE``) over the declared settings. An experiment in ``SECTIONS``
adds its own tables and figures, driven by the declared fields; any other
config with a claim gets the generic evaluation (:func:`claim_section`); a
run without one (a tuning sweep, a new config) gets tables and figures
without a verdict. A declared evaluation point that a run does not have
(a run shorter than one pass, no evaluation there, a task without passes)
is named in the section's scope with the reason, never dropped silently.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, NamedTuple, Optional

import ml_collections
import numpy as np

from experiments import analysis
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import figures
from experiments import report
from experiments import stats
from experiments import tuned
from experiments.report import Section

# --- A declared claim: its arms, settings and evaluation points -----------


def declared(config: ml_collections.ConfigDict
             ) -> Optional[ml_collections.ConfigDict]:
  """The run's claim: ``config.claim`` (None: the config tests no claim),
  or, for a run directory written before claims were declared (no field),
  its experiment config's current one."""
  if "claim" in config:
    return config.claim or None
  name = config.get("experiment", "")
  if name in SECTIONS:
    return importlib.import_module(
        f"experiments.configs.{name}").get_config().claim
  return None


def one_pass(cfg: ml_collections.ConfigDict) -> tuple[Optional[int], str]:
  """Training samples in one pass of a job (``cfg`` resolved), or None and
  the reason there is none."""
  if cfg.get("task", "classifier") != "classifier":
    return None, f"the {cfg.task} task trains on fresh samples (no passes)"
  try:
    return data_lib.train_size(cfg.dataset, data_dir=cfg.data_dir or None,
                               validation=cfg.validation), ""
  except (ValueError, ImportError, data_lib.DataUnavailableError):
    return None, (f"the training set size of {cfg.dataset!r} is not known "
                  "here (its data is not on disk)")


class Point(NamedTuple):
  """A declared evaluation point: ``passes`` over the training set, or the
  last evaluation (``passes=None``)."""

  passes: Optional[float]

  @property
  def label(self) -> str:
    if self.passes is None:
      return "end"
    return f"{self.passes:g} pass" + ("" if self.passes == 1 else "es")


class At(NamedTuple):
  """Where a point falls in one job: its evaluation index (-1: the last)
  and samples, or ``index=None`` and why."""

  index: Optional[int]
  samples: int
  why: str = ""


class Claim:
  """A declared claim over one run: jobs, evaluation points, notes."""

  def __init__(self, run: analysis.Run, claim: ml_collections.ConfigDict):
    self.run, self.c = run, claim
    self.points = [Point(float(p)) for p in claim.at_passes] + (
        [Point(None)] if claim.at_end else [])
    self._configs = {(j.arm, analysis.label(j.axis_value)): j.config
                     for j in config_lib.expand(run.config)}
    self.notes: dict[str, None] = {}  # Ordered, without repeats.

  def job_config(self, r) -> ml_collections.ConfigDict:
    return self._configs.get((r.job.arm, r.job.axis_value), self.run.config)

  def at(self, r, point: Point) -> At:
    """Point ``point`` in job ``r``; a missing one is noted with its reason.

    A pass that is the run's last evaluation is the end when the claim
    counts the end too (noted: one comparison, not two).
    """
    samples = r.history["samples"]
    end = int(samples[-1])
    if point.passes is None:
      return At(-1, end)
    n, why = one_pass(self.job_config(r))
    if n is None:
      return self._missing(point, 0, why)
    want = int(round(point.passes * n))
    if want > end:
      who = f"arm {r.job.arm}" if self.c.chosen_on else "the run"
      return self._missing(point, want, (
          f"{who} stops at {end / n:.3g} passes ({end:,} samples; one "
          f"pass is {n:,})"))
    i = analysis.eval_index(r, want)
    if i is None:
      return self._missing(point, want, (
          f"no evaluation at {want:,} samples (eval_every="
          f"{self.job_config(r).eval_every})"))
    if i == len(samples) - 1:
      if self.c.at_end:
        self.notes[f"{point.label} is the end ({end:,} samples): compared "
                   "once"] = None
        return At(None, want, "the end")
      return At(-1, want)
    return At(i, want)

  def _missing(self, point: Point, samples: int, why: str) -> At:
    self.notes[f"{point.label}: not evaluated: {why}"] = None
    return At(None, samples, why)

  def counted(self, axis_value: Any) -> bool:
    """Does the claim count this axis value (``axis_min``)?"""
    if self.c.axis_min is None:
      return True
    return float(axis_value) >= self.c.axis_min

  def counted_gain(self, gain: float) -> bool:
    below, above = self.c.gains_below, self.c.gains_above
    if below is None and above is None:
      return True
    return ((below is not None and gain <= below) or
            (above is not None and gain >= above))

  def scope(self) -> str:
    """The declared scope, then every declared point the run lacks."""
    return "; ".join([self.c.scope, *self.notes])


def _final_tables(run: analysis.Run, keys=("test_accuracy",
                                           "online_accuracy")
                  ) -> list[tuple[str, str]]:
  return [(f"Final metrics per arm ({stats.LEVEL:.0%} t interval over the "
           "seeds that did not diverge; diverged: see ojax.train)",
           report.summary_table(run.results, run.config, keys))]


def _figure(run: analysis.Run, name: str) -> str:
  return os.path.join(run.run_dir, f"{name}.png")


def _family(primary, *others):
  """Holm-adjusts a claim's comparisons together; returns them split again."""
  groups = (primary,) + others
  flat = analysis.adjust([c for g in groups for c in g])
  out, i = [], 0
  for g in groups:
    out.append(flat[i:i + len(g)])
    i += len(g)
  return out


def _section(claim: Claim, primary, secondary, tables, figure_paths,
             verdict=None):
  word, evidence = verdict or analysis.verdict(primary, secondary)
  return Section(claim.c.statement, claim.scope(), tables,
                 [os.path.basename(p) for p in figure_paths], word, evidence)


def _arm_comparisons(claim: Claim, label: Callable[[Any, Point, At], str]
                     ) -> tuple[list, list]:
  """``arm`` and each ``secondary`` arm against ``reference`` at every
  counted axis value and declared point, grid point 0."""
  c, run = claim.c, claim.run
  primary, secondary = [], []
  for arm, out in ((c.arm, primary), *((s, secondary) for s in c.secondary)):
    for r in run.results:
      if r.job.arm != arm or not claim.counted(r.job.axis_value):
        continue
      base = analysis.find(run, c.reference, r.job.axis_value)
      if base is None:  # --config.select_arms left the baseline out.
        continue
      for point in claim.points:
        at = claim.at(r, point)
        if at.index is not None:
          out.append(analysis.compare(r, base, label(r.job.axis_value, point,
                                                     at), c.metric,
                                      at=at.index))
  return primary, secondary


def claim_section(run: analysis.Run, claim: Claim) -> Section:
  """Any declared claim: the arms' paired differences, verdict, curves."""
  axis = run.config.axis.split(".")[-1] if run.config.axis else ""

  def label(value, point, at):
    where = (f"end ({at.samples} samples)" if point.passes is None else
             f"{point.label} ({at.samples})")
    return f"{axis}={value}, {where}" if axis else where

  primary, secondary = _family(*_arm_comparisons(claim, label))
  c = claim.c
  beside = [x for arm in c.beside
            for x in analysis.pairwise(run, arm, c.reference, key=c.metric)]
  tables = _final_tables(run) + [
      (f"Paired difference in {c.metric.replace('_', ' ')} against "
       f"{c.reference}", analysis.comparison_table(primary + secondary)),
      (f"Paired difference against {c.reference} (reported, their own "
       "family)", analysis.comparison_table(beside) if beside else "")]
  passes = [p for p in claim.points if p.passes is not None]
  ref = next((r for r in run.results if r.job.arm == c.reference), None)
  mark = (claim.at(ref, passes[0]).samples if passes and ref is not None
          else 0)
  keys = tuple(dict.fromkeys(k for k in (c.metric, "online_accuracy")
                             if k in run.results[0].history))
  return _section(claim, primary, secondary, tables, [figures.curves(
      run, _figure(run, run.config.experiment or "curves"), keys,
      mark_samples=mark)])


def online(run: analysis.Run, claim: Claim) -> Section:
  c = claim.c
  figure = _figure(run, run.config.experiment)
  primary, secondary, online_rows = [], [], []
  for arm, out in ((c.arm, primary), *((s, secondary) for s in c.secondary)):
    for r in run.results:
      if r.job.arm != arm or not claim.counted(r.job.axis_value):
        continue
      base = analysis.find(run, c.reference, r.job.axis_value)
      first = None  # The first pass point the run has: where online acc ends.
      for point in claim.points:
        at = claim.at(r, point)
        if point.passes is not None and first is None:
          first = at.index if at.index is not None or at.why != "the end" \
              else -1
        if at.index is None:
          continue
        where = (f"end ({at.samples} samples)" if point.passes is None else
                 f"{point.label} ({at.samples})")
        out.append(analysis.compare(r, base, f"hidden={r.job.axis_value}, "
                                    f"{where}", c.metric, at=at.index))
      stop = (len(r.history["samples"]) if first is None or first == -1
              else first + 1)
      online_rows.append(analysis.compare(
          r, base, f"hidden={r.job.axis_value}, first pass", at=stop - 1,
          values=lambda res, stop=stop: np.nanmean(
              res.history["online_accuracy"][1:stop, 0], axis=0)))
  primary, secondary = _family(primary, secondary)
  tables = _final_tables(run) + [
      ("Paired difference in test accuracy (BP + Oja - BP)",
       analysis.comparison_table(primary + secondary)),
      ("Paired difference in online accuracy (each sample scored before it "
       "is learned), mean over the first pass",
       analysis.comparison_table(online_rows, "online acc")),
      ("Diagnostics at the end (means over seeds)",
       analysis.diagnostics_table(run))]
  passes = [p for p in claim.points if p.passes is not None]
  ref = analysis.find(run, c.reference)
  mark = claim.at(ref, passes[0]).samples if passes and ref else 0
  return _section(claim, primary, secondary, tables,
                  [figures.curves(run, figure, mark_samples=mark)])


def _points_of(claim: Claim, r) -> list[tuple[str, int]]:
  """(label, evaluation index) of each declared point job ``r`` has; the
  end is labelled with its samples."""
  out = []
  for point in claim.points:
    at = claim.at(r, point)
    if at.index is not None:
      out.append((f"end ({at.samples} samples)" if point.passes is None
                  else point.label, at.index))
  return out


def deep_online(run: analysis.Run, claim: Claim) -> Section:
  c = claim.c
  figure = _figure(run, run.config.experiment)
  deep = [r.job.axis_value for r in run.results if r.job.arm == c.arm
          and claim.counted(r.job.axis_value)]
  primary, secondary, init_rows, good = [], [], [], []
  for value in deep:
    bp = analysis.find(run, c.reference, value)
    if bp is None:  # --config.select_arms left the baseline out.
      continue
    for label, at in _points_of(claim, bp):
      setting = f"depth={value}, {label}"
      for arm, out in ((c.arm, primary),
                       *((s, secondary) for s in c.secondary)):
        r = analysis.find(run, arm, value)
        if r is not None:
          out.append(analysis.compare(r, bp, setting, c.metric, at=at))
      for init in c.good_inits:
        bp_init = analysis.find(run, f"{c.reference}_{init}", value)
        oja_init = analysis.find(run, f"{c.arm}_{init}", value)
        if bp_init is not None:
          good.append(analysis.compare(bp_init, bp, setting, at=at))
        if bp_init is not None and oja_init is not None:
          good.append(analysis.compare(oja_init, bp_init, setting, at=at))
        oja = analysis.find(run, c.arm, value)
        if bp_init is not None and oja is not None:
          gain = good[-2] if oja_init is not None else good[-1]
          frac = (str(analysis.ratio_ci(
              analysis.scored(oja, at=at), analysis.scored(bp, at=at),
              analysis.scored(bp_init, at=at), analysis.scored(bp, at=at)))
                  if gain.better else f"n/a ({c.reference}_{init} gains "
                  f"nothing significant over {c.reference})")
          init_rows.append([setting, init, str(gain.diff), frac])
  primary, secondary = _family(primary, secondary)
  every = [x for arm in (c.arm, *c.secondary)
           for x in analysis.pairwise(run, arm, c.reference)]
  depths = tuple(str(d) for d in c.layer_depths)
  tables = _final_tables(run) + [
      ("Paired difference in test accuracy, every depth (its own family)",
       analysis.comparison_table(every)),
      ("Depth or initialization? A good init against Xavier BP, and Oja on "
       "top of a good init (paired, each arm at its own tuned rates)",
       analysis.comparison_table(good)),
      ("Fraction of the good-init gain that Oja recovers: (bp_oja - bp) / "
       "(bp_init - bp), Xavier bp as the base, paired bootstrap over seeds",
       report.table(["setting", "good init", "bp_init - bp", "fraction "
                     "recovered [98% CI]"], init_rows)),
      ("Diagnostics at the end (means over seeds that did not diverge; "
       "act_last_hidden is the mechanism the paper proposes: activity that "
       "neither vanishes nor explodes with depth)",
       analysis.diagnostics_table(run)),
      ("The mechanism, layer by layer: activation norm ||y_l|| of hidden "
       "layers at the end (means over seeds that did not diverge), depths "
       + " and ".join(depths), _layer_norm_table(run, depths))]
  return _section(claim, primary, secondary, tables,
                  [figures.versus_axis(run, figure)])


def _layer_norm_table(run: analysis.Run, depths) -> str:
  """Hidden activation norms at the end, at five depths within the net."""
  rows = []
  for r in run.results:
    if str(r.job.axis_value) not in depths or (
        "activation_norm" not in r.history):
      continue
    ok = ~analysis.diverged(r)
    norms = np.nanmean(r.history["activation_norm"][-1, 0][ok], axis=0)[:-1]
    n = len(norms)
    rows.append([str(r.job.axis_value), r.job.arm] + [
        f"{norms[l]:.3g}" for l in (0, n // 4, n // 2, 3 * n // 4, n - 1)])
  return report.table(["depth", "arm", "first", "1/4", "1/2", "3/4",
                       "last hidden"], rows) if rows else ""


def _chosen_pairs(claim: Claim, val, test, groups, label, at_val, at_test):
  """Per group of grid points (a setting): the baseline's and the Oja
  rule's points chosen on ``val`` (best mean at ``at_val``), compared on
  ``test`` at ``at_test``.

  ``groups``: {setting value: [grid indices]}; Oja rate 0 is the baseline.
  Yields (setting value, baseline point, Oja point, comparison, table row).
  """
  grid = val.grid
  for value, points in groups.items():
    bp = [g for g in points if grid[g]["oja_lr"] == 0]
    oja = [g for g in points if grid[g]["oja_lr"] > 0]
    if not bp or not oja:
      continue
    gb, go = _choose(val, bp, at_val), _choose(val, oja, at_val)
    sub = [grid[g] for g in points]
    tuned = lambda p: {k: v for k, v in p.items() if k != "model_gain"}
    setting = f"gain={value:g}"
    row = [label, setting,
           *_chosen_cells(val, sub, points, gb, at_val, tuned),
           *_chosen_cells(val, sub, points, go, at_val, tuned)]
    yield value, gb, go, _paired_points(
        test, go, gb, at_test, f"{label}, {setting}",
        (claim.c.arm, claim.c.reference)), row


def _val_test_pairs(claim: Claim):
  """(val job, test job) per axis value of a validation-chosen claim."""
  run, c = claim.run, claim.c
  for val in [r for r in run.results if r.job.arm == c.chosen_on]:
    test = analysis.find(run, c.tested_on, val.job.axis_value)
    if test is not None:
      yield val, test


def bad_init(run: analysis.Run, claim: Claim) -> Section:
  """BP vs BP + Oja at each (scheme, gain), each tuned there on validation."""
  c = claim.c
  primary, other, rows, series = [], [], [], {}
  for val, test in _val_test_pairs(claim):
    groups = {gain: [g for g, p in enumerate(val.grid)
                     if p["model_gain"] == gain]
              for gain in sorted({p["model_gain"] for p in val.grid})}
    # {rule: (gains, per-seed test accuracies at the chosen points)}.
    curves = series[val.job.axis_value] = {c.reference: ([], []),
                                           c.arm: ([], [])}
    for point in claim.points:
      at_val, at_test = claim.at(val, point), claim.at(test, point)
      if at_val.index is None or at_test.index is None:
        continue
      for gain, gb, go, comparison, row in _chosen_pairs(
          claim, val, test, groups, f"init={val.job.axis_value}",
          at_val.index, at_test.index):
        rows.append(row)
        if claim.counted_gain(gain):
          primary.append(comparison)
        else:  # The good init, reported beside the claim, named as such.
          other.append(comparison._replace(arm=f"{c.arm} at gain {gain:g}"))
        for rule, g in ((c.reference, gb), (c.arm, go)):
          curves[rule][0].append(gain)
          curves[rule][1].append(
              analysis.value(test, point=g, at=at_test.index)[
                  ~analysis.diverged(test, g, at_test.index)])
  primary, other = _family(primary, other)
  grid_gains = sorted({p["model_gain"] for r in run.results for p in r.grid
                       if "model_gain" in p})
  reported = [f"{g:g}" for g in grid_gains if not claim.counted_gain(g)]
  many = len(reported) > 1
  beside = (f"; gain{'s' * many} {', '.join(reported)} "
            f"{'are' if many else 'is'} reported" if reported else "")
  tables = [
      ("Operating points chosen on the validation split at each setting"
       + EDGE_NOTE, report.table(["init", "gain", *_chosen_head("BP"),
                                  *_chosen_head("BP + Oja")], rows)),
      ("Test accuracy, BP + Oja - BP, each at its chosen point (gains "
       f"{_counted_gains(c)} count{beside})",
       analysis.comparison_table(primary + other))]
  title = figures.title(run, "claim: BP + Oja beats BP from badly scaled "
                        "inits (each rule tuned at each gain on validation)")
  return _section(claim, primary, other, tables, [figures.versus_gain(
      series, _figure(run, run.config.experiment), title)])


def _counted_gains(c: ml_collections.ConfigDict) -> str:
  parts = ([f"<= {c.gains_below:g}"] if c.gains_below is not None else []) + (
      [f">= {c.gains_above:g}"] if c.gains_above is not None else [])
  return " or ".join(parts) or "all"


def tricks(run: analysis.Run, claim: Claim) -> Section:
  c = claim.c
  figure = _figure(run, run.config.experiment)
  bp = analysis.find(run, c.reference)
  primary = analysis.pairwise(run, c.arm, c.reference, key=c.metric)
  secondary = [x for arm in c.secondary for x in
               analysis.pairwise(run, arm, c.reference, key=c.metric)]
  primary, secondary = _family(primary, secondary)
  tricks_ = [r for r in run.results if r.job.arm in c.beside]
  trick_rows = [analysis.compare(r, bp, "-") for r in tricks_]
  lines = ["| trick | trick - bp [98% CI] | oja arm | oja - bp [98% CI] | "
           "recovered fraction [98% CI] |", "|---|---|---|---|---|"]
  acc = analysis.scored  # A diverged seed scores 0, as in the pairs.
  oja_arms = [(c.arm, primary)] + [
      (arm, [x for x in secondary if x.arm == arm]) for arm in c.secondary]
  for r, t in zip(tricks_, trick_rows):
    for oja_arm, cs in oja_arms:
      oja = analysis.find(run, oja_arm)
      if oja is None or not cs:
        continue
      if t.better:
        frac = str(analysis.ratio_ci(acc(oja), acc(bp), acc(r), acc(bp)))
      else:
        frac = "n/a (trick gives no significant gain)"
      lines.append(f"| {r.job.arm} | {t.diff} | {oja_arm} | {cs[0].diff} | "
                   f"{frac} |")
  tables = _final_tables(run) + [
      ("Paired differences against online plain BP",
       analysis.comparison_table(primary + secondary + trick_rows)),
      ("Fraction of each trick's gain that Oja recovers, "
       "(oja - bp) / (trick - bp), paired bootstrap over seeds",
       "\n".join(lines)),
      ("Diagnostics at the end (means over seeds)",
       analysis.diagnostics_table(run))]
  return _section(claim, primary, secondary, tables,
                  [figures.bars(run, figure)])


def _total_norm(v_SxL: np.ndarray) -> np.ndarray:
  return np.sqrt(np.sum(v_SxL ** 2, axis=-1))


def feedback_alignment(run: analysis.Run, claim: Claim) -> Section:
  c = claim.c
  figure = _figure(run, run.config.experiment)
  primary = analysis.pairwise(run, c.arm, c.reference, key=c.metric)
  secondary = [x for arm in c.secondary for x in
               analysis.pairwise(run, arm, c.reference, key=c.metric)]
  primary, secondary = _family(primary, secondary)
  others = [x for arm in c.beside for x in
            analysis.pairwise(run, arm, c.reference, key=c.metric)]
  fa = analysis.find(run, c.reference)
  norms = [analysis.compare(r, fa, "end", "weight_norm", reduce=_total_norm)
           for r in run.results if r.job.arm != c.reference]
  growth = []
  for r in run.results:
    w = _total_norm(r.history["weight_norm"][:, 0])  # (E, S)
    growth.append(f"| {r.job.arm} | {stats.interval(w[0])} | "
                  f"{stats.interval(w[-1])} | "
                  f"{stats.interval(w[-1] / w[0])} |")
  tables = _final_tables(run) + [
      ("Paired difference in final test accuracy against FA",
       analysis.comparison_table(primary + secondary + others)),
      ("Weight-norm growth: total norm sqrt(sum_l ||K_l||_F^2) at the start "
       "and the end, and their ratio",
       "| arm | start | end | end / start |\n|---|---|---|---|\n" +
       "\n".join(growth)),
      ("Paired difference in final total weight norm against FA",
       analysis.comparison_table(norms, "weight norm", ("higher", "lower"))),
      ("Paired difference in the last hidden layer's activation norm "
       "against FA (exploding signals)", analysis.comparison_table(
           [analysis.compare(r, fa, "end", "activation_norm",
                             reduce=lambda v: v[:, -2])
            for r in run.results if r.job.arm != c.reference],
           "activation norm", ("higher", "lower"))),
      ("Diagnostics at the end, with fb_cos_hidden = mean over hidden layers "
       "of cos(FA update, true gradient) on 512 test inputs",
       analysis.diagnostics_table(run))]
  return _section(claim, primary, secondary, tables,
                  [figures.feedback(run, figure)])


def recurrent_memory(run: analysis.Run, claim: Claim) -> Section:
  c = claim.c
  mc = c.metric
  primary = analysis.pairwise(run, c.arm, c.reference, key=mc)
  attribution = [x for arm in c.secondary for x in
                 analysis.pairwise(run, arm, c.reference, key=mc)]
  primary, attribution = _family(primary, attribution)
  tables = _final_tables(run, (mc, "test_loss", "spectral_radius",
                               "participation_ratio")) + [
      (f"Paired difference in final {mc.replace('_', ' ')} against "
       f"{c.reference}", analysis.comparison_table(
           primary + attribution, mc.replace("_", " "),
           ("higher", "lower")))]
  # The verdict's family is the primary arm's (the attribution arms are
  # adjusted with it above, and counted in the evidence apart).
  word, evidence = analysis.verdict(primary)
  for arm in c.secondary:
    cs = [x for x in attribution if x.arm == arm]
    what = f"{run.config.arms[arm].get('oja_layers', arm)} only"
    if cs:
      evidence += (f" Attribution, Oja on {what}: higher in "
                   f"{sum(x.better for x in cs)}/{len(cs)}, lower in "
                   f"{sum(x.worse for x in cs)}/{len(cs)} settings.")
  name = run.config.experiment
  paths = [figures.curves(run, _figure(run, f"{name}_curves"),
                          keys=(mc, "spectral_radius",
                                "participation_ratio")),
           figures.per_delay(run, _figure(run, f"{name}_delays"))]
  return _section(claim, primary, attribution, tables, paths,
                  (word, evidence))


def _point_means(r, g: int, key: str, at: int) -> float:
  ok = ~analysis.diverged(r, g, at)
  return float(np.mean(np.where(ok, analysis.value(r, key, g, at), 0.0)))


def _choose(r, points: list[int], at: int) -> int:
  """The grid point with the best mean validation accuracy (diverged: 0)."""
  return max(points, key=lambda g: _point_means(r, g, "test_accuracy", at))


EDGE_NOTE = (
    " (best mean validation accuracy, shown; 'edge' names a value at the "
    "grid's edge, where the grid should be extended. For the Oja rate the "
    "smallest non-zero value counts as an edge too: there validation wants "
    "as little Oja as the grid allows, and below it lies BP, rate 0)")


def _chosen_head(rule: str) -> list[str]:
  return [f"{rule} point", "val acc", "edge"]


def _chosen_cells(val, grid, points: list[int], g: int, at: int,
                  shown=lambda p: p) -> list[str]:
  """Table cells of chosen point ``g``: the point, its mean validation
  accuracy and its edge fields within ``points`` of ``grid``."""
  return [_fmt(shown(val.grid[g])),
          f"{_point_means(val, g, 'test_accuracy', at):.3f}",
          _edge(grid, points.index(g))]


def _edge(grid, g: int) -> str:
  """Fields of point ``g`` at the grid's edge (for Oja rates: the smallest
  non-zero one too, since 0 is BP itself)."""
  edges = []
  for k, v in grid[g].items():
    values = [p[k] for p in grid if not (k == "oja_lr" and p[k] == 0)]
    if len(set(values)) > 1 and v in (min(values), max(values)):
      edges.append(k)
  return ", ".join(edges) or "-"


def landscape(run: analysis.Run, claim: Claim) -> Section:
  """Oja vs BP, each at its validation-chosen (lr, Oja rate), and the maps."""
  c = claim.c
  arms = (c.arm, c.reference)
  primary, same_lr, chosen_rows, early = [], [], [], []
  first_pass = next((p for p in claim.points if p.passes is not None), None)
  for val, test in _val_test_pairs(claim):
    grid = val.grid
    bp_points = [g for g, p in enumerate(grid) if p["oja_lr"] == 0]
    oja_points = [g for g, p in enumerate(grid) if p["oja_lr"] > 0]
    if not bp_points or not oja_points:
      continue
    net = f"depth={val.job.axis_value}"
    samples = test.history["samples"]
    for point in claim.points:
      at_val, at_test = claim.at(val, point).index, claim.at(
          test, point).index
      if at_val is None or at_test is None:
        continue
      label = (f"end ({int(samples[-1])} samples)" if point.passes is None
               else point.label)
      gb, go = _choose(val, bp_points, at_val), _choose(val, oja_points,
                                                        at_val)
      every = list(range(len(grid)))
      chosen_rows.append(
          [net, label, *_chosen_cells(val, grid, every, gb, at_val),
           *_chosen_cells(val, grid, every, go, at_val)])
      primary.append(_paired_points(
          test, go, gb, at_test, f"{net}, {label}: each at its chosen point",
          arms))
      base = next(g for g in bp_points if grid[g]["lr"] == grid[go]["lr"])
      same_lr.append(_paired_points(test, go, base, at_test,
                                    f"{net}, {label}: at Oja's lr",
                                    (c.arm, f"{c.reference} at Oja's lr")))
      if point == first_pass:  # Early learning, at the first pass's choices.
        one = len(samples) - 1 if at_test == -1 else at_test
        early += [
            _paired_points(test, go, gb, at_test, f"{net}: online acc over "
                           "the first pass", arms,
                           values=lambda r, g, one=one:
                           _first_pass_online(r, g, one)),
            _paired_points(test, go, gb, at_test, f"{net}: area under the "
                           "test-acc curve", arms, values=_curve_area)]
  primary, same_lr = _family(primary, same_lr)
  tables = [
      ("Operating points chosen on the validation split" + EDGE_NOTE,
       report.table(["network", "budget", *_chosen_head("BP"),
                     *_chosen_head("BP + Oja")], chosen_rows)),
      ("Test accuracy, BP + Oja - BP, paired over seeds",
       analysis.comparison_table(primary + same_lr)),
      ("Early learning, BP + Oja - BP at the points chosen for "
       f"{first_pass.label if first_pass else 'the end'} (reported, not "
       "counted by the verdict)",
       analysis.comparison_table(early, "early-learning measure"))]
  # The maps: the first declared point and the last, on the tested arm.
  shown = [claim.points[0], claim.points[-1]] if claim.points else []
  panels = [(p.label, lambda r, p=p: claim.at(r, p).index) for p in shown]
  paths = [figures.landscape(run, _figure(run, run.config.experiment),
                             panels, c.tested_on)]
  return _section(claim, primary, same_lr, tables, paths)


def _fmt(point) -> str:
  return ", ".join(f"{k}={v:g}" for k, v in point.items())


def _paired_points(r, ga: int, gb: int, at: int, setting: str,
                   arms=("bp_oja", "bp"), values=None) -> analysis.Comparison:
  """Grid point ``ga`` minus ``gb`` of one job, paired over seeds (a seed
  diverged by evaluation ``at`` scores 0: ``analysis.paired``).

  ``values(r, g) -> (S,)`` replaces the test accuracy at evaluation ``at``
  (a measure of accuracy, e.g. a mean over evaluations).
  """
  get = values or (lambda r, g: analysis.value(r, point=g, at=at))
  return analysis.paired(setting, *arms, get(r, ga), get(r, gb),
                         analysis.diverged(r, ga, at),
                         analysis.diverged(r, gb, at))


def _first_pass_online(r, g: int, one: int) -> np.ndarray:
  """Per seed: online accuracy (scored before learning) over the 1st pass."""
  return np.nanmean(r.history["online_accuracy"][1:one + 1, g], axis=0)


def _curve_area(r, g: int) -> np.ndarray:
  """Per seed: area under the test-accuracy curve (mean over evaluations)."""
  return np.mean(r.history["test_accuracy"][:, g], axis=0)


def generic(run: analysis.Run) -> Section:
  """Tables and figures of a run that tests no claim (no verdict)."""
  ref = run.config.reference_arm
  comparisons = [c for arm in dict.fromkeys(r.job.arm for r in run.results)
                 if arm != ref for c in analysis.pairwise(run, arm, ref)]
  tables = _final_tables(run)
  if comparisons:
    tables.append((f"Paired difference against `{ref}`",
                   analysis.comparison_table(comparisons)))
  paths = [figures.curves(run, _figure(run, "curves"))]
  for r in run.results:
    if len(r.grid) > 1:
      paths.append(figures.sweep(r, _figure(run, f"sweep-{r.job.id}")))
  return Section("", "", tables, [os.path.basename(p) for p in paths], "", "")


# --- Tuned claims: every arm at its validation-chosen point ----------------


def _counted_key(claim: Claim, key) -> bool:
  axis_value, setting, _ = key
  gain = dict(setting).get("model_gain")
  return claim.counted(axis_value) and (gain is None or
                                        claim.counted_gain(gain))


def _numeric(values) -> Optional[list[float]]:
  try:
    return [float(v) for v in values]
  except (TypeError, ValueError):
    return None


def _chosen_figure(run: analysis.Run, claim: Claim, chosen, rules) -> str:
  """Each rule at its chosen points: against the axis, a panel per budget;
  or, with a swept setting (the init gain), against it, a panel per axis
  value at the last budget."""
  c = claim.c
  axis = run.config.axis.split(".")[-1] if run.config.axis else "setting"
  keys = list(dict.fromkeys(k for rule in rules for k in chosen[rule]))
  panels: dict[str, dict[str, tuple[list, list]]] = {}
  swept = sorted({f for _, setting, _ in keys for f, _ in setting})
  budgets = list(dict.fromkeys(k[2] for k in keys))
  for rule in rules:
    for key, ch in chosen[rule].items():
      axis_value, setting, budget = key
      if swept:
        if budget != budgets[-1]:
          continue
        panel, x = f"{axis}={axis_value}", dict(setting)[swept[0]]
      else:
        panel, x = budget, axis_value
      xs, per_seed = panels.setdefault(panel, {}).setdefault(rule, ([], []))
      xs.append(x)
      per_seed.append(np.where(ch.diverged,
                               analysis.FAILED.get(c.metric, np.nan),
                               ch.values))
  xlabel = swept[0].replace("model_", "init ") if swept else axis
  numeric = swept or all(_numeric(xs) for p in panels.values()
                         for xs, _ in p.values())
  if not numeric:  # Categorical axis values: plotted at 0, 1, ...
    order = list(dict.fromkeys(k[0] for k in keys))
    for p in panels.values():
      for rule, (xs, per_seed) in p.items():
        p[rule] = ([order.index(x) for x in xs], per_seed)
    xlabel += " (" + ", ".join(f"{i}: {v}" for i, v in enumerate(order)) + ")"
  else:
    for p in panels.values():
      for rule, (xs, per_seed) in p.items():
        p[rule] = (_numeric(xs), per_seed)
  return figures.chosen(
      panels, _figure(run, run.config.experiment or "chosen"),
      figures.title(run, "each arm at its validation-chosen point"), xlabel,
      c.metric.replace("_", " "), log_x=bool(swept))


def _good_init(claim: Claim, ref: dict, axis: str) -> dict:
  """{budget: the reference arm at the claim's ``control_at`` (axis value,
  init gain): a good init, a control at every setting}."""
  if not claim.c.get("control_at"):
    return {}
  value, gain = claim.c.control_at
  name = f"{claim.c.reference} at {axis}={value}, gain {float(gain):g}"
  return {k[2]: ch._replace(rule=name) for k, ch in ref.items()
          if str(k[0]) == str(value)
          and dict(k[1]).get("model_gain") == float(gain)}


def tuned_section(run: analysis.Run, claim: Claim) -> Section:
  """A tuned claim (``config.tune``): each arm at its validation-chosen
  point per setting and budget (``experiments.tuned``); the claim's verdict
  and, with ``controls``, the same rule's verdict beyond the best
  non-plastic control."""
  c = claim.c
  axis = run.config.axis.split(".")[-1] if run.config.axis else ""
  rules = [a for a in dict.fromkeys(r.job.arm for r in run.results)
           if not a.startswith(config_lib.TUNING_PREFIX)]
  chosen = {rule: {ch.key: ch for ch in tuned.choose(claim, rule, c.metric)}
            for rule in rules}
  ref = chosen.get(c.reference, {})

  def against(arm, keys, base=c.reference, margin=0.0):
    return [tuned.compare(chosen[arm][k], chosen[base][k], axis, c.metric,
                          margin=margin)
            for k in keys if k in chosen.get(arm, {})
            and k in chosen.get(base, {})]

  counted = [k for k in ref if _counted_key(claim, k)]
  primary, secondary = _family(
      [x for v in (c.get("versus") or (c.reference,))
       for x in against(c.arm, counted, v, c.get("margin", 0.0))],
      [x for arm in c.secondary for x in against(arm, counted)] +
      [x for a, b in c.get("pairs", ()) for x in against(a, counted, b)])
  tables = [("Operating points chosen on validation. " + tuned.EDGE_NOTE,
             tuned.chosen_table([chosen[r][k] for k in ref for r in rules
                                 if k in chosen[r]], axis)),
            (f"The claim: {c.arm} against "
             f"{', '.join(c.get('versus') or (c.reference,))}"
             + (f" (non-inferiority: {c.arm} + {c.margin:g} - the other)"
                if c.get("margin") else "") + " at the counted settings, "
             "each at its chosen point (paired over the verdict's seeds; "
             "Holm over this table)",
             analysis.comparison_table(primary + secondary))]
  control_verdict = None
  controls = [x for x in c.controls if x in chosen]
  good = _good_init(claim, ref, axis)
  if controls or good:
    candidates = {k: [chosen[x][k] for x in controls if k in chosen[x]] + (
        [good[k[2]]] if k[2] in good else []) for k in counted}
    best = {k: tuned.best(v) for k, v in candidates.items() if v}
    controls = controls + sorted({g.rule for g in good.values()})
    beyond = analysis.adjust([
        comp._replace(setting=f"{comp.setting} (best: {best[k].rule})",
                      reference="best control")
        for k in best if k in chosen[c.arm]
        for comp in [tuned.compare(chosen[c.arm][k], best[k], axis,
                                   c.metric)]])
    rows = [[x.setting, tuned.outcome(x), str(x.diff)] for x in beyond]
    tables.append((
        f"Beyond a norm control: {c.arm} against the best non-plastic "
        f"control ({', '.join(controls)}; best on validation at each "
        "setting and budget), paired over the verdict's seeds, Holm over "
        "this table", analysis.comparison_table(beyond)))
    tables.append((f"Per setting: {c.arm} beats, ties with or loses to the "
                   "best non-plastic control",
                   report.table(["setting (control)", c.arm,
                                 "difference [98% CI]"], rows)))
    control_verdict = analysis.verdict(beyond)
  others = [x for arm in rules if arm != c.reference
            for x in against(arm, [k for k in ref
                                   if arm in (*c.beside, *controls)
                                   or not _counted_key(claim, k)])]
  if others:
    tables.append((f"Every other arm and setting against {c.reference}, "
                   "each at its chosen point (reported, not counted; Holm "
                   "over this table)", analysis.comparison_table(others)))
  figure = _chosen_figure(run, claim, chosen, rules)
  word, evidence = analysis.verdict(primary, secondary)
  return Section(c.statement, claim.scope(), tables,
                 [os.path.basename(figure)], word, evidence,
                 *(control_verdict or ("", "")))


SECTIONS: dict[str, Callable[[analysis.Run, Claim], Section]] = {
    "online": online,
    "deep_online": deep_online,
    "bad_init": bad_init,
    "tricks": tricks,
    "feedback_alignment": feedback_alignment,
    "recurrent_memory": recurrent_memory,
    "landscape": landscape,
}


def section(run: analysis.Run) -> Section:
  """The run's section: its declared claim's, or the generic one."""
  claim = declared(run.config)
  if claim is None:
    return generic(run)
  if run.config.get("tune"):
    return tuned_section(run, Claim(run, claim))
  build = SECTIONS.get(run.config.experiment, claim_section)
  return build(run, Claim(run, claim))

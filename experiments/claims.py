"""The claim each experiment tests, and its evidence from a run.

A verdict config declares its claim as data, ``config.claim``
(``experiments.configs.base.claim``): the statement, the arm and its
baseline (or the arms it is compared with, with a non-inferiority margin),
the secondary arms and pairs of its Holm family, the arms reported beside,
the non-plastic controls, the metric, the counted settings (``axis_min``,
``gains_below`` / ``gains_above``) and the evaluation points in passes over
the training set (one pass = the training samples the job's dataset gives,
validation held out: ``experiments.data.train_size``) and/or at the end.

``section(run) -> Section``: the claim in one sentence, the tables, the
figure and the verdict computed by ``analysis.verdict`` (see
``analysis.RULE``) over the declared settings. A tuned config
(``config.tune``, every verdict config) compares each arm at its
validation-chosen point per setting and budget (:func:`tuned_section`,
``experiments.tuned``), with a second verdict line against the best
non-plastic control; any other config with a claim compares its arms as
they are (:func:`claim_section`); a run without one gets tables and figures
without a verdict (:func:`generic`). A declared evaluation point that a run
does not have (a run shorter than one pass, no evaluation there, a task
without passes) is named in the section's scope with the reason, never
dropped silently.
"""

from __future__ import annotations

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
  """The run's claim: ``config.claim`` (None: the config tests no claim)."""
  return config.get("claim") or None


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
      who = f"arm {r.job.arm}" if self.run.config.get("tune") else "the run"
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
       f"{c.reference}", analysis.comparison_table(
           primary + secondary, f"final test {analysis.words(c.metric)}")),
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


def _scale_table(run: analysis.Run, chosen, rules, axis: str) -> str:
  """Weight and activity scale at each arm's chosen point for the last
  budget: the total weight norm sqrt(sum_l ||K_l||_F^2) at the start and
  there, and the last hidden layer's activation norm there."""
  rows = []
  for rule in rules:
    for ch in chosen[rule].values():
      r = analysis.find(run, rule, ch.axis_value)
      if (r is None or "weight_norm" not in r.history
          or ch.budget != list(chosen[rule].values())[-1].budget):
        continue
      ok = ~ch.diverged
      w_ExS = np.sqrt(np.sum(r.history["weight_norm"][:, ch.index] ** 2,
                             axis=-1))
      act = (stats.interval(r.history["activation_norm"][ch.at, ch.index,
                                                         :, -2][ok])
             if "activation_norm" in r.history else "n/a")
      rows.append([tuned.setting_label(axis, ch), rule,
                   str(stats.interval(w_ExS[0][ok])),
                   str(stats.interval(w_ExS[ch.at][ok])), str(act)])
  return report.table(["setting, budget", "arm", "weight norm at start",
                       "weight norm there", "last hidden activation norm"],
                      rows) if rows else ""


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
  what = f"final test {analysis.words(c.metric)}"

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
                                 if k in chosen[r]], axis, c.metric)),
            (f"The claim: {c.arm} against "
             f"{', '.join(c.get('versus') or (c.reference,))}"
             + (f" (non-inferiority: {c.arm} + {c.margin:g} - the other)"
                if c.get("margin") else "") + " at the counted settings, "
             "each at its chosen point (paired over the verdict's seeds; "
             "Holm over this table)",
             analysis.comparison_table(primary + secondary, what))]
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
        "this table", analysis.comparison_table(beyond, what)))
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
                   "over this table)", analysis.comparison_table(others,
                                                                 what)))
  scale = _scale_table(run, chosen, rules, axis)
  if scale:
    tables.append((
        "Scale, the mechanism the controls test: each arm at its chosen "
        f"point for the last budget (mean and {stats.LEVEL:.0%} t interval "
        "over the seeds that did not diverge)", scale))
  # No chosen point (the tuning arms unfinished): no figure, no verdict.
  figures = ([os.path.basename(_chosen_figure(run, claim, chosen, rules))]
             if any(chosen.values()) else [])
  word, evidence = analysis.verdict(primary, secondary)
  return Section(c.statement, claim.scope(), tables, figures, word, evidence,
                 *(control_verdict or ("", "")))


def section(run: analysis.Run) -> Section:
  """The run's section: its declared claim's, or the generic one."""
  claim = declared(run.config)
  if claim is None:
    return generic(run)
  if run.config.get("tune"):
    return tuned_section(run, Claim(run, claim))
  return claim_section(run, Claim(run, claim))

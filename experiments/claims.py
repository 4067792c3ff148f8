"""The claim each experiment tests, and its evidence from a run.

``section(run) -> Section``: for an experiment in ``SECTIONS``, the claim in
one sentence, the tables, the figure and the verdict computed by
``analysis.verdict`` (see ``analysis.RULE``) over the settings the claim is
about; for any other run (a tuning sweep, a new config), its tables and
figures without a verdict.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from experiments import analysis
from experiments import figures
from experiments import report
from experiments import stats
from experiments.report import Section


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


def _section(run, claim, scope, primary, secondary, tables, figure_paths):
  word, evidence = analysis.verdict(primary, secondary)
  return Section(claim, scope, tables,
                 [os.path.basename(p) for p in figure_paths], word, evidence)


def online(run: analysis.Run) -> Section:
  figure = _figure(run, 'online')
  one_pass = 4000
  primary, secondary, online_rows = [], [], []
  for arm, out in (("bp_oja", primary), ("bp_oja_hidden", secondary)):
    for r in run.results:
      if r.job.arm != arm:
        continue
      base = analysis.find(run, "bp", r.job.axis_value)
      e1 = analysis.eval_index(r, one_pass)
      if e1 is not None and e1 != len(r.history["samples"]) - 1:
        out.append(analysis.compare(r, base, f"hidden={r.job.axis_value}, "
                                    f"1 pass ({one_pass})", at=e1))
      n = int(r.history["samples"][-1])
      out.append(analysis.compare(r, base, f"hidden={r.job.axis_value}, "
                                  f"end ({n} samples)"))
      stop = (e1 if e1 is not None else len(r.history["samples"]) - 1) + 1

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
  return _section(
      run, "Under online (batch-1) learning, adding Oja's rule to backprop "
      "improves on plain backprop, for the reference network and a wider "
      "one, over one pass and several passes.",
      "both widths, after 1 pass and at the end", primary, secondary, tables,
      [figures.curves(run, figure, mark_samples=one_pass)])


def _at_passes(r, passes: int) -> list[tuple[str, int]]:
  """(label, evaluation index) after one pass and at the end."""
  end = int(r.history["samples"][-1])
  one = analysis.eval_index(r, end // passes)
  out = [("1 pass", one)] if one is not None and one != len(
      r.history["samples"]) - 1 else []
  return out + [(f"end ({end} samples)", -1)]


def deep_online(run: analysis.Run) -> Section:
  figure = _figure(run, "deep_online")
  passes = 3
  deep = [r.job.axis_value for r in run.results if r.job.arm == "bp_oja"
          and float(r.job.axis_value) >= 10]
  primary, secondary, init_rows, good = [], [], [], []
  for value in deep:
    bp = analysis.find(run, "bp", value)
    if bp is None:  # --config.select_arms left the baseline out.
      continue
    for label, at in _at_passes(bp, passes):
      setting = f"depth={value}, {label}"
      for arm, out in (("bp_oja", primary), ("bp_oja_hidden", secondary)):
        r = analysis.find(run, arm, value)
        if r is not None:
          out.append(analysis.compare(r, bp, setting, at=at))
      for init in ("he", "orthogonal"):
        bp_init = analysis.find(run, f"bp_{init}", value)
        oja_init = analysis.find(run, f"bp_oja_{init}", value)
        if bp_init is not None:
          good.append(analysis.compare(bp_init, bp, setting, at=at))
        if bp_init is not None and oja_init is not None:
          good.append(analysis.compare(oja_init, bp_init, setting, at=at))
        oja = analysis.find(run, "bp_oja", value)
        if bp_init is not None and oja is not None:
          gain = good[-2] if oja_init is not None else good[-1]
          frac = (str(analysis.ratio_ci(
              analysis.value(oja, at=at), analysis.value(bp, at=at),
              analysis.value(bp_init, at=at), analysis.value(bp, at=at)))
                  if gain.better else f"n/a (bp_{init} gains nothing "
                  "significant over bp)")
          init_rows.append([setting, init, str(gain.diff), frac])
  primary, secondary = _family(primary, secondary)
  tables = _final_tables(run) + [
      ("Paired difference in test accuracy, every depth (its own family)",
       analysis.comparison_table(analysis.pairwise(run, "bp_oja", "bp") +
                                 analysis.pairwise(run, "bp_oja_hidden",
                                                   "bp"))),
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
       "layers at the end (means over seeds that did not diverge), depths 10 "
       "and 20", _layer_norm_table(run, ("10", "20")))]
  return _section(
      run, "In deep networks trained online, Oja's rule lets backprop learn "
      "where plain backprop does poorly (accuracy against depth); the "
      "good-init arms tell whether this is a rescue from depth or from "
      "Xavier initialization.",
      "depth >= 10 hidden layers, after 1 pass and after 3, Xavier init",
      primary, secondary, tables, [figures.versus_axis(run, figure)])


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


def _bad_gain(gain: float) -> bool:
  """Gains far from 1, 0.5 included (where the effect was largest)."""
  return gain <= 0.5 or gain >= 2.0


def _chosen_pairs(val, test, groups, label):
  """Per group of grid points (a setting): BP's and BP + Oja's points
  chosen on ``val`` (best final mean), compared on ``test``.

  ``groups``: {setting value: [grid indices]}; Oja rate 0 is BP. Yields
  (setting value, BP point, BP + Oja point, comparison, table row).
  """
  grid = val.grid
  for value, points in groups.items():
    bp = [g for g in points if grid[g]["oja_lr"] == 0]
    oja = [g for g in points if grid[g]["oja_lr"] > 0]
    if not bp or not oja:
      continue
    gb, go = _choose(val, bp, -1), _choose(val, oja, -1)
    sub = [grid[g] for g in points]
    tuned = lambda p: {k: v for k, v in p.items() if k != "model_gain"}
    setting = f"gain={value:g}"
    row = [label, setting,
           *_chosen_cells(val, sub, points, gb, -1, tuned),
           *_chosen_cells(val, sub, points, go, -1, tuned)]
    yield value, gb, go, _paired_points(test, go, gb, -1,
                                        f"{label}, {setting}"), row


def bad_init(run: analysis.Run) -> Section:
  """BP vs BP + Oja at each (scheme, gain), each tuned there on validation."""
  primary, other, rows, series = [], [], [], {}
  for val in [r for r in run.results if r.job.arm == "val"]:
    test = analysis.find(run, "test", val.job.axis_value)
    if test is None:
      continue
    groups = {gain: [g for g, p in enumerate(val.grid)
                     if p["model_gain"] == gain]
              for gain in sorted({p["model_gain"] for p in val.grid})}
    # {rule: (gains, per-seed test accuracies at the chosen points)}.
    curves = series[val.job.axis_value] = {"bp": ([], []),
                                           "bp_oja": ([], [])}
    for gain, gb, go, comparison, row in _chosen_pairs(
        val, test, groups, f"init={val.job.axis_value}"):
      rows.append(row)
      if _bad_gain(gain):
        primary.append(comparison)
      else:  # The good init, reported beside the claim, named as such.
        other.append(comparison._replace(arm=f"bp_oja at gain {gain:g}"))
      for rule, g in (("bp", gb), ("bp_oja", go)):
        curves[rule][0].append(gain)
        curves[rule][1].append(
            analysis.value(test, point=g)[~analysis.diverged(test, g)])
  primary, other = _family(primary, other)
  tables = [
      ("Operating points chosen on the validation split at each setting"
       + EDGE_NOTE, report.table(["init", "gain", *_chosen_head("BP"),
                                  *_chosen_head("BP + Oja")], rows)),
      ("Test accuracy, BP + Oja - BP, each at its chosen point (gains "
       "<= 0.5 or >= 2 count; gain 1 is reported)",
       analysis.comparison_table(primary + other))]
  title = figures.title(run, "claim: BP + Oja beats BP from badly scaled "
                        "inits (each rule tuned at each gain on validation)")
  return _section(
      run, "With badly scaled initial weights, backprop plus Oja's rule "
      "learns better than backprop alone, each tuned at the perturbed "
      "setting.",
      "gains 0.1, 0.25, 0.5, 2, 3 for each of three init schemes, each rule "
      "at its validation-chosen (lr, Oja rate) there", primary, other,
      tables, [figures.versus_gain(series, _figure(run, "bad_init"), title)])


def tricks(run: analysis.Run) -> Section:
  figure = _figure(run, 'tricks')
  bp = analysis.find(run, "bp")
  primary = analysis.pairwise(run, "bp_oja", "bp")
  secondary = analysis.pairwise(run, "bp_oja_hidden", "bp")
  primary, secondary = _family(primary, secondary)
  tricks_ = [r for r in run.results if r.job.arm not in
             ("bp", "bp_oja", "bp_oja_hidden")]
  trick_rows = [analysis.compare(r, bp, "-") for r in tricks_]
  lines = ["| trick | trick - bp [98% CI] | oja arm | oja - bp [98% CI] | "
           "recovered fraction [98% CI] |", "|---|---|---|---|---|"]
  acc = lambda r: np.nan_to_num(analysis.value(r))
  for r, t in zip(tricks_, trick_rows):
    for oja_arm, c in (("bp_oja", primary), ("bp_oja_hidden", secondary)):
      oja = analysis.find(run, oja_arm)
      if oja is None or not c:
        continue
      if t.better:
        frac = str(analysis.ratio_ci(acc(oja), acc(bp), acc(r), acc(bp)))
      else:
        frac = "n/a (trick gives no significant gain)"
      lines.append(f"| {r.job.arm} | {t.diff} | {oja_arm} | {c[0].diff} | "
                   f"{frac} |")
  tables = _final_tables(run) + [
      ("Paired differences against online plain BP",
       analysis.comparison_table(primary + secondary + trick_rows)),
      ("Fraction of each trick's gain that Oja recovers, "
       "(oja - bp) / (trick - bp), paired bootstrap over seeds",
       "\n".join(lines)),
      ("Diagnostics at the end (means over seeds)",
       analysis.diagnostics_table(run))]
  return _section(
      run, "Online backprop plus Oja's rule, with no engineering tricks, "
      "recovers part of the gain that mini-batches, LayerNorm, Adam or a "
      "well-chosen init give plain online backprop (20 hidden layers, where "
      "the tricks gain).",
      "bp_oja vs bp at depth 20 (the recovered fractions are in the table)",
      primary,
      secondary, tables, [figures.bars(run, figure)])


def _total_norm(v_SxL: np.ndarray) -> np.ndarray:
  return np.sqrt(np.sum(v_SxL ** 2, axis=-1))


def feedback_alignment(run: analysis.Run) -> Section:
  figure = _figure(run, 'feedback_alignment')
  primary = analysis.pairwise(run, "fa_oja", "fa")
  secondary = analysis.pairwise(run, "fa_oja_hidden", "fa")
  primary, secondary = _family(primary, secondary)
  others = analysis.pairwise(run, "bp", "fa")
  fa = analysis.find(run, "fa")
  norms = [analysis.compare(r, fa, "end", "weight_norm", reduce=_total_norm)
           for r in run.results if r.job.arm != "fa"]
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
            for r in run.results if r.job.arm != "fa"],
           "activation norm", ("higher", "lower"))),
      ("Diagnostics at the end, with fb_cos_hidden = mean over hidden layers "
       "of cos(FA update, true gradient) on 512 test inputs",
       analysis.diagnostics_table(run))]
  return _section(
      run, "Feedback alignment (fixed random feedback weights) learns better "
      "with Oja's rule added (higher accuracy); the paper also argues it "
      "keeps weights from growing, which the weight- and activation-norm "
      "tables test separately (the verdict counts accuracy only).",
      "fa_oja vs fa, final test accuracy", primary, secondary, tables,
      [figures.feedback(run, figure)])


def recurrent_memory(run: analysis.Run) -> Section:
  mc = "memory_capacity"
  primary = analysis.pairwise(run, "bp_oja", "bp", key=mc)
  attribution = (analysis.pairwise(run, "bp_oja_rec", "bp", key=mc) +
                 analysis.pairwise(run, "bp_oja_in", "bp", key=mc))
  primary, attribution = _family(primary, attribution)
  tables = _final_tables(run, (mc, "test_loss", "spectral_radius",
                               "participation_ratio")) + [
      ("Paired difference in final memory capacity against bp",
       analysis.comparison_table(primary + attribution, "memory capacity",
                                 ("higher", "lower")))]
  word, evidence = analysis.verdict(primary)
  for arm, what in (("bp_oja_rec", "W_rec only"), ("bp_oja_in", "W_in only")):
    cs = [c for c in attribution if c.arm == arm]
    if cs:
      evidence += (f" Attribution, Oja on {what}: higher in "
                   f"{sum(c.better for c in cs)}/{len(cs)}, lower in "
                   f"{sum(c.worse for c in cs)}/{len(cs)} settings.")
  paths = [figures.curves(run, _figure(run, "recurrent_memory_curves"),
                          keys=(mc, "spectral_radius",
                                "participation_ratio")),
           figures.per_delay(run, _figure(run, "recurrent_memory_delays"))]
  return Section(
      "Oja's rule improves the short-term memory (memory capacity) of "
      "recurrent networks trained by backpropagation through time.",
      "bp_oja vs bp at every (initial radius, SGD rate)", tables,
      [os.path.basename(p) for p in paths], word, evidence)


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


def landscape(run: analysis.Run) -> Section:
  """Oja vs BP, each at its validation-chosen (lr, Oja rate), and the maps."""
  passes = 3
  primary, same_lr, chosen_rows, early = [], [], [], []
  for val in [r for r in run.results if r.job.arm == "val"]:
    test = analysis.find(run, "test", val.job.axis_value)
    if test is None:
      continue
    grid = val.grid
    bp_points = [g for g, p in enumerate(grid) if p["oja_lr"] == 0]
    oja_points = [g for g, p in enumerate(grid) if p["oja_lr"] > 0]
    if not bp_points or not oja_points:
      continue
    net = f"depth={val.job.axis_value}"
    samples = test.history["samples"]
    for label, at_val, at_test in (
        ("1 pass", analysis.eval_index(val, int(val.history["samples"][-1])
                                       // passes),
         analysis.eval_index(test, int(samples[-1]) // passes)),
        (f"{passes} passes", -1, -1)):
      if at_val is None or at_test is None:
        continue
      gb, go = _choose(val, bp_points, at_val), _choose(val, oja_points,
                                                        at_val)
      every = list(range(len(grid)))
      chosen_rows.append(
          [net, label, *_chosen_cells(val, grid, every, gb, at_val),
           *_chosen_cells(val, grid, every, go, at_val)])
      primary.append(_paired_points(
          test, go, gb, at_test, f"{net}, {label}: each at its chosen point"))
      base = next(g for g in bp_points if grid[g]["lr"] == grid[go]["lr"])
      same_lr.append(_paired_points(test, go, base, at_test,
                                    f"{net}, {label}: at Oja's lr",
                                    ("bp_oja", "bp at Oja's lr")))
      if label == "1 pass":  # Early learning, at the 1-pass choices.
        one = len(samples) - 1 if at_test == -1 else at_test
        early += [
            _paired_points(test, go, gb, at_test, f"{net}: online acc over "
                           "the first pass", values=lambda r, g, one=one:
                           _first_pass_online(r, g, one)),
            _paired_points(test, go, gb, at_test, f"{net}: area under the "
                           "test-acc curve", values=_curve_area)]
  primary, same_lr = _family(primary, same_lr)
  tables = [
      ("Operating points chosen on the validation split" + EDGE_NOTE,
       report.table(["network", "budget", *_chosen_head("BP"),
                     *_chosen_head("BP + Oja")], chosen_rows)),
      ("Test accuracy, BP + Oja - BP, paired over seeds",
       analysis.comparison_table(primary + same_lr)),
      ("Early learning, BP + Oja - BP at the points chosen for 1 pass "
       "(reported, not counted by the verdict)",
       analysis.comparison_table(early, "early-learning measure"))]
  paths = [figures.landscape(run, _figure(run, "landscape"), passes)]
  return _section(
      run, "Adding Oja's rule to online backprop improves test accuracy "
      "(reference network and 10 hidden layers), each rule at its best "
      "operating point.", "each network after 1 and 3 passes, each rule at "
      "its validation-chosen (lr, Oja rate)", primary, same_lr, tables,
      paths)


def _fmt(point) -> str:
  return ", ".join(f"{k}={v:g}" for k, v in point.items())


def _paired_points(r, ga: int, gb: int, at: int, setting: str,
                   arms=("bp_oja", "bp"), values=None) -> analysis.Comparison:
  """Grid point ``ga`` minus ``gb`` of one job, paired over seeds.

  ``values(r, g) -> (S,)`` replaces the test accuracy at evaluation ``at``.
  """
  da, db = analysis.diverged(r, ga, at), analysis.diverged(r, gb, at)
  keep = ~da & ~db
  get = values or (lambda r, g: analysis.value(r, point=g, at=at))
  return analysis.Comparison(
      setting, *arms, stats.paired_difference(get(r, ga)[keep],
                                              get(r, gb)[keep]),
      (int(da.sum()), int(db.sum())))


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


SECTIONS: dict[str, Callable[[analysis.Run], Section]] = {
    "online": online,
    "deep_online": deep_online,
    "bad_init": bad_init,
    "tricks": tricks,
    "feedback_alignment": feedback_alignment,
    "recurrent_memory": recurrent_memory,
    "landscape": landscape,
}


def section(run: analysis.Run) -> Section:
  """The run's section: its claim's, or the generic one."""
  return SECTIONS.get(run.config.experiment, generic)(run)

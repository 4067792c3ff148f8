"""Runner of ``meta_plasticity``: meta-learned local rules vs tuned backprop.

Parts, each written to the run directory as soon as it is done and reused
when the same run directory is run again (so a crash loses only the part in
progress):

1. ``tuning.json``: per K, query loss and accuracy of every bp rate and
   bp_oja (rate, Oja rate) pair on ``tune_episodes`` meta-training episodes;
   the best of each by ``tune_metric`` is kept (and bp's best by accuracy).
2. ``meta_K<k>.json``: for each K in ``meta_ks``, the coefficients theta and
   the meta-loss over meta-training (Adam through the inner ``lax.scan``).
3. ``test_K<k>.json``: per K, per-episode query accuracy and loss of bp,
   bp_oja, meta and bp_acc on ``test_episodes`` held-out episodes, identical
   for all rules (same images, order and initial weights).

Verdict rule (claim: meta-learned rules with Oja's term match and surpass
backprop when data are scarce): at each data-scarce K (K <= scarce_max_k)
the paired difference of held-out accuracy meta - bp (98% t interval over
episodes) is "better" if its CI lies above 0 and "worse" if below. Reproduced
if better at a majority of scarce K and worse at no K; partly reproduced if
better at some scarce K, or worse at none; not reproduced otherwise.
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np

from experiments import checkpoint
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import report
from experiments import stats
from experiments.tasks import episodes
from experiments.tasks import meta
from ojax import models

CLAIM = ("Meta-learned local plasticity rules that incorporate Oja's "
         "principle match and surpass standard backpropagation when data are "
         "scarce.")
RULES = ("bp", "bp_oja", "meta", "bp_acc")


class Prepared(NamedTuple):
  train_pool: np.ndarray  # (C_train, M, D)
  test_pool: np.ndarray  # (C_test, M, D)


def _check_list(name, values, integer=False):
  if not values:
    raise config_lib.ConfigError(f"{name} must list at least one value.")
  for i, v in enumerate(values):
    config_lib.check_number(f"{name}[{i}]", v, integer=integer)


def prepare(config: ml_collections.ConfigDict) -> Prepared:
  """Validates the config and builds the two class pools."""
  config_lib.check_finite(config)
  for f in ("n_way", "q_query", "tune_episodes", "test_episodes",
            "meta_episodes", "downsample"):
    config_lib.check_number(f, config[f], integer=True)
  config_lib.check_number("meta_steps", config.meta_steps, integer=True,
                          zero=True)
  config_lib.check_number("seed", config.seed, integer=True, zero=True)
  _check_list("ks", config.ks, integer=True)
  if not config.meta_ks or not set(config.meta_ks) <= set(config.ks):
    raise ValueError(f"meta_ks={tuple(config.meta_ks)} must be a non-empty "
                     f"subset of ks={tuple(config.ks)}.")
  if config.tune_metric not in ("loss", "accuracy"):
    raise ValueError(f"tune_metric={config.tune_metric!r} must be 'loss' or "
                     "'accuracy'.")
  _check_list("lr_grid", config.lr_grid)
  _check_list("oja_grid", config.oja_grid)
  _check_list("hidden", config.hidden, integer=True)
  config_lib.check_number("meta_lr", config.meta_lr)
  meta.check_terms(config.terms)
  if config.feedback not in models.FEEDBACKS:
    raise ValueError(f"feedback={config.feedback!r} is not known; choose one "
                     f"of {', '.join(models.FEEDBACKS)}.")
  if config.dataset not in ("embedded_mnist",):
    raise ValueError(f"dataset={config.dataset!r}: meta_plasticity builds "
                     "rotated-digit classes from 28x28 images; use "
                     "embedded_mnist.")
  if set(config.train_digits) & set(config.test_digits):
    raise ValueError("train_digits and test_digits must not overlap.")
  for r in config.rotations:
    if r not in (0, 1, 2, 3):
      raise ValueError(f"rotations has {r!r}; use quarter turns 0..3.")
  for name, digits in (("train_digits", config.train_digits),
                       ("test_digits", config.test_digits)):
    if len(digits) * len(config.rotations) < config.n_way:
      raise ValueError(f"{name} x rotations gives "
                       f"{len(digits) * len(config.rotations)} classes, fewer "
                       f"than n_way={config.n_way}.")
  ds = data_lib.load(config.dataset)
  x = np.concatenate([ds.train_x, ds.test_x])
  y = np.concatenate([ds.train_y, ds.test_y])
  kw = dict(rotations=tuple(config.rotations), downsample=config.downsample)
  train_pool = episodes.class_pool(x, y, tuple(config.train_digits), **kw)
  test_pool = episodes.class_pool(x, y, tuple(config.test_digits), **kw)
  need = max(config.ks) + config.q_query
  if need > train_pool.shape[1]:
    raise ValueError(f"max(ks) + q_query = {need} exceeds the "
                     f"{train_pool.shape[1]} images per class.")
  return Prepared(train_pool, test_pool)


def _model(config) -> models.MLP:
  return models.MLP(features=tuple(config.hidden) + (config.n_way,),
                    feedback=config.feedback)


def _cached(path: str, make) -> Any:
  """Reads the part at ``path`` if a previous run wrote it, else makes it.

  A damaged part (``read_json`` warns) is made again.
  """
  if os.path.exists(path):
    saved = checkpoint.read_json(path)
    if saved is not None:
      logging.info("reusing %s", path)
      return saved
  return checkpoint.read_json(report.write_json(path, make()))


def _tune(config, model, pool) -> dict[str, Any]:
  """Grid search of bp and bp_oja per K on meta-training episodes."""
  lrs = [float(v) for v in config.lr_grid]
  grid = [(lr, 0.0) for lr in lrs] + [(lr, float(e)) for lr in lrs
                                      for e in config.oja_grid]
  theta = {"error": jnp.array([g[0] for g in grid], jnp.float32),
           "oja": jnp.array([g[1] for g in grid], jnp.float32)}
  keys = jax.random.split(jax.random.PRNGKey(config.seed + 1000),
                          config.tune_episodes)
  out = {}
  for k in config.ks:
    tic = time.perf_counter()
    res = meta.evaluate(model, theta, keys, jnp.asarray(pool),
                        n_way=config.n_way, k_shot=k, q_query=config.q_query)
    acc = np.nan_to_num(np.asarray(res.query_accuracy).mean(1), nan=0.0)
    loss = np.nan_to_num(np.asarray(res.query_loss).mean(1), nan=np.inf)
    score = -loss if config.tune_metric == "loss" else acc
    pick = lambda idx: max(idx, key=lambda i: score[i])  # pylint: disable=cell-var-from-loop
    bp = pick(range(len(lrs)))
    bo = pick(range(len(lrs), len(grid)))
    ba = max(range(len(lrs)), key=lambda i: acc[i])
    point = lambda i: {"lr": grid[i][0], "oja_lr": grid[i][1],
                       "accuracy": float(acc[i]), "loss": float(loss[i])}
    out[str(k)] = {"grid": [point(i) for i in range(len(grid))],
                   "bp": point(bp), "bp_oja": point(bo), "bp_acc": point(ba)}
    logging.info("tuned K=%d in %.1fs: bp lr %g (%.3f), bp_oja %g/%g (%.3f)",
                 k, time.perf_counter() - tic, grid[bp][0], acc[bp],
                 grid[bo][0], grid[bo][1], acc[bo])
  return out


def _meta_k(config, k: int) -> int:
  """The meta-training K whose rule is tested at K = k (largest <= k)."""
  below = [m for m in config.meta_ks if m <= k]
  return max(below) if below else min(config.meta_ks)


def _meta_train(config, model, pool, tuning, meta_k) -> dict[str, Any]:
  """Adam on theta through the inner loop, starting from bp's tuned rate."""
  start = tuning.get(str(meta_k), {}).get("bp", {}).get("lr", 0.05)
  theta0 = {t: (start if t == "error" else 0.0) for t in config.terms}
  tic = time.perf_counter()

  def log(i, theta, loss):
    if i % 25 == 0 or i == config.meta_steps:
      logging.info("K=%d meta-step %d/%d  query loss %.4f  theta %s  (%.0fs)",
                   meta_k, i, config.meta_steps, loss,
                   {k: round(float(v), 5) for k, v in theta.items()},
                   time.perf_counter() - tic)

  theta, hist = meta.meta_train(
      model, theta0, jnp.asarray(pool),
      jax.random.fold_in(jax.random.PRNGKey(config.seed), 3),
      steps=config.meta_steps, episodes_per_step=config.meta_episodes,
      meta_lr=config.meta_lr, n_way=config.n_way, k_shot=meta_k,
      q_query=config.q_query, on_step=log)
  return {"k": meta_k, "theta0": theta0,
          "theta": {k: float(v) for k, v in theta.items()},
          "history": {"theta": hist.theta, "meta_loss": hist.meta_loss,
                      "query_accuracy": hist.query_accuracy},
          "skipped_steps": hist.skipped}


def _test(config, model, pool, tuning, learned, k) -> dict[str, Any]:
  """The three rules on the same held-out episodes at K = k."""
  rules = {
      "bp": {"error": tuning[str(k)]["bp"]["lr"], "oja": 0.0},
      "bp_oja": {"error": tuning[str(k)]["bp_oja"]["lr"],
                 "oja": tuning[str(k)]["bp_oja"]["oja_lr"]},
      "meta": dict(learned["theta"]),
      "bp_acc": {"error": tuning[str(k)]["bp_acc"]["lr"], "oja": 0.0},
  }
  terms = sorted({t for r in rules.values() for t in r})
  theta = {t: jnp.array([rules[r].get(t, 0.0) for r in RULES], jnp.float32)
           for t in terms}
  keys = jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(config.seed + 2000), k), config.test_episodes)
  res = meta.evaluate(model, theta, keys, jnp.asarray(pool),
                      n_way=config.n_way, k_shot=k, q_query=config.q_query)
  acc, loss = np.asarray(res.query_accuracy), np.asarray(res.query_loss)
  return {"k": k, "meta_k": learned["k"], "rules": rules,
          "accuracy": {r: acc[i] for i, r in enumerate(RULES)},
          "loss": {r: loss[i] for i, r in enumerate(RULES)}}


def _plot_accuracy(config, tests, path: str) -> str:
  ks = [t["k"] for t in tests]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for i, rule in enumerate(RULES):
    ests = [stats.interval(t["accuracy"][rule]) for t in tests]
    axes[0].errorbar(ks, [e.mean for e in ests],
                     yerr=[[e.mean - e.low for e in ests],
                           [e.high - e.mean for e in ests]],
                     marker="o", capsize=3, color=f"C{i}", label=rule)
    if rule != "bp":
      diffs = [stats.paired_difference(t["accuracy"][rule], t["accuracy"]["bp"])
               for t in tests]
      axes[1].plot(ks, [d.mean for d in diffs], marker="o", color=f"C{i}",
                   label=f"{rule} - bp")
      axes[1].fill_between(ks, [d.low for d in diffs],
                           [d.high for d in diffs], color=f"C{i}", alpha=0.2)
  axes[0].set_ylabel("held-out query accuracy")
  axes[0].set_title(f"{config.n_way}-way held-out episodes")
  axes[1].axhline(0, color="k", lw=0.8)
  axes[1].set_ylabel("paired accuracy difference")
  axes[1].set_title("difference to tuned backprop")
  for ax in axes:
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K training images per class")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"meta_plasticity: mean over {config.test_episodes} held-out "
               "episodes, 98% t interval")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _plot_coefficients(config, learned: list[dict[str, Any]],
                       path: str) -> str:
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
  for i, run in enumerate(learned):
    hist, color = run["history"], f"C{i}"
    for term, values in hist["theta"].items():
      ax = axes[0] if term == "error" else axes[1]
      style = {"error": "-", "oja": "-", "hebb": ":"}[term]
      ax.plot(np.arange(len(values)), values, style, color=color,
              label=f"theta_{term}, K={run['k']}")
    loss = np.asarray(hist["meta_loss"], np.float64)
    w = max(1, len(loss) // 15)
    smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
    axes[2].plot(np.arange(w, len(loss) + 1), smooth, color=color,
                 label=f"K={run['k']} (running mean of {w})")
  titles = ("error-term coefficient", "local-term coefficients",
            "query loss during meta-training")
  ylabels = ("theta_error", "theta", "query cross-entropy")
  for ax, title, ylabel in zip(axes, titles, ylabels):
    ax.set_title(title)
    ax.set_xlabel("meta-step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[1].axhline(0, color="k", lw=0.8)
  fig.suptitle(f"meta_plasticity: Adam (lr {config.meta_lr:g}) through the "
               f"inner loop, {config.meta_episodes} episodes per meta-batch, "
               "one rule per K")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _verdict(config, tests) -> tuple[str, str, list[list[Any]]]:
  rows, better, worse, scarce = [], 0, 0, 0
  for t in tests:
    k, acc = t["k"], t["accuracy"]
    d = stats.paired_difference(acc["meta"], acc["bp"])
    is_scarce = k <= config.scarce_max_k
    scarce += is_scarce
    better += bool(is_scarce and d.low > 0)
    worse += bool(d.high < 0)
    rows.append([k, t["meta_k"], "yes" if is_scarce else "no", d,
                 ("better" if d.low > 0 else "worse" if d.high < 0 else "no significant difference"), stats.paired_difference(acc["bp_oja"], acc["bp"]),
                 stats.paired_difference(acc["meta"], acc["bp_oja"]),
                 stats.paired_difference(acc["meta"], acc["bp_acc"])])
  if scarce and better > scarce / 2 and not worse:
    verdict = "reproduced"
  elif better or not worse:
    verdict = "partly reproduced"
  else:
    verdict = "not reproduced"
  evidence = (f"held-out accuracy, meta-learned rule - bp (both fitted to "
              f"the query {config.tune_metric} on meta-training tasks): "
              f"significantly better at {better} of {scarce} data-scarce K "
              f"(K <= {config.scarce_max_k}), significantly worse at {worse} "
              f"of {len(tests)} K; " +
              "; ".join(f"K={r[0]}: {r[3]}" for r in rows) +
              "; against bp tuned for accuracy: " +
              "; ".join(f"K={r[0]}: {r[7]}" for r in rows) + ".")
  return verdict, evidence, rows


def _describe(theta: dict[str, float]) -> str:
  return ", ".join(f"{n} {v:.4g}" for n, v in theta.items())


def run(config: ml_collections.ConfigDict, prepared: Prepared, run_dir: str,
        command: str) -> str:
  """Tunes, meta-trains, tests; writes parts, figures, summary, verdict."""
  report.write_config(run_dir, config)
  model = _model(config)
  tuning = _cached(os.path.join(run_dir, "tuning.json"),
                   lambda: _tune(config, model, prepared.train_pool))
  learned = {}
  for mk in sorted(set(config.meta_ks)):
    learned[mk] = _cached(
        os.path.join(run_dir, f"meta_K{mk}.json"),
        lambda mk=mk: _meta_train(config, model, prepared.train_pool, tuning,
                                  mk))
  tests = []
  for k in config.ks:
    tests.append(_cached(
        os.path.join(run_dir, f"test_K{k}.json"),
        lambda k=k: _test(config, model, prepared.test_pool, tuning,
                          learned[_meta_k(config, k)], k)))
    logging.info("tested K=%d: %s", k, {r: round(float(np.mean(v)), 4)
                                         for r, v in
                                         tests[-1]["accuracy"].items()})
  rows = [{"experiment": config.experiment, "part": "test", "k": t["k"],
           "rule": r, "episode": e, "accuracy": a, "loss": l,
           **{f"theta_{n}": v for n, v in t["rules"][r].items()}}
          for t in tests for r in RULES
          for e, (a, l) in enumerate(zip(t["accuracy"][r], t["loss"][r]))]
  rows += [{"experiment": config.experiment, "part": "meta_train",
            "k": run["k"], "meta_step": i + 1, "meta_loss": l,
            **{f"theta_{n}": v[i + 1] for n, v in
               run["history"]["theta"].items()}}
           for run in learned.values()
           for i, l in enumerate(run["history"]["meta_loss"])]
  report.write_jsonl(os.path.join(run_dir, "metrics.jsonl"), rows)
  figures = [
      _plot_accuracy(config, tests,
                     os.path.join(run_dir, "meta_plasticity_accuracy.png")),
      _plot_coefficients(config, list(learned.values()), os.path.join(
          run_dir, "meta_plasticity_coefficients.png"))]
  verdict, evidence, vrows = _verdict(config, tests)
  acc_rows = [[t["k"]] + [f"{stats.interval(t['accuracy'][r])}" for r in RULES]
              for t in tests]
  loss_rows = [[t["k"]] + [f"{stats.interval(t['loss'][r])}" for r in RULES]
               for t in tests]
  rule_rows = [[t["k"]] + [_describe(t["rules"][r]) for r in RULES]
               for t in tests]
  tune_rows = [[k, f"{v['bp']['lr']:g}",
                f"{v['bp']['loss']:.3f} / {v['bp']['accuracy']:.3f}",
                f"{v['bp_oja']['lr']:g} / {v['bp_oja']['oja_lr']:g}",
                f"{v['bp_oja']['loss']:.3f} / {v['bp_oja']['accuracy']:.3f}",
                f"{v['bp_acc']['lr']:g}", f"{v['bp_acc']['accuracy']:.3f}"]
               for k, v in tuning.items()]
  meta_rows = [[run["k"], _describe(run["theta0"]), _describe(run["theta"]),
                f"{np.mean(run['history']['meta_loss'][:10]):.3f} -> "
                f"{np.mean(run['history']['meta_loss'][-10:]):.3f}",
                run["skipped_steps"]] for run in learned.values()]
  preamble = [
      f"{config.n_way}-way online episodes (batch 1, weights re-initialized "
      f"per episode), K training and {config.q_query} query images per "
      "class. Classes: (digit, quarter-turn rotation) pairs of the embedded "
      f"MNIST digits ({config.downsample}x downsampled); meta-training and "
      f"tuning on digits {tuple(config.train_digits)} "
      f"({len(prepared.train_pool)} classes), testing on held-out digits "
      f"{tuple(config.test_digits)} ({len(prepared.test_pool)} classes). "
      f"Network {prepared.train_pool.shape[2]}-"
      f"{'-'.join(map(str, config.hidden))}-{config.n_way}, softplus "
      f"(beta 10), no biases, Xavier-uniform; feedback: {config.feedback}. "
      f"{config.test_episodes} held-out episodes per K, identical for every "
      f"rule; means with {stats.LEVEL:.0%} Student-t intervals over "
      "episodes.",
      "Rules: `bp` = error term only, rate tuned per K by query "
      f"{config.tune_metric}; `bp_oja` = error + Oja, both rates tuned per K "
      f"by query {config.tune_metric}; `meta` = error + Oja coefficients "
      "meta-learned per K by Adam on the query cross-entropy through the inner "
      "lax.scan (jax.grad), starting from bp's tuned rate and theta_oja = 0; "
      "`bp_acc` = error term only, rate tuned per K by query accuracy "
      "(a second baseline). All tuning and meta-training use only the "
      "meta-training digits." + (
          " With feedback=random the error term of every rule, bp included, "
          "is sent down through fixed random matrices (feedback alignment)."
          if config.feedback == "random" else ""),
      f"Command: `{command}`" if command else "",
      "Verdict rule: reproduced if meta is significantly better than bp "
      f"(paired {stats.LEVEL:.0%} CI of the held-out accuracy difference "
      "above 0) at a majority of data-scarce K and significantly worse at "
      "none; partly if better at some scarce K or worse at none; not "
      "reproduced otherwise. CIs cover episode sampling, not the randomness "
      "of one meta-training run."]
  tables = [
      (f"Rate tuning on meta-training tasks (lr in {tuple(config.lr_grid)}; "
       f"Oja rate in {tuple(config.oja_grid)}; {config.tune_episodes} "
       "episodes per point)",
       report.table(["K", "bp lr", "bp loss / acc", "bp_oja lr / Oja",
                     "bp_oja loss / acc", "bp_acc lr", "bp_acc acc"],
                    tune_rows)),
      (f"Meta-learned rules (Adam, lr {config.meta_lr:g}, "
       f"{config.meta_steps} meta-steps of {config.meta_episodes} episodes; "
       "a test K uses the rule of the largest meta-training K not above it)",
       report.table(["K", "initial theta", "learned theta",
                     "meta-batch loss (first 10 -> last 10)",
                     "skipped steps"], meta_rows)),
      ("Held-out query accuracy", report.table(["K"] + list(RULES),
                                               acc_rows)),
      ("Held-out query loss (cross-entropy)",
       report.table(["K"] + list(RULES), loss_rows)),
      ("Coefficients used", report.table(["K"] + list(RULES), rule_rows)),
      ("Paired accuracy differences (held-out episodes)",
       report.table(["K", "meta K", "scarce", "meta - bp", "meta is",
                     "bp_oja - bp", "meta - bp_oja", "meta - bp_acc"],
                    vrows))]
  claim = CLAIM if config.feedback == "backprop" else (
      CLAIM + " (Variant with random feedback: every rule's error term, bp "
      "included, uses feedback alignment, so this run compares the "
      "meta-learned FA + Oja rule with tuned FA, not with backprop.)")
  section = report.Section(
      claim, f"data-scarce K <= {config.scarce_max_k}", tables,
      [os.path.basename(p) for p in figures], verdict, evidence)
  path = report.write_section(run_dir, section, config.experiment, preamble)
  return path

"""Runner of ``meta_plasticity``: meta-learned local rules vs tuned backprop.

The work is cut into units, one per (feedback, K); each writes its parts to
the run directory as soon as they are done, and a part that exists is reused
when the same run directory is run again (``experiments.main`` refuses a
changed config, but for a larger ``meta_steps``: meta-training that ran out
of steps goes on from its checkpoint, and the tests are made again for the
rules that changed), so a crash or Ctrl-C loses at most
``checkpoint_every`` meta-steps:

1. ``tuning_<feedback>_K<k>.json``: query loss and accuracy of every rate on
   ``tune_episodes`` meta-training episodes. Backprop feedback: the error
   term alone (``bp``; also ``bp_acc``, picked by accuracy) and error + Oja
   (``bp_oja``, rate x Oja rate grid). Random feedback: the error term alone
   (``fa``, feedback alignment). Where a rule is meta-learned, also each
   pool term's size at initialization and its Adam step scale
   (``meta.term_norms``, ``meta.step_scales``).
2. ``meta_<tag>_K<k>_s<seed>.json``: for each meta-learned rule of this
   feedback (``meta_report.meta_arms``: the full pool with step-scaled Adam,
   tag ``<feedback>``; with plain Adam, ``<feedback>_adam``; the pool
   without the Oja terms, ``<feedback>_nooja``) and each of its
   meta-training seeds, the rule meta-learned at this K alone (no rule is
   reused at another K), its meta-loss curve and meta-validation curve.
   While it trains, its state (theta, Adam, curves) is checkpointed to
   ``meta_ckpt/<tag>_K<k>_s<seed>.json`` every ``checkpoint_every``
   meta-steps, and a restarted run resumes from there with the same numbers.
3. ``test_K<k>.json``: per-episode query accuracy and loss of every rule on
   held-out episodes: each meta-seed has its own ``test_episodes`` episodes,
   where its learned rules are scored; the tuned rules are scored on every
   seed's episodes (seed-major), so every comparison of a seed's rule pairs
   the same images, order and initial forward weights.

Units run in ``processes`` worker processes (0: one per core this process may
use), each pinned to a core with single-threaded XLA (``experiments.pool``,
the job runner's pool), the costliest first. The run directory is the job
runner's (``experiments.rundir``): the run is one job named ``run`` whose
fingerprint is checked on resume and written to
``checkpoints/run/fingerprint.json``, and every part is written by the one
atomic, strict-JSON writer.

Verdict (the repo rule, ``experiments.analysis.verdict``): at each
data-scarce K (K <= ``scarce_max_k``) the main meta-learned rule (the first
of ``meta_report.meta_arms``: ``feedbacks[0]``, random feedback by default,
the first of ``variants``, the full pool) is compared with tuned backprop,
paired over meta-training seeds (each seed's mean over its held-out
episodes; 98% t interval, exact sign-flip p, Holm-adjusted over the main
rule's comparisons with the tuned rules). With B of N scarce K better and W
worse: reproduced if B >= N/2 and W = 0; partly reproduced if 0 < B < N/2
and W = 0; mixed if B > 0 and W > 0; contradicted if W > N/2 and B = 0; not
reproduced otherwise. The other rules are reported, each its own family.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, NamedTuple, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import config as config_lib
from experiments import data as data_lib
from experiments import pool
from experiments import progress
from experiments import report
from experiments import rundir
from experiments.config import ConfigError, Job
from experiments.tasks import episodes
from experiments.tasks import meta
from experiments.tasks import meta_report
# The rule names and labels, public here too.
from experiments.tasks.meta_report import BASE, SHORT  # noqa: F401
from ojax import models

FEEDBACKS = ("random", "backprop")


class Prepared(NamedTuple):
  train_pool: np.ndarray  # (C_train, M, D)
  test_pool: np.ndarray  # (C_test, M, D)


def _check_list(name, values, integer=False):
  if not values:
    raise ConfigError(f"{name} must list at least one value.")
  for i, v in enumerate(values):
    config_lib.check_number(f"{name}[{i}]", v, integer=integer)


def prepare(config: ml_collections.ConfigDict, cli_fields: Sequence[str] = (),
            allow_large: bool = False) -> Prepared:
  """Validates the config and builds the two class pools.

  Raises ``ConfigError`` (a ``ValueError``). The signature is the job
  runner's (``experiments.main`` calls either); ``cli_fields`` and
  ``allow_large`` change nothing here (no arms; the size is the config's).
  """
  del cli_fields, allow_large
  config_lib.check_finite(config)
  for f in ("n_way", "q_query", "tune_episodes", "test_episodes",
            "meta_episodes", "meta_seeds", "meta_seeds_reported",
            "downsample", "val_episodes",
            "val_every", "plateau_window", "checkpoint_every"):
    config_lib.check_number(f, config[f], integer=True)
  for f in ("meta_steps", "processes", "seed"):
    config_lib.check_number(f, config[f], integer=True, zero=True)
  for f in ("l1", "plateau_tol", "keep_steps"):
    config_lib.check_number(f, config[f], zero=True)
  if config.plateau_tol >= 1:
    raise ConfigError(f"plateau_tol={config.plateau_tol!r} must "
                                 "be below 1 (a relative improvement).")
  _check_list("ks", config.ks, integer=True)
  if not config.meta_ks or not set(config.meta_ks) <= set(config.ks):
    raise ConfigError(f"meta_ks={tuple(config.meta_ks)} must be a non-empty "
                     f"subset of ks={tuple(config.ks)}.")
  if config.tune_metric not in ("loss", "accuracy"):
    raise ConfigError(f"tune_metric={config.tune_metric!r} must be 'loss' or "
                     "'accuracy'.")
  _check_list("lr_grid", config.lr_grid)
  _check_list("oja_grid", config.oja_grid)
  _check_list("hidden", config.hidden, integer=True)
  config_lib.check_number("meta_lr", config.meta_lr)
  meta.check_terms(tuple(config.terms))
  fbs = tuple(config.feedbacks)
  if not fbs or len(set(fbs)) != len(fbs) or not set(fbs) <= set(FEEDBACKS):
    raise ConfigError(f"feedbacks={fbs!r} must list distinct values from "
                     f"{FEEDBACKS}; the first is the main setting.")
  _check_arms(config)
  declared = meta_report.claim(config)
  for name in (declared.reference, *declared.compared_with):
    if name not in meta_report.BASELINES:
      raise ConfigError(
          f"claim names {name!r}, which is not a rule of meta_plasticity; "
          f"rules are {', '.join(meta_report.BASELINES)}.")
  if config.dataset not in ("embedded_mnist",):
    raise ConfigError(f"dataset={config.dataset!r}: meta_plasticity builds "
                     "rotated-digit classes from 28x28 images; use "
                     "embedded_mnist.")
  if config.n_way < 2:
    raise ConfigError(f"n_way={config.n_way} must be at least 2: an episode "
                      "of one class is answered right by every rule, so "
                      "every difference would be 0.")
  _check_classes(config)
  for name, digits in (("train_digits", config.train_digits),
                       ("test_digits", config.test_digits)):
    if len(digits) * len(config.rotations) < config.n_way:
      raise ConfigError(f"{name} x rotations gives "
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
    raise ConfigError(f"max(ks) + q_query = {need} exceeds the "
                     f"{train_pool.shape[1]} images per class.")
  return Prepared(train_pool, test_pool)


# Digits that are another class turned 180 degrees: a 6 is a 9 (and the
# reverse), and 0, 1 and 8 are themselves.
_HALF_TURN = {6: 9, 9: 6, 0: 0, 1: 1, 8: 8}


def _check_classes(config: ml_collections.ConfigDict) -> None:
  """The classes, (digit, rotation) pairs, are distinct: none is listed
  twice or is another class turned 180 degrees, and no test class is a
  meta-training class."""
  for name in ("train_digits", "test_digits", "rotations"):
    values = tuple(config[name])
    top = 3 if name == "rotations" else 9
    for i, v in enumerate(values):
      if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top:
        what = "quarter turns 0..3" if name == "rotations" else "digits 0..9"
        raise ConfigError(f"{name}={values} has {v!r}; use {what}.")
      if v in values[:i]:
        raise ConfigError(f"{name}={values} repeats {v}; list each once.")
  shared = sorted(set(config.train_digits) & set(config.test_digits))
  if shared:
    raise ConfigError(
        f"train_digits and test_digits must not overlap (both have "
        f"{', '.join(map(str, shared))}): the test classes are unseen in "
        "meta-training.")
  seen = {}
  for name in ("train_digits", "test_digits"):
    for d in config[name]:
      for r in config.rotations:
        same = ((_HALF_TURN[d], (r + 2) % 4) if d in _HALF_TURN else None)
        if same in seen:
          where = seen[same]
          raise ConfigError(
              f"digit {d} turned {r} quarter turns ({name}) is digit "
              f"{same[0]} turned {same[1]} ({where}): a 6 turned 180 degrees "
              "is a 9, and 0, 1 and 8 are themselves, so "
              + ("a test class would be a meta-training class" if where !=
                 name else "an episode could hold one class twice")
              + "; use rotations 90 degrees apart, e.g. (0, 1), not "
              f"rotations={tuple(config.rotations)}.")
        seen[(d, r)] = name


def _check_arms(config: ml_collections.ConfigDict) -> None:
  """The meta-training variants and the ablation name what exists."""
  variants = tuple(config.variants)
  known = tuple(meta_report.VARIANTS)
  if (not variants or len(set(variants)) != len(variants) or
      not set(variants) <= set(known)):
    raise ConfigError(f"variants={variants!r} must list distinct values "
                      f"from {known}; the first is the verdict's.")
  ablation, terms = tuple(config.ablation), tuple(config.terms)
  for t in ablation:
    if t not in terms or t == "error":
      raise ConfigError(
          f"ablation={ablation!r} names {t!r}; it must list terms of the "
          f"pool {terms} other than 'error' (the start of every rule).")
  if len(set(ablation)) != len(ablation):
    raise ConfigError(f"ablation={ablation!r} repeats a term.")
  fbs = tuple(config.ablation_feedbacks)
  if ablation and not (fbs and set(fbs) <= set(config.feedbacks)):
    raise ConfigError(f"ablation_feedbacks={fbs!r} must list feedbacks of "
                      f"feedbacks={tuple(config.feedbacks)}.")


def jobs_of(config: ml_collections.ConfigDict, prepared: Prepared
            ) -> list[Job]:
  """The run as the one job the run directory knows, named ``run``."""
  del prepared  # The same signature as experiments.runner.jobs_of.
  return [Job("run", None, "", config)]


def _model(config, feedback: str):
  return models.MLP(features=tuple(config.hidden) + (config.n_way,),
                    feedback=feedback)


def _saved(path: str, current=lambda saved: True) -> Any:
  """The part at ``path`` if a previous run wrote it and it is ``current``
  (a damaged part, which ``read_json`` warns about, is not), else None."""
  if os.path.exists(path):
    saved = rundir.read_json(path)
    if saved is not None and current(saved):
      return saved
  return None


def _cached(path: str, make, current=lambda saved: True) -> Any:
  """Reads the part at ``path`` if :func:`_saved` finds it, else makes it."""
  saved = _saved(path, current)
  if saved is not None:
    logging.info("reusing %s", path)
    return saved
  return rundir.read_json(rundir.write_json(path, make()))


def _meta_current(config):
  """Whether a meta-training part is this config's: it stopped on a plateau
  within ``meta_steps``, or took exactly ``meta_steps`` (a larger
  ``meta_steps`` goes on from the checkpoint of one that ran out)."""
  return lambda saved: saved["steps"] == config.meta_steps or (
      saved["stopped"] == "plateau" and saved["steps"] <= config.meta_steps)


def _test_current(config, run_dir, k):
  """Whether a test part scored the rules the run directory holds now."""
  return lambda saved: saved["rules"] == _rules(config, run_dir, k)[0]


def _ep_kw(config, k):
  return dict(n_way=config.n_way, k_shot=k, q_query=config.q_query)


def _all_terms(config) -> tuple[str, ...]:
  """The coefficients every rule is written with (the pool, plus Oja)."""
  terms = tuple(config.terms)
  return terms + tuple(t for t in ("oja",) if t not in terms)


def _feedbacks(config) -> list[str]:
  """Feedbacks with a unit: those meta-trained, and backprop (baselines)."""
  fbs = list(config.feedbacks)
  return fbs + (["backprop"] if "backprop" not in fbs else [])


# --- Parts ------------------------------------------------------------------


def _tune(config, pool, feedback: str, k: int) -> dict[str, Any]:
  """Grid search on meta-training episodes at one K and feedback."""
  lrs = [float(v) for v in config.lr_grid]
  grid = [(lr, 0.0) for lr in lrs]
  if feedback == "backprop":
    grid += [(lr, float(e)) for lr in lrs for e in config.oja_grid]
  theta = {"error": jnp.array([g[0] for g in grid], jnp.float32),
           "oja": jnp.array([g[1] for g in grid], jnp.float32)}
  keys = jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(config.seed + 1000), k), config.tune_episodes)
  tic = time.perf_counter()
  res = meta.evaluate(_model(config, feedback), theta, keys, jnp.asarray(pool),
                      **_ep_kw(config, k))
  acc = np.nan_to_num(np.asarray(res.query_accuracy).mean(1), nan=0.0)
  loss = np.nan_to_num(np.asarray(res.query_loss).mean(1), nan=np.inf)
  score = -loss if config.tune_metric == "loss" else acc
  pick = lambda idx: max(idx, key=lambda i: score[i])  # pylint: disable=unnecessary-lambda-assignment
  point = lambda i: {"lr": grid[i][0], "oja_lr": grid[i][1],  # pylint: disable=unnecessary-lambda-assignment
                     "accuracy": float(acc[i]), "loss": float(loss[i])}
  out = {"k": k, "feedback": feedback,
         "grid": [point(i) for i in range(len(grid))]}
  out[BASE[feedback]] = point(pick(range(len(lrs))))
  if feedback == "backprop":
    out["bp_oja"] = point(pick(range(len(lrs), len(grid))))
    out["bp_acc"] = point(max(range(len(lrs)), key=lambda i: acc[i]))
  if _meta_trained(config, feedback, k):
    norms = meta.term_norms(
        _model(config, feedback), tuple(config.terms), jax.random.fold_in(
            jax.random.PRNGKey(config.seed + 5000), k), jnp.asarray(pool),
        episodes=config.meta_episodes, **_ep_kw(config, k))
    out["term_norms"] = norms
    out["step_scales"] = meta.step_scales(norms)
  logging.info("tuned %s K=%d in %.1fs: %s", feedback, k,
               time.perf_counter() - tic,
               {r: (v["lr"], v["oja_lr"], round(v["accuracy"], 3))
                for r, v in out.items() if r in ("bp", "bp_oja", "fa")})
  return out


def _arms(config, feedback: str, k: int) -> list[meta_report.MetaArm]:
  """The rules meta-trained at (feedback, K), in order."""
  if not _meta_trained(config, feedback, k):
    return []
  return [a for a in meta_report.meta_arms(config) if a.feedback == feedback]


def _meta_seed(config, pool, run_dir: str, arm: meta_report.MetaArm, k: int,
               seed: int, tuned: dict[str, Any], index: Optional[int] = None,
               offset: int = 0) -> dict[str, Any]:
  """Meta-trains one seed's rule of ``arm`` at one K from the tuned error
  rate.

  Every rule of a feedback draws the same meta-training and validation
  episodes for a seed (the pairing of the ablation and the variants).
  Reports its meta-steps as progress item ``index`` (the unit's), after
  ``offset`` meta-steps of the unit's earlier seeds.
  """
  start = tuned[BASE[arm.feedback]]["lr"]
  theta0 = {t: (start if t == "error" else 0.0) for t in arm.terms}
  scaled = arm.variant == "scaled"
  tag = f"{arm.tag}_K{k}_s{seed}"
  ckpt_dir = os.path.join(run_dir, "meta_ckpt")
  os.makedirs(ckpt_dir, exist_ok=True)
  tic = time.perf_counter()
  first = [True]

  def log(i, theta, loss):
    done = offset + i
    if first[0]:  # Steps before this session's first were done earlier.
      progress.resume(index, done - 1)
      first[0] = False
    progress.report(index, done)
    if i % 25 == 0 or i == config.meta_steps:
      logging.info("%s meta-step %d/%d  query loss %.4f  theta %s  (%.0fs)",
                   tag, i, config.meta_steps, loss,
                   {t: round(float(v), 4) for t, v in theta.items()},
                   time.perf_counter() - tic)

  val_keys = jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(config.seed + 3000), k), config.val_episodes)
  key = jax.random.fold_in(jax.random.fold_in(
      jax.random.PRNGKey(config.seed + 4000), k), seed)
  scales = ({t: tuned["step_scales"][t] for t in arm.terms} if scaled else
            {t: 1.0 for t in arm.terms})
  theta, hist = meta.meta_train(
      _model(config, arm.feedback), theta0, jnp.asarray(pool), key,
      steps=config.meta_steps, episodes_per_step=config.meta_episodes,
      meta_lr=config.meta_lr, l1=config.l1,
      scales=scales if scaled else None, val_keys=val_keys,
      val_every=config.val_every, plateau_window=config.plateau_window,
      plateau_tol=config.plateau_tol,
      checkpoint_path=os.path.join(ckpt_dir, f"{tag}.json"),
      checkpoint_every=config.checkpoint_every, on_step=log, **_ep_kw(
          config, k))
  logging.info("%s done: %s after %d meta-steps (best at %d), %.2fs per "
               "meta-step", tag, hist.stopped, len(hist.meta_loss),
               hist.best_step, hist.seconds / max(hist.timed_steps, 1))
  return {"k": k, "feedback": arm.feedback, "rule": arm.rule,
          "variant": arm.variant, "seed": seed, "theta0": theta0,
          "theta": theta, "step_scales": scales,
          "steps": len(hist.meta_loss),
          "best_step": hist.best_step, "stopped": hist.stopped,
          "skipped_steps": hist.skipped,
          "seconds_per_step": hist.seconds / max(hist.timed_steps, 1),
          "history": {"theta": hist.theta, "meta_loss": hist.meta_loss,
                      "query_accuracy": hist.query_accuracy,
                      "val_step": hist.val_step, "val_loss": hist.val_loss,
                      "val_accuracy": hist.val_accuracy}}


def _paths(run_dir, tag, k, seed=None):
  """A tuning part (``tag`` = the feedback) or, with ``seed``, a
  meta-training part (``tag`` = the rule's ``MetaArm.tag``)."""
  if seed is None:
    return os.path.join(run_dir, f"tuning_{tag}_K{k}.json")
  return os.path.join(run_dir, f"meta_{tag}_K{k}_s{seed}.json")


def _meta_trained(config, feedback, k) -> bool:
  return feedback in config.feedbacks and k in config.meta_ks


def _unit_steps(config, feedback, k) -> int:
  """The most meta-steps a unit takes: every seed of every rule."""
  return config.meta_steps * sum(a.seeds for a in _arms(config, feedback, k))


def run_unit(config: ml_collections.ConfigDict, run_dir: str, feedback: str,
             k: int, prepared: Optional[Prepared] = None,
             index: Optional[int] = None) -> None:
  """Tuning and meta-training at one (feedback, K); writes their parts.

  Progress item ``index`` counts its meta-steps, ``meta_steps`` per seed of
  each rule meta-trained here.
  """
  progress.check()  # A stopped run starts no unit.
  prepared = prepared or _prepared(config)
  tuned = _cached(_paths(run_dir, feedback, k),
                  lambda: _tune(config, prepared.train_pool, feedback, k))
  done = 0
  for arm in _arms(config, feedback, k):
    for s in range(arm.seeds):
      progress.resume(index, done)
      _cached(_paths(run_dir, arm.tag, k, s),
              lambda arm=arm, s=s, done=done: _meta_seed(
                  config, prepared.train_pool, run_dir, arm, k, s, tuned,
                  index, done), _meta_current(config))
      # A plateau stops a seed early; a saved seed took no time now.
      done += config.meta_steps
      progress.resume(index, done)


def _rules(config, run_dir, k) -> tuple[dict[str, dict[str, float]],
                                        dict[str, str]]:
  """Every rule tested at K: coefficients and feedback, by rule name (a
  learned rule's seed s is ``<rule>_s<s>``)."""
  rules, feedback = {}, {}
  for fb in _feedbacks(config):
    tuned = rundir.read_json(_paths(run_dir, fb, k))
    names = ("bp", "bp_oja", "bp_acc") if fb == "backprop" else ("fa",)
    for name in names:
      rules[name] = {"error": tuned[name]["lr"], "oja": tuned[name]["oja_lr"]}
      feedback[name] = fb
    for arm in _arms(config, fb, k):
      for s in range(arm.seeds):
        learned = rundir.read_json(_paths(run_dir, arm.tag, k, s))
        rules[f"{arm.rule}_s{s}"] = dict(learned["theta"])
        feedback[f"{arm.rule}_s{s}"] = fb
  return rules, feedback


def _test_keys(config, k: int, s: int) -> jax.Array:
  """The held-out episodes of meta-seed ``s`` at K."""
  return jax.random.split(jax.random.fold_in(jax.random.fold_in(
      jax.random.PRNGKey(config.seed + 2000), k), s), config.test_episodes)


def score_unit(config: ml_collections.ConfigDict, run_dir: str, k: int,
              prepared: Optional[Prepared] = None) -> None:
  """Scores every rule at K on held-out episodes; writes the part.

  Each meta-seed has its own ``test_episodes`` episodes: its learned rules
  are scored there, the tuned rules on every seed's episodes (seed-major,
  ``meta_report.episode_sets`` sets), so each seed's comparisons pair the
  same images, order and initial weights.
  """
  prepared = prepared or _prepared(config)

  def make():
    rules, feedback = _rules(config, run_dir, k)
    terms = _all_terms(config)
    sets = meta_report.episode_sets(config)
    keys = [_test_keys(config, k, s) for s in range(sets)]
    acc, loss = {}, {}
    for fb in _feedbacks(config):
      arms = _arms(config, fb, k)
      groups = [([r for r in meta_report.BASELINES if feedback.get(r) == fb],
                 jnp.concatenate(keys))]
      groups += [([f"{a.rule}_s{s}" for a in arms if s < a.seeds], keys[s])
                 for s in range(max([a.seeds for a in arms], default=0))]
      tic = time.perf_counter()
      for names, episode_keys in groups:
        theta = {t: jnp.array([rules[r].get(t, 0.0) for r in names],
                              jnp.float32) for t in terms}
        res = meta.evaluate(_model(config, fb), theta, episode_keys,
                            jnp.asarray(prepared.test_pool),
                            **_ep_kw(config, k))
        for i, r in enumerate(names):
          acc[r] = np.asarray(res.query_accuracy)[i]
          loss[r] = np.asarray(res.query_loss)[i]
      logging.info("tested K=%d, %s: %d rules in %.1fs", k, fb,
                   sum(len(g[0]) for g in groups), time.perf_counter() - tic)
    return {"k": k, "rules": rules, "feedback": feedback,
            "episodes": config.test_episodes, "sets": sets,
            "accuracy": acc, "loss": loss}

  _cached(os.path.join(run_dir, f"test_K{k}.json"), make,
          _test_current(config, run_dir, k))


# --- Worker processes -------------------------------------------------------

_PREPARED: dict[str, Prepared] = {}


def _prepared(config) -> Prepared:
  key = config.to_json_best_effort()
  if key not in _PREPARED:
    _PREPARED[key] = prepare(config)
  return _PREPARED[key]


def _run_all(calls: Sequence[pool.Call], processes: int, prepared: Prepared,
             tracker: progress.Tracker) -> None:
  """Runs the calls here (each with ``prepared=prepared``) or in the pool
  of ``processes`` workers (``experiments.pool``; a worker prepares its
  own); ``tracker`` counts each call's item complete when it returns."""
  here = pool.size(processes, len(calls)) <= 1
  if here:
    calls = [c._replace(fn=functools.partial(c.fn, prepared=prepared))
             for c in calls]
  pool.run(calls, tracker, processes, "meta worker", in_process=here)


def run(config: ml_collections.ConfigDict, prepared: Prepared, run_dir: str,
        command: str, restart: bool = False, workers: int = 0,
        tensorboard: bool = True) -> str:
  """Tunes, meta-trains, tests; writes parts, figures, summary, verdict.

  First the run directory's resume check (``rundir.check_resume``; with
  ``restart`` it is emptied) and the run's fingerprint, as for the jobs of
  ``experiments.runner.run``, whose signature this is: the worker count is
  the config's ``processes`` (``workers`` is the job runner's), and there
  are no TensorBoard curves.
  """
  del workers, tensorboard
  jobs = jobs_of(config, prepared)
  rundir.check_resume(run_dir, jobs, restart)
  rundir.write_fingerprint(run_dir, jobs[0])
  report.write_config(run_dir, config)
  fbs = _feedbacks(config)
  units = [(fb, k) for fb in fbs for k in config.ks]
  # Costliest first (meta-training at large K), so the workers end together.
  units.sort(key=lambda u: (_unit_steps(config, *u) * u[1], u[1]),
             reverse=True)
  todo = [u for u in units if not (
      os.path.exists(_paths(run_dir, *u)) and all(
          _saved(_paths(run_dir, arm.tag, u[1], s), _meta_current(config))
          for arm in _arms(config, *u) for s in range(arm.seeds)))]
  ks = sorted(config.ks, reverse=True)
  # Progress in meta-steps: a unit's tuning and the tests count as none.
  with progress.Tracker(
      [progress.Item(_unit_steps(config, *u)) for u in units] +
      [progress.Item(0) for _ in ks], label="units",
      unit="meta-steps") as tracker:
    for i, u in enumerate(units):
      if u not in todo:
        tracker.complete(i)
    _run_all([pool.Call(functools.partial(run_unit, index=units.index(u)),
                        (config, run_dir, *u), units.index(u),
                        f"unit {u[0]} K={u[1]}") for u in todo],
             config.processes, prepared, tracker)
    todo = [k for k in ks
            if not _saved(os.path.join(run_dir, f"test_K{k}.json"),
                          _test_current(config, run_dir, k))]
    for i, k in enumerate(ks):
      if k not in todo:
        tracker.complete(len(units) + i)
    _run_all([pool.Call(score_unit, (config, run_dir, k),
                        len(units) + ks.index(k), f"test K={k}")
              for k in todo],
             config.processes, prepared, tracker)

  tests = [rundir.read_json(os.path.join(run_dir, f"test_K{k}.json"))
           for k in config.ks]
  tuning = {(fb, k): rundir.read_json(_paths(run_dir, fb, k))
            for fb in fbs for k in config.ks}
  learned = {(arm.rule, k, s): rundir.read_json(_paths(run_dir, arm.tag, k,
                                                       s))
             for k in config.meta_ks for arm in meta_report.meta_arms(config)
             for s in range(arm.seeds)}
  return meta_report.write_report(config, prepared, run_dir, command, tests,
                                  tuning, learned)

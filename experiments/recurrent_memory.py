"""Runner of ``recurrent_memory``: RNN short-term memory, BPTT vs BPTT + Oja.

Every (initial radius, SGD rate, arm, seed) is one run of one compiled
``jit(vmap(scan))`` program (``ojax.recurrent.run``); seed s has the same
initialization and training streams in every setting (paired). After each
evaluation chunk ``history.npz`` and ``metrics.jsonl`` are rewritten, so a
crash keeps everything finished so far.

Verdict rule: at each (radius, rate) setting the paired difference of final
memory capacity (bp_oja - bp, 98% bootstrap CI over seeds) is "better" if its
CI lies above 0. Reproduced if better at a majority of settings, partly
reproduced if better at some, not reproduced if at none. The arms with Oja
on W_rec only or W_in only are reported for attribution, not in the verdict.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np

from experiments import run_files as rf
from ojax import recurrent
from ojax import report
from ojax import stats

CLAIM = ("Oja's rule improves short-term memory (memory capacity) of "
         "recurrent networks trained by backpropagation through time.")
# Which kernels get Oja's term in each arm.
ARM_KERNELS = {"bp": (), "bp_oja": ("W_rec", "W_in"), "bp_oja_rec": ("W_rec",),
               "bp_oja_in": ("W_in",)}
STYLES = {"bp": ("C0", "--"), "bp_oja": ("C1", "-"), "bp_oja_rec": ("C2", "-."),
          "bp_oja_in": ("C4", ":")}


def _positive(config, field: str, integer: bool = True) -> None:
  value = config[field]
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
    raise ValueError(f"{field}={value!r} must be a positive "
                     f"{'integer' if integer else 'number'}.")


def prepare(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Validates the config; returns the settings (one per radius, lr, arm)."""
  for field in ("seeds", "hidden", "delays", "steps", "eval_every", "batch",
                "length", "eval_batch", "eval_length"):
    _positive(config, field)
  if config.seeds < 2:
    raise ValueError(f"seeds={config.seeds} must be >= 2 for CIs.")
  if config.activation not in recurrent.RNN_ACTIVATIONS:
    raise ValueError(f"activation={config.activation!r} is not known; choose "
                     f"one of {', '.join(recurrent.RNN_ACTIVATIONS)}.")
  if config.delays >= config.length or config.delays >= config.eval_length:
    raise ValueError(f"delays={config.delays} must be < length="
                     f"{config.length} and < eval_length={config.eval_length}.")
  for arm in config.arms:
    if arm not in ARM_KERNELS:
      raise ValueError(f"arms has {arm!r}; choose from "
                       f"{', '.join(ARM_KERNELS)}.")
  if "bp" not in config.arms or "bp_oja" not in config.arms:
    raise ValueError(f"arms={tuple(config.arms)} must include bp and bp_oja "
                     "(the verdict compares them).")
  if not config.radii or not config.lrs:
    raise ValueError("radii and lrs must each list at least one value.")
  for field in ("radii", "lrs"):
    for v in config[field]:
      if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
        raise ValueError(f"{field} has {v!r}; values must be numbers > 0.")
  if not isinstance(config.oja_lr, (int, float)) or config.oja_lr <= 0:
    raise ValueError(f"oja_lr={config.oja_lr!r} must be a number > 0.")
  rate = float(config.oja_lr)
  return [{"radius": float(r), "lr": float(lr), "arm": arm,
           "oja_rec": rate if "W_rec" in ARM_KERNELS[arm] else 0.0,
           "oja_in": rate if "W_in" in ARM_KERNELS[arm] else 0.0}
          for r in config.radii for lr in config.lrs for arm in config.arms]


def _rows(settings, history, seeds: int, experiment: str):
  for g, s in enumerate(settings):
    for seed in range(seeds):
      i = g * seeds + seed
      for e, steps in enumerate(history["steps"]):
        row = {"experiment": experiment, **s, "seed": seed,
               "steps": int(steps)}
        row.update({k: v[e, i] for k, v in history.items() if k != "steps"})
        yield row


def _final(history, settings, seeds, key, **where) -> np.ndarray:
  (g,) = [g for g, s in enumerate(settings)
          if all(s[k] == v for k, v in where.items())]
  return np.asarray(history[key][-1, g * seeds:(g + 1) * seeds], np.float64)


def _curves(history, settings, seeds, config, path: str) -> str:
  keys = (("memory_capacity", "memory capacity"),
          ("spectral_radius", "spectral radius of W_rec"),
          ("participation_ratio", "activation dimension (PR)"))
  radii = list(config.radii)
  fig, axes = plt.subplots(len(keys), len(radii),
                           figsize=(4.2 * len(radii), 3.0 * len(keys)),
                           squeeze=False)
  x = history["steps"]
  for col, r in enumerate(radii):
    for row, (key, label) in enumerate(keys):
      ax = axes[row][col]
      for g, s in enumerate(settings):
        if s["radius"] != r or s["lr"] != max(config.lrs):
          continue
        vals = history[key][:, g * seeds:(g + 1) * seeds]
        mean, low, high = stats.bootstrap_band(vals, rf.LEVEL, rf.RESAMPLES)
        color, style = STYLES[s["arm"]]
        ax.plot(x, mean, style, color=color, label=s["arm"])
        ax.fill_between(x, low, high, color=color, alpha=0.2)
      ax.set_title(f"initial radius {r:g}: {label}", fontsize=9)
      ax.set_xlabel("SGD steps")
      ax.set_ylabel(label)
      ax.grid(alpha=0.3)
      if row == 0 and col == 0:
        ax.legend(fontsize=7)
  fig.suptitle(f"recurrent_memory (SGD rate {max(config.lrs):g}): mean over "
               f"{seeds} seeds, 98% bootstrap CI")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _per_delay(history, settings, seeds, config, key: str, path: str,
               ylabel: str) -> str:
  radii = list(config.radii)
  fig, axes = plt.subplots(1, len(radii), figsize=(4.2 * len(radii), 3.3),
                           squeeze=False)
  k = np.arange(1, config.delays + 1)
  for col, r in enumerate(radii):
    ax = axes[0][col]
    for g, s in enumerate(settings):
      if s["radius"] != r or s["lr"] != max(config.lrs):
        continue
      vals = history[key][-1, g * seeds:(g + 1) * seeds]  # (S, K)
      mean, low, high = stats.bootstrap_band(vals.T, rf.LEVEL, rf.RESAMPLES)
      color, style = STYLES[s["arm"]]
      ax.plot(k, mean, style, color=color, label=s["arm"])
      ax.fill_between(k, low, high, color=color, alpha=0.2)
    ax.set_title(f"initial radius {r:g}, after training", fontsize=9)
    ax.set_xlabel("delay k")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.05 if key.startswith("r2") else None, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"recurrent_memory (SGD rate {max(config.lrs):g}): {ylabel} "
               f"per delay, mean over {seeds} seeds, 98% bootstrap CI")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _spectrum(history, settings, seeds, config, path: str) -> str:
  radii = list(config.radii)
  fig, axes = plt.subplots(1, len(radii), figsize=(4.2 * len(radii), 3.3),
                           squeeze=False)
  for col, r in enumerate(radii):
    ax = axes[0][col]
    for g, s in enumerate(settings):
      if s["radius"] != r or s["lr"] != max(config.lrs):
        continue
      for e in (0, -1):
        if e == 0 and s["arm"] != "bp":
          continue  # Every arm starts from bp's initialization.
        sv = history["singular_values"][e, g * seeds:(g + 1) * seeds]
        color, style = ("0.6", "-") if e == 0 else STYLES[s["arm"]]
        ax.plot(np.arange(1, sv.shape[1] + 1), sv.mean(0), style,
                color=color, label="initial" if e == 0 else s["arm"])
    ax.set_title(f"initial radius {r:g}, lr {max(config.lrs):g}", fontsize=9)
    ax.set_xlabel("index")
    ax.set_ylabel("singular value of W_rec")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("recurrent_memory: singular values of W_rec (mean over seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _summary(config, settings, history, run_dir: str, command: str,
             figures: list[str]) -> tuple[str, str, str]:
  seeds = config.seeds
  rows = []
  for s in settings:
    where = {k: s[k] for k in ("radius", "lr", "arm")}
    f = lambda key: _final(history, settings, seeds, key, **where)  # pylint: disable=cell-var-from-loop
    g = settings.index(s)
    rho0 = history["spectral_radius"][0, g * seeds:(g + 1) * seeds]
    rows.append([f"{s['radius']:g}", f"{s['lr']:g}", s["arm"],
                 rf.ci(f("memory_capacity")), rf.ci(f("test_loss")),
                 f"{np.mean(rho0):.3f} -> {rf.ci(f('spectral_radius'))}",
                 rf.ci(f("participation_ratio")),
                 int(np.sum(f("diverged_at") >= 0))])
  final_table = rf.table(
      ["radius", "lr", "arm", "memory capacity", "test MSE",
       "spectral radius (initial -> final)", "activation dim (PR)",
       "diverged"], rows)
  mc = lambda arm, r, lr: _final(history, settings, seeds,
                                 "memory_capacity", radius=r, lr=lr, arm=arm)
  oja_arms = [a for a in config.arms if a != "bp"]
  comp, better = [], 0
  for r in config.radii:
    for lr in config.lrs:
      row = [f"{r:g}", f"{lr:g}"]
      for arm in oja_arms:
        d = rf.paired(mc(arm, r, lr), mc("bp", r, lr))
        row += [d, rf.significance(d)]
        better += arm == "bp_oja" and d.low > 0
      comp.append(row)
  comp_table = rf.table(["radius", "lr"] + [
      c for arm in oja_arms for c in (f"MC({arm}) - MC(bp)", f"{arm} is")],
                        comp)
  best = []
  for r in config.radii:
    picks = {arm: max(config.lrs, key=lambda lr: np.nanmean(mc(arm, r, lr)))  # pylint: disable=cell-var-from-loop
             for arm in config.arms}
    row = [f"{r:g}", f"{rf.ci(mc('bp', r, picks['bp']))} (lr {picks['bp']:g})"]
    for arm in oja_arms:
      a = mc(arm, r, picks[arm])
      d = rf.paired(a, mc("bp", r, picks["bp"]))
      row += [f"{rf.ci(a)} (lr {picks[arm]:g})", d]
    best.append(row)
  best_table = rf.table(["radius", "bp MC"] + [
      c for arm in oja_arms for c in (f"{arm} MC", "difference")], best)
  delays = [k for k in (1, 5, 10, 20, 30, 40) if k <= config.delays]
  dr = []
  for s in settings:
    if s["lr"] != max(config.lrs):
      continue
    vals = _final(history, settings, seeds, "r2_per_delay",
                  **{k: s[k] for k in ("radius", "lr", "arm")})
    dr.append([f"{s['radius']:g}", s["arm"]] + [
        f"{np.nanmean(vals[:, k - 1]):.3f}" for k in delays])
  delay_table = rf.table(["radius", "arm"] + [f"r² k={k}" for k in delays],
                         dr)
  n = len(config.radii) * len(config.lrs)
  jb = 2 + 2 * oja_arms.index("bp_oja")
  verdict = ("reproduced" if better > n / 2 else
             "partly reproduced" if better else "not reproduced")
  evidence = (f"bp_oja (Oja rate {config.oja_lr:g} on W_rec and W_in) had "
              "significantly higher final memory capacity than bp (98% paired "
              f"bootstrap CI over {seeds} seeds above 0) at {better} of {n} "
              "(radius, lr) settings; " + "; ".join(
                  f"radius {c[0]} lr {c[1]}: {c[jb]}" for c in comp) + ".")
  for arm, what in (("bp_oja_rec", "W_rec only"), ("bp_oja_in", "W_in only")):
    if arm in oja_arms:
      j = 2 + 2 * oja_arms.index(arm)
      evidence += (f" Attribution, Oja on {what} vs bp: significantly better "
                   f"at {sum(c[j].low > 0 for c in comp)}, worse at "
                   f"{sum(c[j].high < 0 for c in comp)} of {n} settings.")
  rule = ("Verdict rule: reproduced if bp_oja's memory capacity is "
          "significantly higher (paired 98% CI above 0) at a majority of "
          "(radius, lr) settings, partly if at some, not if at none.")
  text = "\n".join([
      "# recurrent_memory", "",
      f"Vanilla {config.activation} RNN, {config.hidden} units, scalar input "
      f"u_t ~ U(-1, 1), linear readout of delays k = 1..{config.delays}; BPTT "
      f"with plain SGD on fresh {config.length}-step sequences "
      f"({config.batch} per step, {config.steps} steps); bp_oja adds Oja's "
      f"rule (rate {config.oja_lr:g}) on W_rec (pre h_{{t-1}}, post h_t) and "
      "W_in (pre x_t, post h_t); bp_oja_rec / bp_oja_in add it on W_rec / "
      "W_in only (attribution). Memory capacity MC = sum_k r_k^2 on "
      f"{config.eval_batch} held-out streams of {config.eval_length} steps. "
      f"{seeds} paired seeds; means with 98% bootstrap CIs (500 resamples).",
      "", f"Command: `{command}`" if command else "",
      "", "## Final metrics", "",
      "(`radius` is the nominal gain g of W_rec ~ N(0, g^2/H); the measured "
      "initial spectral radius is listed too.)", "", final_table,
      "", "## Paired difference in memory capacity against bp", "",
      comp_table,
      "", "## Each arm at its best SGD rate", "",
      "(rate picked per arm by mean final MC on the evaluation streams; "
      "difference against bp at bp's best rate)", "",
      best_table,
      "", f"## r² per delay (lr {max(config.lrs):g}, mean over seeds)", "",
      delay_table,
      "", "## Verdict", "", f"**{verdict}**: {evidence}", "", rule, "",
      *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in figures],
      ""])
  rf.write_text(os.path.join(run_dir, "summary.md"), text)
  return verdict, evidence, os.path.join(run_dir, "summary.md")


def run(config: ml_collections.ConfigDict, prepared: list[dict[str, Any]],
        run_dir: str, command: str) -> str:
  """Trains every setting, writes metrics, figures, summary and verdict."""
  settings = prepared
  seeds = config.seeds
  report.write_config(run_dir, config)
  model = recurrent.RNN(hidden=config.hidden, outputs=config.delays,
                        activation=config.activation,
                        input_scale=config.input_scale)
  col = lambda k: jnp.asarray(np.repeat([s[k] for s in settings], seeds),
                              jnp.float32)
  setting = recurrent.Setting(col("lr"), col("oja_rec"), col("oja_in"),
                              col("radius"))
  base = jax.random.PRNGKey(config.seed)
  keys = jnp.tile(jax.random.split(jax.random.fold_in(base, 1), seeds),
                  (len(settings), 1))

  def save(done, history):
    np.savez(os.path.join(run_dir, "history.npz"), **history)
    rf.write_jsonl(os.path.join(run_dir, "metrics.jsonl"),
                   _rows(settings, history, seeds, config.experiment))

  history = recurrent.run(
      model, setting, keys, num_steps=config.steps,
      eval_every=config.eval_every, batch=config.batch, length=config.length,
      eval_batch=config.eval_batch, eval_length=config.eval_length,
      eval_key=jax.random.fold_in(base, 2), on_chunk=save)
  save(config.steps, history)
  figures = [
      _curves(history, settings, seeds, config,
              os.path.join(run_dir, "recurrent_memory_curves.png")),
      _per_delay(history, settings, seeds, config, "r2_per_delay",
                 os.path.join(run_dir, "recurrent_memory_delays.png"),
                 "squared correlation r²_k"),
      _spectrum(history, settings, seeds, config,
                os.path.join(run_dir, "recurrent_memory_spectrum.png")),
  ]
  verdict, evidence, path = _summary(config, settings, history, run_dir,
                                     command, figures)
  rf.write_verdict(run_dir, CLAIM, verdict, evidence,
                   [os.path.basename(p) for p in figures])
  return path

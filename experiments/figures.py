"""The figures of every report (PNG, dpi 80).

Every curve is the mean over the seeds that did not diverge, with a Student-t
band (or error bars) from ``experiments.stats``; one color per arm, the same
in every panel.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments import analysis
from experiments import stats

DPI = 80
LEVEL = stats.LEVEL


def _colors(run: analysis.Run) -> dict[str, str]:
  arms = list(dict.fromkeys(r.job.arm for r in run.results))
  return {arm: f"C{i}" for i, arm in enumerate(arms)}


def _band(ax, x, values_ExS, color, label, diverged_S=None):
  if diverged_S is not None:
    values_ExS = values_ExS[:, ~diverged_S]
  mean, low, high = stats.band(values_ExS, LEVEL)
  ax.plot(x, mean, color=color, label=label)
  ax.fill_between(x, low, high, color=color, alpha=0.25)


def _errorbars(ax, xs, per_seed: Sequence[np.ndarray], color, label):
  ests = [stats.interval(v, LEVEL) for v in per_seed]
  ax.errorbar(xs, [e.mean for e in ests],
              yerr=[[e.mean - e.low for e in ests],
                    [e.high - e.mean for e in ests]],
              color=color, marker="o", capsize=3, label=label)


def finish(fig, axes, title: str, path: str) -> str:
  for ax in np.ravel(axes):
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def title(run: analysis.Run, what: str) -> str:
  c = run.config
  return (f"{c.experiment}: {what}\n({c.get('dataset', c.task)}, {c.seeds} "
          f"seeds, mean and {int(LEVEL * 100)}% t interval)")


def curves(run: analysis.Run, path: str, keys=("test_accuracy",
                                               "online_accuracy"),
           mark_samples: int = 0) -> str:
  """A row per axis value, a column per metric, value vs samples seen."""
  values = list(dict.fromkeys(r.job.axis_value for r in run.results))
  colors = _colors(run)
  fig, axes = plt.subplots(len(values), len(keys), squeeze=False,
                           figsize=(3.6 * len(keys), 2.8 * len(values)))
  axis = run.config.axis.split(".")[-1] if run.config.axis else ""
  for row, v in zip(axes, values):
    for ax, key in zip(row, keys):
      for r in run.results:
        if r.job.axis_value != v:
          continue
        x, vals = r.history["samples"], r.history[key][:, 0]
        keep = np.isfinite(vals).any(axis=1)  # online acc is NaN at 0.
        _band(ax, x[keep], vals[keep], colors[r.job.arm], r.job.arm,
              analysis.diverged(r))
      if mark_samples and mark_samples < x[-1]:
        ax.axvline(mark_samples, color="gray", ls=":", lw=1)
      ax.set_title(f"{axis}={v}" if axis else key, fontsize=9)
      ax.set_xlabel("training samples seen")
      ax.set_ylabel(key.replace("_", " "))
  return finish(fig, axes, title(run, "learning curves"), path)


def versus_axis(run: analysis.Run, path: str, log_y_keys=("act_last_hidden",)
                ) -> str:
  """Final accuracy and layer diagnostics against the axis value."""
  colors = _colors(run)
  panels = ("test_accuracy", "pr_hidden", "act_last_hidden")
  if "participation_ratio" not in run.results[0].history:  # diagnostics off
    panels = panels[:1]
  names = {"test_accuracy": "final test accuracy",
           "pr_hidden": "participation ratio (hidden mean)",
           "act_last_hidden": "activation norm, last hidden"}
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(3.6 * len(panels), 3.0))
  axes = axes[0]
  axis = run.config.axis.split(".")[-1]
  for ax, panel in zip(axes, panels):
    for arm in colors:
      rs = [r for r in run.results if r.job.arm == arm]
      xs = [float(r.job.axis_value) for r in rs]
      ok = [~analysis.diverged(r) for r in rs]
      if panel == "test_accuracy":
        per_seed = [analysis.value(r)[k] for r, k in zip(rs, ok)]
      elif panel == "pr_hidden":
        per_seed = [np.nanmean(r.history["participation_ratio"][-1, 0, k, :-1],
                               axis=-1) for r, k in zip(rs, ok)]
      else:
        per_seed = [r.history["activation_norm"][-1, 0, k, -2]
                    for r, k in zip(rs, ok)]
      _errorbars(ax, xs, per_seed, colors[arm], arm)
    ax.set_xlabel(axis)
    ax.set_ylabel(names[panel], fontsize=8)
    if panel in log_y_keys:
      ax.set_yscale("log")
  return finish(fig, axes, title(run, f"after training, against {axis}"),
                 path)


def versus_gain(series: dict, path: str, title: str) -> str:
  """Test accuracy against the init gain, a panel per init scheme.

  ``series``: {scheme: {rule: (gains, [per-seed accuracies per gain])}}.
  """
  fig, axes = plt.subplots(1, len(series), squeeze=False,
                           figsize=(3.4 * len(series), 3.0))
  for ax, (scheme, rules) in zip(axes[0], series.items()):
    for i, (rule, (gains, per_seed)) in enumerate(rules.items()):
      _errorbars(ax, gains, per_seed, f"C{i}", rule)
    ax.set_xscale("log")
    ax.set_title(f"init = {scheme}", fontsize=9)
    ax.set_xlabel("init gain (x scheme's scale)")
    ax.set_ylabel("test accuracy, 1 pass")
  return finish(fig, axes, title, path)


def chosen(panels: dict, path: str, title: str, xlabel: str,
           ylabel: str = "test accuracy", log_x: bool = False) -> str:
  """Each rule at its validation-chosen points, a panel per budget or
  setting (``experiments.tuned``).

  ``panels``: {panel title: {rule: (xs, [per-seed values per x])}}; a
  diverged seed's value is its failure score, as in the tests.
  """
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(3.6 * len(panels), 3.0))
  rules = list(dict.fromkeys(r for p in panels.values() for r in p))
  for ax, (name, lines) in zip(axes[0], panels.items()):
    for rule, (xs, per_seed) in lines.items():
      _errorbars(ax, xs, per_seed, f"C{rules.index(rule)}", rule)
    if log_x:
      ax.set_xscale("log")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
  return finish(fig, axes, title, path)


def bars(run: analysis.Run, path: str) -> str:
  """Final test accuracy per arm, horizontal bars with CI error bars."""
  rs = run.results
  ests = [stats.interval(analysis.value(r)[~analysis.diverged(r)], LEVEL)
          for r in rs]
  fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(rs) + 1.2))
  y = np.arange(len(rs))
  ax.barh(y, [e.mean for e in ests], color=[f"C{i}" for i in y],
          xerr=[[e.mean - e.low for e in ests],
                [e.high - e.mean for e in ests]],
          capsize=3)
  ax.set_yticks(y, [r.job.arm for r in rs])
  lo = min(e.low for e in ests)
  ax.set_xlim(max(0.0, lo - 0.05), min(1.0, max(e.high for e in ests) + 0.02))
  ax.set_xlabel("final test accuracy")
  ax.set_ylabel("arm")
  return finish(fig, np.array([ax]), title(run, "same samples, each arm"),
                 path)


def feedback(run: analysis.Run, path: str) -> str:
  """Accuracy, total weight norm and FA-gradient cosine over training."""
  colors = _colors(run)
  fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.0))
  for r in run.results:
    x, h, c = r.history["samples"], r.history, colors[r.job.arm]
    _band(axes[0], x, h["test_accuracy"][:, 0], c, r.job.arm)
    norms = np.sqrt(np.sum(h["weight_norm"][:, 0] ** 2, axis=-1))
    _band(axes[1], x, norms, c, r.job.arm)
    if "feedback_cosine" in h:
      cos = np.nanmean(h["feedback_cosine"][:, 0, :, :-1], axis=-1)
      _band(axes[2], x, cos, c, r.job.arm)
  labels = ("test accuracy", "total weight norm sqrt(sum ||K_l||^2)",
            "cos(FA update, gradient), hidden mean")
  for ax, name in zip(axes, labels):
    ax.set_xlabel("training samples seen")
    ax.set_ylabel(name, fontsize=8)
  return finish(fig, axes, title(run, "feedback alignment"), path)


def per_delay(run: analysis.Run, path: str, key: str = "r2_per_delay") -> str:
  """Memory task: final r^2 against the delay, a panel per axis value."""
  colors = _colors(run)
  values = list(dict.fromkeys(r.job.axis_value for r in run.results))
  fig, axes = plt.subplots(1, len(values), squeeze=False,
                           figsize=(3.6 * len(values), 3.0))
  axis = run.config.axis.split(".")[-1] if run.config.axis else ""
  for ax, v in zip(axes[0], values):
    for r in run.results:
      if r.job.axis_value != v:
        continue
      vals = r.history[key][-1, 0]  # (S, K)
      k = np.arange(1, vals.shape[-1] + 1)
      _band(ax, k, vals.T, colors[r.job.arm], r.job.arm, analysis.diverged(r))
    ax.set_title(f"{axis}={v}" if axis else key, fontsize=9)
    ax.set_xlabel("delay k")
    ax.set_ylabel("r^2 after training")
  return finish(fig, axes, title(run, "recall per delay"), path)


def sweep(result, path: str) -> str:
  """Heat map of final mean test accuracy over the first two swept fields."""
  fields = list(result.grid[0])
  fx, fy = fields[0], (fields[1] if len(fields) > 1 else None)
  xs = sorted({p[fx] for p in result.grid})
  ys = sorted({p[fy] for p in result.grid}) if fy else [None]
  acc = np.full((len(ys), len(xs)), np.nan)
  for g, p in enumerate(result.grid):
    ok = ~analysis.diverged(result, g)
    if ok.any():
      acc[ys.index(p[fy]) if fy else 0, xs.index(p[fx])] = np.mean(
          analysis.value(result, point=g)[ok])
  fig, ax = plt.subplots(figsize=(1.2 * len(xs) + 2, 0.8 * len(ys) + 1.8))
  im = ax.imshow(acc, origin="lower", cmap="viridis", aspect="auto")
  middle = np.nanmean([np.nanmin(acc), np.nanmax(acc)])
  for i in range(len(ys)):
    for j in range(len(xs)):
      ax.text(j, i, f"{acc[i, j]:.3f}", ha="center", va="center", fontsize=7,
              color="k" if acc[i, j] > middle else "w")
  ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
  ax.set_xlabel(fx)
  if fy:
    ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
    ax.set_ylabel(fy)
  else:
    ax.set_yticks([])
  fig.colorbar(im, ax=ax, label="final test accuracy (mean, not diverged)")
  ax.set_title(f"{result.job.id}: sweep")
  return finish(fig, np.array([]), f"{result.job.id}", path)


def _heat(ax, xs, ys, values, title, cmap="viridis", center=False):
  vmax = np.nanmax(np.abs(values)) if center else None
  im = ax.imshow(values, origin="lower", aspect="auto", cmap=cmap,
                 vmin=-vmax if center else None, vmax=vmax)
  for i in range(len(ys)):
    for j in range(len(xs)):
      if np.isfinite(values[i, j]):
        ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center",
                fontsize=6, color="w" if not center else "k")
  ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs], fontsize=7)
  ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys], fontsize=7)
  ax.set_xlabel("lr")
  ax.set_ylabel("Oja rate")
  ax.set_title(title, fontsize=8)
  plt.colorbar(im, ax=ax)


def landscape(run: analysis.Run, path: str, points, arm: str = "test"
              ) -> str:
  """Maps over (lr, Oja rate) of the ``arm`` arm, a row per network.

  ``points``: two (label, ``result -> evaluation index or None``), the
  claim's first evaluation point (one pass) and its last. Panels: test
  accuracy at each, the paired gain over BP at the same lr (Oja rate 0 row)
  at each, online accuracy over the first pass, and the area under the
  test-accuracy curve (its mean over evaluations). Means over seeds that did
  not diverge; a point the run lacks leaves its maps empty.
  """
  (first_label, first), (last_label, last) = points
  rs = [r for r in run.results if r.job.arm == arm]
  fig, axes = plt.subplots(len(rs), 6, squeeze=False,
                           figsize=(24, 3.6 * len(rs)))
  for row, r in zip(axes, rs):
    xs = sorted({p["lr"] for p in r.grid})
    ys = sorted({p["oja_lr"] for p in r.grid})
    samples = r.history["samples"]
    one, end = first(r), last(r)
    maps = {k: np.full((len(ys), len(xs)), np.nan) for k in range(6)}
    for g, p in enumerate(r.grid):
      i, j = ys.index(p["oja_lr"]), xs.index(p["lr"])
      ok = ~analysis.diverged(r, g)
      if not ok.any():
        continue
      acc = r.history["test_accuracy"][:, g][:, ok]  # (E, S)
      maps[0][i, j] = acc[one].mean() if one is not None else np.nan
      maps[1][i, j] = acc[end].mean() if end is not None else np.nan
      base = next(b for b, q in enumerate(r.grid)
                  if q["lr"] == p["lr"] and q["oja_lr"] == 0)
      both = ok & ~analysis.diverged(r, base)
      if one is not None:
        maps[2][i, j] = np.mean(analysis.value(r, point=g, at=one)[both] -
                                analysis.value(r, point=base, at=one)[both])
      if end is not None:
        maps[3][i, j] = np.mean(analysis.value(r, point=g, at=end)[both] -
                                analysis.value(r, point=base, at=end)[both])
      stop = len(samples) if one is None or one == -1 else one + 1
      maps[4][i, j] = np.nanmean(
          r.history["online_accuracy"][1:stop, g][:, ok])
      maps[5][i, j] = acc.mean()
    titles = (f"test acc, {first_label}", f"test acc, {last_label}",
              f"gain over BP at same lr, {first_label}",
              f"gain over BP at same lr, {last_label}",
              "online acc, first pass", "area under test-acc curve")
    for k, ax in enumerate(row):
      _heat(ax, xs, ys, maps[k], f"depth={r.job.axis_value}: {titles[k]}",
            cmap="RdBu" if k in (2, 3) else "viridis", center=(k in (2, 3)))
  fig.suptitle("landscape (claim: Oja helps online BP, at every operating "
               "point?)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path

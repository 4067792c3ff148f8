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


"""Writes a run directory: config, JSON-lines metrics, summary.md, figures.

Layout of ``<run_dir>``:

    config.json       the resolved config
    metrics.jsonl     one line per (job, grid point, seed, evaluation)
    summary.md        final accuracy per arm, mean and 98% bootstrap CI, and
                      paired differences against the reference arm
    curves.png        test accuracy vs samples seen, a panel per axis value
    sweep.png         final accuracy over the two main swept fields (sweeps)
    jobs/<id>.json    each finished job's metrics (used to resume)
    checkpoints/<id>/ orbax checkpoints; the last one holds the final params
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np

from ojax import stats
from ojax.experiment import JobResult

LEVEL = 0.98


def _jsonable(x: Any) -> Any:
  """Plain JSON values; NaN and inf become null (strict JSON has neither)."""
  if isinstance(x, (np.ndarray, list, tuple)):
    return [_jsonable(v) for v in np.asarray(x).tolist()]
  if isinstance(x, np.generic):
    x = x.item()
  if isinstance(x, float) and not np.isfinite(x):
    return None
  return x


def write_config(run_dir: str, config: ml_collections.ConfigDict) -> None:
  with open(os.path.join(run_dir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


def write_metrics(run_dir: str, results: Sequence[JobResult],
                  experiment: str) -> str:
  """Writes ``metrics.jsonl``; returns its path."""
  path = os.path.join(run_dir, "metrics.jsonl")
  with open(path + ".tmp", "w") as f:
    for r in results:
      h = r.history
      for g, point in enumerate(r.grid):
        for s in range(h["test_accuracy"].shape[2]):
          for e, samples in enumerate(h["samples"]):
            row = {"experiment": experiment, "job": r.job.id,
                   "axis": r.job.config.axis or None,
                   "axis_value": _jsonable(r.job.axis_value), "arm": r.job.arm,
                   **point, "seed": s, "samples": int(samples)}
            row.update({k: _jsonable(v[e, g, s]) for k, v in h.items()
                        if k != "samples"})
            f.write(json.dumps(row, allow_nan=False) + "\n")
  os.replace(path + ".tmp", path)
  return path


def final(result: JobResult, key: str = "test_accuracy",
          point: int = 0) -> np.ndarray:
  """The per-seed value of ``key`` at the last evaluation, shape ``(S,)``."""
  return np.asarray(result.history[key][-1, point], np.float64)


def _diverged(result: JobResult, point: int = 0) -> int:
  return int(np.sum(result.history["diverged_at"][-1, point] >= 0))


def summary_table(results: Sequence[JobResult],
                  config: ml_collections.ConfigDict) -> str:
  """Markdown: per job and grid point, final metrics with 98% CIs."""
  axis = config.axis.split(".")[-1] if config.axis else None
  head = ([axis] if axis else []) + ["arm"]
  fields = list(results[0].grid[0])
  head += fields + ["final test acc [98% CI]", "final online acc [98% CI]",
                    "diverged", "seeds"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in results:
    for g, point in enumerate(r.grid):
      cells = ([str(r.job.axis_value)] if axis else []) + [r.job.arm]
      cells += [f"{point[k]:g}" for k in fields]
      cells += [str(stats.bootstrap_ci(final(r, point=g), LEVEL)),
                str(stats.bootstrap_ci(final(r, "online_accuracy", g), LEVEL)),
                str(_diverged(r, g)), str(r.history["test_accuracy"].shape[2])]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def comparison_table(results: Sequence[JobResult],
                     config: ml_collections.ConfigDict) -> str:
  """Markdown: paired differences of each arm against ``reference_arm``."""
  ref = config.reference_arm
  by_key = {(str(r.job.axis_value), r.job.arm): r for r in results}
  axis = config.axis.split(".")[-1] if config.axis else None
  head = ([axis] if axis else []) + [
      "arm", f"final test acc - {ref} [98% CI]", "significant"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in results:
    base = by_key.get((str(r.job.axis_value), ref))
    if base is None or r.job.arm == ref or len(r.grid) != 1:
      continue
    diff = stats.paired_difference(final(r), final(base), level=LEVEL)
    verdict = ("yes, better" if diff.low > 0 else
               "yes, worse" if diff.high < 0 else "no")
    cells = ([str(r.job.axis_value)] if axis else []) + [r.job.arm, str(diff),
                                                         verdict]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) if len(lines) > 2 else ""


def plot_curves(results: Sequence[JobResult],
                config: ml_collections.ConfigDict, path: str,
                key: str = "test_accuracy") -> str:
  """Mean over seeds with a 98% bootstrap band, a panel per axis value."""
  values = list(dict.fromkeys(str(r.job.axis_value) for r in results))
  arms = list(dict.fromkeys(r.job.arm for r in results))
  extra = 1 if config.axis and len(values) > 1 else 0
  n = len(values) + extra
  fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.4), squeeze=False)
  axis = config.axis.split(".")[-1] if config.axis else ""
  colors = {arm: f"C{i}" for i, arm in enumerate(arms)}
  for ax, value in zip(axes[0], values):
    for r in results:
      if str(r.job.axis_value) != value:
        continue
      mean, low, high = stats.bootstrap_band(r.history[key][:, 0], LEVEL)
      x = r.history["samples"]
      ax.plot(x, mean, color=colors[r.job.arm], label=r.job.arm)
      ax.fill_between(x, low, high, color=colors[r.job.arm], alpha=0.25)
    ax.set_title(f"{axis} = {value}" if axis else config.experiment)
    ax.set_xlabel("samples seen")
    ax.set_ylabel(key.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  if extra:
    ax = axes[0][-1]
    for arm in arms:
      rs = [r for r in results if r.job.arm == arm]
      ests = [stats.bootstrap_ci(final(r, key), LEVEL) for r in rs]
      xs = np.arange(len(rs))
      ax.errorbar(xs, [e.mean for e in ests],
                  yerr=[[e.mean - e.low for e in ests],
                        [e.high - e.mean for e in ests]],
                  color=colors[arm], marker="o", capsize=3, label=arm)
      ax.set_xticks(xs, [str(r.job.axis_value) for r in rs])
    ax.set_title(f"final {key.replace('_', ' ')} vs {axis}")
    ax.set_xlabel(axis)
    ax.set_ylabel(f"final {key.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(f"{config.experiment} on {config.dataset}: mean over "
               f"{config.seeds} seeds, {int(LEVEL * 100)}% bootstrap CI")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def plot_sweep(result: JobResult, path: str) -> Optional[str]:
  """Heat map of final mean test accuracy over the first two swept fields."""
  fields = list(result.grid[0])
  if not fields:
    return None
  fx, fy = fields[0], (fields[1] if len(fields) > 1 else None)
  xs = sorted({p[fx] for p in result.grid})
  ys = sorted({p[fy] for p in result.grid}) if fy else [None]
  acc = np.full((len(ys), len(xs)), np.nan)
  for g, p in enumerate(result.grid):
    i = ys.index(p[fy]) if fy else 0
    acc[i, xs.index(p[fx])] = np.nanmean(final(result, point=g))
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
  fig.colorbar(im, ax=ax, label="final test accuracy (mean over seeds)")
  ax.set_title(f"{result.job.id}: sweep")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def write_summary(run_dir: str, results: Sequence[JobResult],
                  config: ml_collections.ConfigDict,
                  command: str = "") -> str:
  """Writes ``summary.md`` and the figures; returns the summary's path."""
  plot_curves(results, config, os.path.join(run_dir, "curves.png"))
  parts = [f"# {config.experiment}", "",
           f"Dataset `{config.dataset}`"
           f"{' (validation split)' if config.validation else ''}, "
           f"{config.num_samples} samples per seed, batch size "
           f"{config.batch_size}, {config.seeds} paired seeds. Means with "
           f"{int(LEVEL * 100)}% bootstrap CIs (500 resamples)."]
  if command:
    parts += ["", f"Command: `{command}`"]
  parts += ["", "## Final accuracy", "", summary_table(results, config)]
  comparison = comparison_table(results, config)
  if comparison:
    parts += ["", f"## Paired difference against `{config.reference_arm}`",
              "", comparison]
  for r in results:
    if len(r.grid) > 1 and plot_sweep(
        r, os.path.join(run_dir, f"sweep-{r.job.id}.png")):
      parts += ["", f"![sweep {r.job.id}](sweep-{r.job.id}.png)"]
  parts += ["", "![curves](curves.png)", ""]
  path = os.path.join(run_dir, "summary.md")
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path

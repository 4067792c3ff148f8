"""One result schema and one renderer for every experiment.

A run directory holds:

    config.json       the resolved config
    metrics.jsonl     one line per (job, grid point, seed, evaluation)
    section.json      the run's :class:`Section`: claim, settings, tables,
                      figures, verdict and evidence
    summary.md        the section rendered by :func:`render` (the same
                      renderer writes RESULTS.md from every section.json)
    *.png             the figures the section shows
    jobs/<id>.json    each finished job's metrics and config fingerprint
    checkpoints/<id>/ orbax checkpoints; the last one holds the final params

Files are written by the one writer of ``experiments.rundir`` (``.tmp``
then rename: a crash leaves the old version or the new one, never half a
file; strict JSON). The schema (:class:`Section`, ``JobResult``) is
``experiments.schema``; ``experiments.runner.write_run`` and the
meta_plasticity report build a section and write it here.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from experiments import stats
# The writers and the schema, public here too (one definition of each).
from experiments.rundir import jsonable, write_json  # noqa: F401
from experiments.rundir import write_jsonl, write_text  # noqa: F401
from experiments.schema import Section, VERDICTS


def write_config(run_dir: str, config: ml_collections.ConfigDict) -> str:
  return write_text(os.path.join(run_dir, "config.json"),
                    config.to_json_best_effort(indent=2))


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table."""
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def section_from_json(s: Any) -> Section:
  """The :class:`Section` a ``section.json`` (or a record's section) holds;
  a one-line ``ValueError`` saying what is wrong if it is damaged."""
  if not isinstance(s, dict):
    raise ValueError(f"the section is a {type(s).__name__}, not an object")
  missing = [f for f in Section._fields
             if f not in s and f not in Section._field_defaults]
  if missing:
    raise ValueError(f"the section lacks {', '.join(missing)}")
  s = {**Section._field_defaults, **s}
  for field in ("claim", "scope", "verdict", "evidence", "control_verdict",
                "control_evidence"):
    if not isinstance(s[field], str):
      raise ValueError(f"section.{field}={s[field]!r} is not a string")
  for field in ("verdict", "control_verdict"):
    if s[field] and s[field] not in VERDICTS:
      raise ValueError(f"section.{field}={s[field]!r} is not one of "
                       f"{', '.join(VERDICTS)}")
  if not isinstance(s["figures"], list) or not all(
      isinstance(f, str) for f in s["figures"]):
    raise ValueError("section.figures is not a list of file names")
  if not isinstance(s["tables"], list) or not all(
      isinstance(t, list) and len(t) == 2 and all(
          isinstance(x, str) for x in t) for t in s["tables"]):
    raise ValueError("section.tables is not a list of [title, table] "
                     "string pairs")
  return Section(s["claim"], s["scope"], [tuple(t) for t in s["tables"]],
                 s["figures"], s["verdict"], s["evidence"],
                 s["control_verdict"], s["control_evidence"])


def read_section(run_dir: str) -> Section:
  """The run's ``section.json``: OSError or a one-line ValueError."""
  with open(os.path.join(run_dir, "section.json")) as f:
    return section_from_json(json.load(f))


def write_section(run_dir: str, section: Section, title: str,
                  preamble: Sequence[str] = ()) -> str:
  """Writes ``section.json`` and ``summary.md``; returns summary's path."""
  if section.verdict and section.verdict not in VERDICTS:
    raise ValueError(f"verdict {section.verdict!r} must be one of "
                     f"{VERDICTS}.")
  write_json(os.path.join(run_dir, "section.json"), section._asdict())
  text = render(section, title, preamble, level=1)
  return write_text(os.path.join(run_dir, "summary.md"), text)


def render(section: Section, title: str, preamble: Sequence[str] = (),
           level: int = 2, figure_dir: str = "") -> str:
  """Markdown of one section (summary.md, or a RESULTS.md section)."""
  h = "#" * level
  lines = [f"{h} {title}", ""]
  for p in preamble:
    if p:
      lines += [p, ""]
  if section.claim:
    lines += [f"**Claim.** {section.claim}", ""]
  if section.scope:
    lines += [f"**Settings the verdict counts.** {section.scope}.", ""]
  if section.verdict:
    lines += [f"**Verdict: {section.verdict}.** {section.evidence}", ""]
  if section.control_verdict:
    lines += [f"**Beyond a norm control: {section.control_verdict}.** "
              f"{section.control_evidence}", ""]
  for name, tbl in section.tables:
    if tbl:
      lines += [f"{h}# {name}", "", tbl, ""]
  for fig in section.figures:
    path = os.path.join(figure_dir, fig) if figure_dir else fig
    lines += [f"![{os.path.splitext(fig)[0]}]({path})", ""]
  return "\n".join(lines)


# --- Job results ---------------------------------------------------------


def metric_rows(results, experiment: str):
  """metrics.jsonl rows: one per (job, grid point, seed, evaluation)."""
  for r in results:
    h = r.history
    num_seeds = h["diverged_at"].shape[2]
    for g, point in enumerate(r.grid):
      for s in range(num_seeds):
        for e, samples in enumerate(h["samples"]):
          row = {"experiment": experiment, "job": r.job.id,
                 "axis": r.job.config.axis or None,
                 "axis_value": r.job.axis_value, "arm": r.job.arm,
                 **point, "seed": s, "samples": int(samples)}
          row.update({k: v[e, g, s] for k, v in h.items() if k != "samples"})
          yield row


def final(result, key: str = "test_accuracy", point: int = 0) -> np.ndarray:
  """The per-seed value of ``key`` at the last evaluation, shape ``(S,)``."""
  return np.asarray(result.history[key][-1, point], np.float64)


def summary_table(results, config: ml_collections.ConfigDict,
                  keys: Sequence[str] = ("test_accuracy",
                                         "online_accuracy")) -> str:
  """Per job and grid point: final metrics over the seeds that did not
  diverge, with CIs, and the number that diverged."""
  axis = config.axis.split(".")[-1] if config.axis else None
  fields = list(results[0].grid[0])
  keys = [k for k in keys if k in results[0].history]
  head = ([axis] if axis else []) + ["arm"] + fields + [
      f"final {k.replace('_', ' ')} [{stats.LEVEL:.0%} CI]" for k in keys] + [
          "diverged", "seeds"]
  rows = []
  for r in results:
    for g, point in enumerate(r.grid):
      ok = final(r, "diverged_at", g) < 0
      rows.append(([str(r.job.axis_value)] if axis else []) + [r.job.arm] +
                  [f"{point[k]:g}" for k in fields] +
                  [str(stats.interval(final(r, k, g)[ok])) for k in keys]
                  + [str(int((~ok).sum())), str(len(ok))])
  return table(head, rows)


def preamble(config: ml_collections.ConfigDict, command: str,
             results=()) -> list[str]:
  """The lines above a job run's section: data, seeds, statistics, command."""
  counts = sorted({r.job.config.num_samples for r in results} or
                  {config.num_samples})
  per_arm = ", ".join(sorted({f"{r.job.arm}: {r.job.config.num_samples}"
                              for r in results}))
  num_samples = (str(counts[0]) if len(counts) == 1 else
                 f"{counts[0]}-{counts[-1]} ({per_arm})")
  if config.get("task") == "memory":
    data = (f"Memory task: {num_samples} training sequences of "
            f"{config.memory.length} steps per seed, {config.batch_size} per "
            "BPTT step")
  else:
    data = (f"Dataset `{config.dataset}`"
            f"{' (validation split)' if config.validation else ''}, "
            f"{num_samples} samples per seed, batch size "
            f"{config.batch_size}")
  if config.get("split_per_seed"):
    data += "; every seed on its own train/test split"
  return [f"{data}; {config.seeds} paired seeds. Means over the seeds that "
          f"did not diverge, with {stats.LEVEL:.0%} Student-t CIs (n/a "
          f"below {stats.MIN_SEEDS} seeds).", f"Command: `{command}`" if command else ""]

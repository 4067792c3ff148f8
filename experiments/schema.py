"""The result schema every module shares: job results and report sections.

A leaf: it imports only ``experiments.config`` (for ``Job``), so the runner,
the analysis, the claims and the report can all use it without importing
one another.
"""

from __future__ import annotations

import collections
import copy
from typing import Any, NamedTuple

import numpy as np

from experiments import config as config_lib
from experiments.config import Job

VERDICTS = ("reproduced", "partly reproduced", "mixed", "contradicted",
            "not reproduced", "no verdict")  # experiments.analysis.RULE


class JobResult(NamedTuple):
  """A finished job: ``history[k]`` has shape ``(E, G, S, ...)``."""

  job: Job
  grid: list[dict[str, float]]  # The G sweep points (empty dicts if none).
  history: dict[str, np.ndarray]


class Section(NamedTuple):
  """What a run says about its claim: the unit every report renders."""

  claim: str  # One sentence; empty for runs that test no claim.
  scope: str  # Which settings the verdict counts.
  tables: list[tuple[str, str]]  # (title, markdown table)
  figures: list[str]  # File names in the run directory.
  verdict: str  # One of VERDICTS, or "" for runs that test no claim.
  evidence: str  # One line: the counts behind the verdict.
  # The same rule against the best non-plastic control ("" where the claim
  # declares no controls): "beyond a norm control".
  control_verdict: str = ""
  control_evidence: str = ""


def array(values: Any) -> np.ndarray:
  """A JSON list as an array; ``null`` (a non-finite number in strict JSON,
  ``experiments.rundir.write_json``) becomes NaN."""
  out = np.asarray(values)
  return np.asarray(values, np.float64) if out.dtype == object else out


def result_from_json(job: Job, saved: dict[str, Any]) -> JobResult:
  """The :class:`JobResult` of a ``jobs/<id>.json`` (KeyError, TypeError or
  ValueError if it is damaged)."""
  history = saved["history"]
  if not isinstance(history, dict):
    raise TypeError(f"history is a {type(history).__name__}, not a mapping")
  return JobResult(job, saved["grid"],
                   {k: array(v) for k, v in history.items()})


def result_to_json(result: JobResult, fingerprint: dict[str, Any]
                   ) -> dict[str, Any]:
  """What ``jobs/<id>.json`` holds: the job, its fingerprint, grid, history."""
  job = result.job
  return {"job": job.id, "axis_value": job.axis_value, "arm": job.arm,
          "fingerprint": fingerprint, "grid": result.grid,
          "history": {k: v.tolist() for k, v in result.history.items()}}


def merge_splits(results: list[JobResult], jobs: list[Job]) -> list[JobResult]:
  """Joins each (axis value, arm)'s split jobs along the seeds
  (``config.split_per_seed``).

  ``jobs`` are all the jobs of the run (``config.expand``): they say how many
  split jobs each group has, which differs between an arm (``seeds``) and its
  tuning arm (``tuning_seeds``). ``history["data_split"]`` says which split
  each seed trained on. A group with a split missing (an unfinished run) is
  left out, never half-paired; a job that is not split is kept as it is.
  """
  def group(job_id: str) -> str:
    return job_id.split(config_lib.SPLIT_TAG)[0]

  expected = collections.Counter(group(j.id) for j in jobs
                                 if config_lib.SPLIT_TAG in j.id)
  groups: dict[str, list[JobResult]] = {}
  out = []
  for r in results:
    if config_lib.SPLIT_TAG in r.job.id:
      groups.setdefault(group(r.job.id), []).append(r)
    else:
      out.append(r)
  for job_id, parts in groups.items():
    if len(parts) != expected.get(job_id):
      continue
    first = parts[0]
    history = {"samples": first.history["samples"]}
    for k in first.history:
      if k != "samples":
        history[k] = np.concatenate([p.history[k] for p in parts], axis=2)
    history["data_split"] = np.concatenate(
        [np.full(p.history["diverged_at"].shape, p.job.config.data_split)
         for p in parts], axis=2)
    cfg = copy.deepcopy(first.job.config)
    with cfg.unlocked():
      cfg.seeds, cfg.split_per_seed = cfg.seeds * len(parts), True
      cfg.seed, cfg.data_split = first.job.config.seed, 0
    out.append(JobResult(first.job._replace(id=job_id, config=cfg),
                         first.grid, history))
  return out

"""Which runner serves which experiment config, and what each one writes.

A runner has ``prepare(config)`` (validate everything and load data; raise a
user error before anything is written) and ``run(config, prepared, run_dir,
command) -> path of summary.md``. Configs choose one with ``config.runner``
(default ``classifier``, the shared MLP runner of ``ojax.experiment``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import jax
import ml_collections

from experiments import meta_plasticity
from experiments import recurrent_memory
from ojax import data as data_lib
from ojax import experiment
from ojax import report


class Runner(NamedTuple):
  prepare: Callable[[ml_collections.ConfigDict], Any]
  run: Callable[[ml_collections.ConfigDict, Any, str, str], str]


def _prepare_classifier(config):
  jobs = experiment.validate(config)
  return jobs, experiment.load_datasets(jobs)


def _run_classifier(config, prepared, run_dir: str, command: str) -> str:
  jobs, datasets = prepared
  lead = jax.process_index() == 0  # One host writes; all of them compute.
  if lead:
    os.makedirs(run_dir, exist_ok=True)
    report.write_config(run_dir, config)
  results = [experiment.run_job(job, run_dir, datasets) for job in jobs]
  if lead:
    report.write_metrics(run_dir, results, config.experiment)
    report.write_summary(run_dir, results, config, command)
  return os.path.join(run_dir, "summary.md")


RUNNERS: dict[str, Runner] = {
    "classifier": Runner(_prepare_classifier, _run_classifier),
    "recurrent_memory": Runner(recurrent_memory.prepare, recurrent_memory.run),
    "meta_plasticity": Runner(meta_plasticity.prepare, meta_plasticity.run),
}


def get(config: ml_collections.ConfigDict) -> Runner:
  name = config.get("runner", "classifier")
  if name not in RUNNERS:
    raise experiment.ConfigError(
        f"runner={name!r} is not known; runners: {', '.join(RUNNERS)}.")
  return RUNNERS[name]


def is_user_error(err: Exception) -> bool:
  """Errors that mean bad input (one line to the user), not a bug."""
  return isinstance(err, (ValueError, data_lib.DataUnavailableError))

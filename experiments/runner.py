"""Runs an experiment: validated jobs -> compiled runs -> a run directory.

Each (axis value, arm) job trains every (grid point, seed) pair in one
vmapped program of ``ojax.train.run``, sharded over the devices. Seeds are
paired: seed ``s`` gets the same initialization and sample order in every
job, so arms differ only by what the arm changes.

A finished job's result (``jobs/<id>.json``) is loaded, not recomputed, if
it holds the job's fingerprint; an unfinished one resumes from its latest
good checkpoint, to the numbers of an uninterrupted run (docs/running.md).
The run directory itself (lock, fingerprints, resume check, the one file
writer) is ``experiments.rundir``; the worker processes are
``experiments.pool``; the result schema is ``experiments.schema``. This
module runs the feedforward and recurrent
tasks; ``experiments.main`` hands task ``meta`` to
``experiments.tasks.meta_plasticity``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import analysis
from experiments import checkpoint
from experiments import claims
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import events
from experiments import pool
from experiments import progress
from experiments import report
from experiments import rundir
from experiments import schema
from experiments.config import ConfigError, Job
from experiments.schema import JobResult, merge_splits
from experiments.tasks import memory
from ojax import metrics as metrics_lib
from ojax import rules
from ojax import train

_log = logging.getLogger("ojax")
# Refused unless --allow_large: more memory than this share of the machine's,
# longer than this estimate, or deeper than this (compile time grows with it).
MAX_MEMORY_SHARE = 0.5
MAX_HOURS = 12.0
MAX_LAYERS = 200
ASSUMED_FLOPS = 2e9  # Per second, a batch-1 step on one CPU core (measured).
# A sweep's grid points train vmapped, as one wider step: bad_init's 150
# points of the reference net ran at 7.4x the one-point rate (1799 s on 2
# cores for an estimated 26,600 core-s). The estimate assumes up to this.
GRID_SPEEDUP = 7.0


# --- Size estimates --------------------------------------------------------


def estimate(job: Job, num_inputs: int, num_points: int,
             num_test: int = 1000) -> tuple[float, float]:
  """Rough peak (bytes, seconds on one core) of a job.

  Memory per (grid point, seed): the parameters ``copies`` times (params,
  gradients, updates; Adam's moments) plus the activations of one evaluation
  batch (twice, four times with diagnostics). Measured on deep_online depth
  2 with 500 and 1000 seeds: 1.8 and 3.2 MB per seed, estimated 2.4 and 4.1.
  Time: ``8 * params`` flops per sample (forward, backward, update) at
  :data:`ASSUMED_FLOPS`.
  """
  cfg = job.config
  diag = 4 if cfg.get("diagnostics") else 2
  if cfg.task == "memory":
    h, k = cfg.model.hidden, cfg.memory.delays
    params = h + h * h + h * k + k
    flops_per_sample = 6 * cfg.memory.length * (h * h + h * k)
    activations = (cfg.batch_size * cfg.memory.length * (h + k) * 2 +
                   cfg.memory.eval_batch * cfg.memory.eval_length * (h + k)
                   * diag)
  else:
    widths = (num_inputs,) + config_lib.hidden_widths(cfg.model) + (10,)
    params = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    flops_per_sample = 8 * params
    activations = (min(cfg.eval_batch_size, num_test) * sum(widths[1:]) *
                   diag)
  copies = 4 if cfg.optimizer == "adam" else 2
  memory_bytes = 4.0 * (params * copies + activations) * num_points
  seconds = flops_per_sample * cfg.num_samples * num_points / ASSUMED_FLOPS
  return memory_bytes, seconds


def core_seconds(job: Job, num_inputs: int, num_test: int = 1000) -> float:
  """A job's estimated seconds on one core, its grid points vmapped at up to
  :data:`GRID_SPEEDUP` times the one-point rate."""
  grid = len(config_lib.sweep_grid(job.config))
  _, seconds = estimate(job, num_inputs, grid * job.config.seeds, num_test)
  return seconds / min(grid, GRID_SPEEDUP)


def check_size(jobs: list[Job], num_inputs: int, allow_large: bool,
               num_test: int = 1000) -> None:
  """Refuses jobs far beyond this machine unless ``allow_large``.

  Bounds: a job's estimated memory above :data:`MAX_MEMORY_SHARE` of this
  machine's, a job deeper than :data:`MAX_LAYERS` layers, or all jobs
  together above :data:`MAX_HOURS` of compute on one core (a sweep's grid
  points at up to :data:`GRID_SPEEDUP` times the one-point rate).
  """
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  hours, peak = 0.0, 0.0
  for job in jobs:
    grid = len(config_lib.sweep_grid(job.config))
    mem, _ = estimate(job, num_inputs, grid * job.config.seeds, num_test)
    hours += core_seconds(job, num_inputs, num_test) / 3600
    peak = max(peak, mem)
    layers = (len(config_lib.hidden_widths(job.config.model))
              if job.config.task == "classifier" else 1)
    problem = (
        f"has {layers} layers (> {MAX_LAYERS}; compiling takes minutes)"
        if layers > MAX_LAYERS else
        f"needs about {mem / 2**30:.1f} GiB, more than "
        f"{MAX_MEMORY_SHARE:.0%} of this machine's {total / 2**30:.0f} GiB"
        if mem > MAX_MEMORY_SHARE * total else "")
    if problem and not allow_large:
      raise ConfigError(f"job {job.id} {problem}; pass --allow_large to run "
                        "it anyway.")
  if hours > MAX_HOURS and not allow_large:
    raise ConfigError(f"the jobs need an estimated {hours:.0f} h of compute "
                      f"on one core (> {MAX_HOURS:g} h); pass --allow_large "
                      "to run them anyway.")
  _log.info("estimated size: %.2f h of compute on one core, %.2f GiB for the "
            "largest job", hours, peak / 2**30)


# --- Jobs --------------------------------------------------------------------


def _data_key(cfg: ml_collections.ConfigDict) -> tuple[Any, ...]:
  if cfg.task == "memory":
    return ("memory", cfg.seed, cfg.memory.eval_batch,
            cfg.memory.eval_length, cfg.memory.delays)
  return (cfg.dataset, cfg.data_dir, cfg.validation, cfg.get("data_split", 0))


def load_data(jobs: list[Job]) -> dict[Any, Any]:
  """Loads each distinct dataset the jobs need, once."""
  out = {}
  for job in jobs:
    cfg = job.config
    key = _data_key(cfg)
    if key in out:
      continue
    if cfg.task == "memory":
      out[key] = memory.memory_batch(
          jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 2),
          cfg.memory.eval_batch, cfg.memory.eval_length, cfg.memory.delays)
    else:
      try:
        out[key] = data_lib.load(
            cfg.dataset, data_dir=cfg.data_dir or None, download=cfg.download,
            validation=cfg.validation, split_seed=cfg.get("data_split", 0))
      except (ValueError, data_lib.DataUnavailableError) as err:
        raise ConfigError(str(err)) from None
  return out


# Fields that change a job's numbers but not its compiled program: jobs that
# differ only in them (e.g. one job per seed and split) share one program.
NOT_IN_PROGRAM = ("seed", "seeds", "data_split", "split_per_seed")
_programs: dict[str, Any] = {}


def _task(cfg, data, with_oja: bool):
  """The model, transform, loop task, example input and loop data of a job.

  The first three are made once per program (see :data:`NOT_IN_PROGRAM`), so
  that ``ojax.train``'s compiled functions are reused across such jobs.
  """
  fields = {k: v for k, v in json.loads(cfg.to_json_best_effort()).items()
            if k not in NOT_IN_PROGRAM}
  key = json.dumps([fields, with_oja, getattr(data, "num_classes", None)],
                   sort_keys=True)
  if key not in _programs:
    _programs[key] = _make_task(cfg, data, with_oja)
  model, tx, task = _programs[key]
  if cfg.task == "memory":
    return model, tx, task, memory.example_input(), data
  return model, tx, task, data.input_dim, train.ClassifierData(
      data.train_x, data.train_y, data.test_x, data.test_y)


def _make_task(cfg, data, with_oja: bool):
  tx = config_lib.make_optimizer(cfg, with_oja=with_oja)
  if cfg.task == "memory":
    model = config_lib.make_model(cfg, cfg.memory.delays)
    task = memory.memory_task(model, tx, batch_size=cfg.batch_size,
                              length=cfg.memory.length,
                              diagnostics=cfg.diagnostics)
    return model, tx, task
  model = config_lib.make_model(cfg, data.num_classes)
  diagnostics = (metrics_lib.layer_diagnostics(model) if cfg.diagnostics
                 else None)
  task = train.classifier_task(model, tx, batch_size=cfg.batch_size,
                               eval_batch_size=cfg.eval_batch_size,
                               diagnostics=diagnostics)
  return model, tx, task


def _with_grid(states: train.TrainState, grid: list[dict[str, float]],
               num_seeds: int, base_gain: float) -> train.TrainState:
  """Sets each point's swept rates in the optimizer state and scales init."""
  rates = {name: np.repeat([g[field] for g in grid], num_seeds)
           for field, name in config_lib.SWEEPABLE.items()
           if name is not None and field in grid[0]}
  opt_state = rules.with_rates(states.opt_state, **rates)
  params, model_state = states.params, states.model_state
  if "model_gain" in grid[0]:
    scale = jnp.asarray(np.repeat([g["model_gain"] for g in grid], num_seeds)
                        / base_gain, jnp.float32)

    def rescale(path, x):
      if jax.tree_util.keystr(path).endswith("['kernel']") and x.ndim == 3:
        return x * scale[:, None, None]
      return x

    params = jax.tree_util.tree_map_with_path(rescale, params)
    model_state = jax.tree_util.tree_map_with_path(rescale, model_state)
  return states._replace(params=params, opt_state=opt_state,
                         model_state=model_state)


def _unpad(tree: Any, n: int) -> Any:
  """The first ``n`` (grid point, seed) entries: without device padding."""
  return jax.tree.map(lambda x: x[:n], tree)


def _unpad_history(history: list[dict[str, Any]], n: int
                   ) -> list[dict[str, Any]]:
  return [{k: v if k == "samples" else np.asarray(v)[:n]
           for k, v in h.items()} for h in history]


def _history_arrays(history, num_points, num_grid, num_seeds):
  # Evaluations restored from a checkpoint have no padding; later ones
  # have this run's (which depends on the number of devices).
  stacked = train.stack_history(_unpad_history(history, num_points))
  out = {"samples": stacked.pop("samples")}
  for k, v in stacked.items():
    out[k] = v.reshape(v.shape[0], num_grid, num_seeds, *v.shape[2:])
  return out


def run_job(job: Job, run_dir: str, datasets: dict[Any, Any],
            index: Optional[int] = None,
            tensorboard: bool = True) -> JobResult:
  """Trains one job (all grid points and seeds), checkpointing as it goes.

  Reports its samples to the run's progress tracker as item ``index``
  (``experiments.progress``); with ``tensorboard`` writes its curves as
  TensorBoard event files once it is finished (``experiments.events``;
  a job finished earlier gets those it lacks). In a worker of a run that
  has stopped, raises ``progress.Stopped`` (at once, or after a chunk).
  """
  progress.check()
  cfg = job.config
  result_path, ckpt_dir, _ = rundir.job_paths(run_dir, job)
  fp = config_lib.fingerprint(cfg)
  lead = jax.process_index() == 0
  # What the run checked before it started, again for this job's files now:
  # a stored fingerprint of another config is refused (ConfigError).
  rundir.check_resume(run_dir, [job], restart=False)
  if os.path.exists(result_path):
    saved = rundir.read_json(result_path, warn=False)
    try:  # Only a result with this job's fingerprint is this job's result.
      if not isinstance(saved, dict) or saved.get("fingerprint") != fp:
        raise ValueError("no fingerprint of this job")
      result = schema.result_from_json(job, saved)
      _log.info("%s: finished earlier, loaded %s", job.id, result_path)
      progress.resume(index, cfg.num_samples)
      if tensorboard and lead:
        events.write(run_dir, result, only_missing=True)
      return result
    except (KeyError, TypeError, ValueError):
      _log.warning("%s is damaged; rebuilding it from the job's last good "
                   "checkpoint", result_path)
  data = datasets[_data_key(cfg)]
  grid = config_lib.sweep_grid(cfg)
  model, tx, task, example, loop_data = _task(cfg, data, "oja_lr" in grid[0])
  num_points = len(grid) * cfg.seeds
  keys = jnp.tile(jax.random.split(jax.random.PRNGKey(cfg.seed), cfg.seeds),
                  (len(grid), 1))
  states = train.init_states(model, tx, keys, example)
  states = _with_grid(states, grid, cfg.seeds,
                      cfg.model.get("gain", 1.0))
  os.makedirs(ckpt_dir, exist_ok=True)
  if lead:
    rundir.write_fingerprint(run_dir, job)
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  try:
    start = ckpt.restore(states)
    saved = [None]  # The last step written or restored, known to be good.
    if start is not None:
      grid_points = [0] + train.chunk_ends(cfg.num_samples, cfg.eval_every)
      if start.samples_done not in grid_points:
        raise ConfigError(
            f"job {job.id}: its checkpoint at {start.samples_done} samples is "
            f"not an evaluation point of this config (eval_every="
            f"{cfg.eval_every}, num_samples={cfg.num_samples}); use a new "
            "--workdir, or --restart to discard it.")
      _log.info("%s: resuming at %d samples", job.id, start.samples_done)
      progress.resume(index, start.samples_done)
      saved[0] = start.samples_done
      start = start._replace(states=train.shard(start.states, num_points))
    else:
      start = train.shard(states, num_points)

    def save(progress: train.Progress) -> None:
      ckpt.save(progress._replace(
          states=_unpad(progress.states, num_points),
          history=_unpad_history(progress.history, num_points)))
      saved[0] = progress.samples_done

    def on_chunk(now: train.Progress) -> None:
      progress.report(index, now.samples_done)
      if (cfg.checkpoint_every and
          now.samples_done % cfg.checkpoint_every == 0 and
          now.samples_done < cfg.num_samples):
        save(now)

    final = train.run(task, start, loop_data, num_samples=cfg.num_samples,
                      eval_every=cfg.eval_every, on_chunk=on_chunk,
                      log_prefix=f"{job.id}: ")
    if saved[0] != final.samples_done:
      save(final)
  finally:
    ckpt.close()
  history = _history_arrays(final.history, num_points, len(grid), cfg.seeds)
  result = JobResult(job, grid, history)
  if lead:
    os.makedirs(os.path.dirname(result_path), exist_ok=True)
    rundir.write_json(result_path, schema.result_to_json(result, fp),
                      indent=None)
    if tensorboard:
      events.write(run_dir, result)
  return result


# --- Experiments -------------------------------------------------------------


class Prepared(NamedTuple):
  jobs: list[Job]
  data: dict[Any, Any]


def prepare(config: ml_collections.ConfigDict, cli_fields=(),
            allow_large: bool = False) -> Prepared:
  """Validates everything and loads the data; raises ``ConfigError``."""
  jobs = config_lib.validate(config, cli_fields)
  data = load_data(jobs)
  sets = [d for d in data.values() if hasattr(d, "input_dim")]
  check_size(jobs, sets[0].input_dim if sets else 1, allow_large,
             len(sets[0].test_y) if sets else 1000)
  return Prepared(jobs, data)


def jobs_of(config: ml_collections.ConfigDict, prepared: Prepared
            ) -> list[Job]:
  """The jobs whose results and checkpoints a run directory holds."""
  del config  # The same signature as meta_plasticity.jobs_of.
  return list(prepared.jobs)


def _tracker(jobs: list[Job], run_dir: str,
             data: dict[Any, Any]) -> progress.Tracker:
  """The run's progress: jobs weighted by their size estimates, those
  finished earlier counted as done."""
  items = []
  for job in jobs:
    cfg, d = job.config, data[_data_key(job.config)]
    items.append(progress.Item(
        cfg.num_samples, len(config_lib.sweep_grid(cfg)) * cfg.seeds,
        core_seconds(job, getattr(d, "input_dim", 1),
                     len(getattr(d, "test_y", ())) or 1000)))
  tracker = progress.Tracker(items)
  for i, job in enumerate(jobs):
    if os.path.exists(rundir.job_paths(run_dir, job)[0]):
      tracker.complete(i)
  return tracker


def run_jobs(jobs: list[Job], run_dir: str, data: dict[Any, Any],
             workers: int = 1, tensorboard: bool = True) -> list[JobResult]:
  """Runs jobs in order, or spread over ``workers`` pinned processes.

  Each worker is a fresh process (spawned) pinned to one core, with
  single-threaded XLA:CPU (``experiments.pool``). A job is computed the same way in any worker, so the results
  are those of ``workers=1`` in a process pinned to one core with the same
  flags (the command line pins itself then): XLA:CPU's code can depend on
  how many cores a process sees. ``workers=0``: one per core. Progress is
  shown while they run (``experiments.progress``); ``tensorboard``: each
  job writes its TensorBoard event files.
  """
  # A worker gets the one dataset its job needs.
  calls = [pool.Call(run_job, (job, run_dir, {
      _data_key(job.config): data[_data_key(job.config)]}, i, tensorboard), i,
                     f"job {job.id}") for i, job in enumerate(jobs)]
  with _tracker(jobs, run_dir, data) as tracker:
    return pool.run(calls, tracker, workers, "worker", in_process=(
        workers == 1 or jax.process_count() > 1))


def run(config: ml_collections.ConfigDict, prepared: Prepared, run_dir: str,
        command: str, restart: bool = False, workers: int = 1,
        tensorboard: bool = True) -> str:
  """Runs (or resumes) every job; writes the run directory; returns summary.md.

  Nothing is written before the resume check has passed. ``tensorboard``:
  also write TensorBoard event files (``experiments.events``).
  """
  rundir.check_resume(run_dir, prepared.jobs, restart)
  lead = jax.process_index() == 0  # One host writes; all of them compute.
  if lead:
    report.write_config(run_dir, config)
  results = merge_splits(run_jobs(prepared.jobs, run_dir, prepared.data,
                                  workers, tensorboard), prepared.jobs)
  if lead:
    write_run(run_dir, results, config, command)
  return os.path.join(run_dir, "summary.md")


def write_run(run_dir: str, results: list[JobResult],
              config: ml_collections.ConfigDict, command: str = "") -> str:
  """metrics.jsonl, figures, section.json and summary.md of a job run."""
  rundir.write_jsonl(os.path.join(run_dir, "metrics.jsonl"),
                     report.metric_rows(results, config.experiment))
  section = claims.section(analysis.from_results(run_dir, config, results))
  return report.write_section(run_dir, section, config.experiment,
                              report.preamble(config, command, results))

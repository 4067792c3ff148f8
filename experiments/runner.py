"""Runs an experiment: validated jobs -> compiled runs -> a run directory.

Each (axis value, arm) job trains every (grid point, seed) pair in one
vmapped program of ``ojax.train.run``, sharded over the devices. Seeds are
paired: seed ``s`` gets the same initialization and sample order in every
job, so arms differ only by what the arm changes.

Guarantees about a run directory (docs/running.md):

- A job stores a fingerprint of its resolved config (every field that changes
  its numbers) beside its checkpoints and in its result. Running again on the
  same directory skips finished jobs and resumes unfinished ones from their
  latest checkpoint (the numbers of an uninterrupted run) only when the
  fingerprint is the same; otherwise it stops with one line naming the fields
  that differ, before anything is written.
- One process at a time: a lock file; a second process exits at once.
- Without ``--workdir`` every run gets a fresh directory, never reused.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import shutil
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import checkpoint
from experiments import config as config_lib
from experiments import data as data_lib
from experiments.config import ConfigError, Job
from experiments.tasks import memory
from ojax import metrics as metrics_lib
from ojax import train

_log = logging.getLogger("ojax")
# Refused unless --allow_large: more memory than this share of the machine's,
# longer than this estimate, or deeper than this (compile time grows with it).
MAX_MEMORY_SHARE = 0.5
MAX_HOURS = 12.0
MAX_LAYERS = 200
ASSUMED_FLOPS = 2e9  # Per second, a batch-1 step on one CPU core (measured).


class JobResult(NamedTuple):
  """A finished job: ``history[k]`` has shape ``(E, G, S, ...)``."""

  job: Job
  grid: list[dict[str, float]]  # The G sweep points (empty dicts if none).
  history: dict[str, np.ndarray]


# --- Run directories -------------------------------------------------------


class Workdir(NamedTuple):
  path: str
  lock: Any  # The open lock file; closing it releases the lock.


def open_workdir(path: Optional[str], experiment: str) -> Workdir:
  """Creates (or reopens) a run directory and locks it for this process.

  Without ``path`` a fresh ``runs/<experiment>/<timestamp>[-n]`` is created
  atomically (``os.mkdir`` fails if it exists), so two runs never share one.
  """
  if path is None:
    root = os.path.join("runs", experiment)
    os.makedirs(root, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
      path = os.path.join(root, stamp if n == 1 else f"{stamp}-{n}")
      try:
        os.mkdir(path)
        break
      except FileExistsError:
        continue
  elif os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir={path} is an existing file; give a "
                      "directory.")
  else:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as err:
      raise ConfigError(f"--workdir={path} cannot be created: "
                        f"{err.strerror}.") from None
  if not os.access(path, os.W_OK):
    raise ConfigError(f"--workdir={path} is not writable.")
  lock = open(os.path.join(path, ".lock"), "a+")
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock.seek(0)
    owner = lock.read().strip() or "another process"
    lock.close()
    raise ConfigError(f"--workdir={path} is in use by {owner}; wait for it "
                      "to finish or choose another --workdir.") from None
  lock.seek(0)
  lock.truncate()
  lock.write(f"pid {os.getpid()}")
  lock.flush()
  return Workdir(path, lock)


def _job_paths(run_dir: str, job: Job) -> tuple[str, str, str]:
  ckpt = os.path.join(run_dir, "checkpoints", job.id)
  return (os.path.join(run_dir, "jobs", f"{job.id}.json"), ckpt,
          os.path.join(ckpt, "fingerprint.json"))


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  keys = sorted(set(old) | set(new))
  return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
          for k in keys if old.get(k) != new.get(k)]


def check_resume(run_dir: str, jobs: list[Job], restart: bool) -> None:
  """Refuses to reuse a job's results or checkpoints under another config.

  With ``restart`` the stored results, checkpoints and reports are removed.
  A run without jobs (meta_plasticity) is one job named ``run``, whose
  fingerprint sits in ``checkpoints/run/fingerprint.json``.
  """
  if restart:
    for name in os.listdir(run_dir):
      if name == ".lock":
        continue
      target = os.path.join(run_dir, name)
      if os.path.isdir(target):
        shutil.rmtree(target)
      elif os.path.exists(target):
        os.remove(target)
    return
  for job in jobs:
    fp = config_lib.fingerprint(job.config)
    result_path, _, fp_path = _job_paths(run_dir, job)
    for path, pick in ((fp_path, lambda d: d),
                       (result_path, lambda d: d.get("fingerprint"))):
      if not os.path.exists(path):
        continue
      stored = checkpoint.read_json(path)
      old = pick(stored) if isinstance(stored, dict) else None
      if old is None:
        continue  # Damaged: rebuilt from checkpoints or rerun.
      diff = _differences(old, fp)
      if diff:
        raise ConfigError(
            f"--workdir={run_dir} holds job {job.id} run with another config "
            f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); use "
            "a new --workdir, or --restart to discard the old results.")


# --- Size estimates --------------------------------------------------------


def estimate(job: Job, num_inputs: int, num_points: int) -> tuple[float, float]:
  """Rough (bytes, seconds) of a job, from its parameter count."""
  cfg = job.config
  if cfg.task == "memory":
    h, k = cfg.model.hidden, cfg.memory.delays
    params = h + h * h + h * k + k
    flops_per_sample = 6 * cfg.memory.length * (h * h + h * k)
  else:
    widths = (num_inputs,) + config_lib.hidden_widths(cfg.model) + (10,)
    params = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    flops_per_sample = 8 * params
  copies = 4 if cfg.optimizer == "adam" else 2  # params, updates, moments
  memory_bytes = 4.0 * params * copies * num_points
  seconds = flops_per_sample * cfg.num_samples * num_points / ASSUMED_FLOPS
  return memory_bytes, seconds


def check_size(jobs: list[Job], num_inputs: int, allow_large: bool) -> None:
  """Refuses jobs far beyond this machine unless ``allow_large``."""
  total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  hours = 0.0
  for job in jobs:
    points = len(config_lib.sweep_grid(job.config)) * job.config.seeds
    mem, sec = estimate(job, num_inputs, points)
    hours += sec / 3600
    layers = (len(config_lib.hidden_widths(job.config.model))
              if job.config.task == "classifier" else 1)
    problem = (
        f"needs about {mem / 2**30:.1f} GiB, more than "
        f"{MAX_MEMORY_SHARE:.0%} of this machine's {total / 2**30:.0f} GiB"
        if mem > MAX_MEMORY_SHARE * total else
        f"has {layers} layers (> {MAX_LAYERS}; compiling takes minutes)"
        if layers > MAX_LAYERS else "")
    if problem and not allow_large:
      raise ConfigError(f"job {job.id} {problem}; pass --allow_large to run "
                        "it anyway.")
  if hours > MAX_HOURS and not allow_large:
    raise ConfigError(f"the jobs need an estimated {hours:.0f} h of compute "
                      f"(> {MAX_HOURS:g} h); pass --allow_large to run them "
                      "anyway.")
  _log.info("estimated compute: %.2f h on one core", hours)


# --- Jobs --------------------------------------------------------------------


def _data_key(cfg: ml_collections.ConfigDict) -> tuple[Any, ...]:
  if cfg.task == "memory":
    return ("memory", cfg.seed, cfg.memory.eval_batch,
            cfg.memory.eval_length, cfg.memory.delays)
  return (cfg.dataset, cfg.data_dir, cfg.validation)


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
            validation=cfg.validation)
      except ValueError as err:
        raise ConfigError(str(err)) from None
  return out


def _task(cfg, data, with_oja: bool):
  """The model, transform, loop task, example input and loop data of a job."""
  tx = config_lib.make_optimizer(cfg, with_oja=with_oja)
  if cfg.task == "memory":
    model = config_lib.make_model(cfg, cfg.memory.delays)
    task = memory.memory_task(model, tx, batch_size=cfg.batch_size,
                              length=cfg.memory.length,
                              diagnostics=cfg.diagnostics)
    return model, tx, task, memory.example_input(), data
  model = config_lib.make_model(cfg, data.num_classes)
  diagnostics = (metrics_lib.layer_diagnostics(model) if cfg.diagnostics
                 else None)
  task = train.classifier_task(model, tx, batch_size=cfg.batch_size,
                               eval_batch_size=cfg.eval_batch_size,
                               diagnostics=diagnostics)
  return model, tx, task, data.input_dim, train.ClassifierData(
      data.train_x, data.train_y, data.test_x, data.test_y)


def _with_grid(states: train.TrainState, grid: list[dict[str, float]],
               num_seeds: int, base_gain: float) -> train.TrainState:
  """Sets each point's swept rates in the optimizer state and scales init."""
  opt_state = states.opt_state
  hyper = dict(opt_state.hyperparams)
  for field, name in config_lib.SWEEPABLE.items():
    if name is None or field not in grid[0]:
      continue
    values = np.repeat([g[field] for g in grid], num_seeds)
    hyper[name] = jnp.asarray(values, hyper[name].dtype)
  opt_state = opt_state._replace(hyperparams=hyper)
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
  return jax.tree.map(lambda x: x[:n], tree)


def _history_arrays(history, num_points, num_grid, num_seeds):
  stacked = train.stack_history(history)
  out = {"samples": stacked.pop("samples")}
  for k, v in stacked.items():
    v = v[:, :num_points]
    out[k] = v.reshape(v.shape[0], num_grid, num_seeds, *v.shape[2:])
  return out


def _result_from_json(job: Job, saved: dict[str, Any]) -> JobResult:
  return JobResult(job, saved["grid"],
                   {k: np.asarray(v) for k, v in saved["history"].items()})


def run_job(job: Job, run_dir: str, datasets: dict[Any, Any]) -> JobResult:
  """Trains one job (all grid points and seeds), checkpointing as it goes."""
  cfg = job.config
  result_path, ckpt_dir, fp_path = _job_paths(run_dir, job)
  fp = config_lib.fingerprint(cfg)
  if os.path.exists(result_path):
    saved = checkpoint.read_json(result_path)
    if saved is not None:
      _log.info("%s: finished earlier, loaded %s", job.id, result_path)
      return _result_from_json(job, saved)
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
  if jax.process_index() == 0:
    checkpoint.write_json_atomic(fp_path, fp)
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  start = ckpt.restore(states)
  if start is not None:
    _log.info("%s: resuming at %d samples", job.id, start.samples_done)
    start = start._replace(states=train.shard(start.states, num_points))
  else:
    start = train.shard(states, num_points)

  def save(progress: train.Progress) -> None:
    ckpt.save(progress._replace(states=_unpad(progress.states, num_points)))

  def on_chunk(progress: train.Progress) -> None:
    if (cfg.checkpoint_every and
        progress.samples_done % cfg.checkpoint_every == 0 and
        progress.samples_done < cfg.num_samples):
      save(progress)

  final = train.run(task, start, loop_data, num_samples=cfg.num_samples,
                    eval_every=cfg.eval_every, on_chunk=on_chunk,
                    log_prefix=f"{job.id}: ")
  if ckpt.latest_step() != final.samples_done:
    save(final)
  ckpt.close()
  history = _history_arrays(final.history, num_points, len(grid), cfg.seeds)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(result_path), exist_ok=True)
    checkpoint.write_json_atomic(result_path, {
        "job": job.id, "axis_value": job.axis_value, "arm": job.arm,
        "fingerprint": fp, "grid": grid,
        "history": {k: v.tolist() for k, v in history.items()}})
  return JobResult(job, grid, history)


# --- Experiments -------------------------------------------------------------


class Prepared(NamedTuple):
  jobs: list[Job]
  data: dict[Any, Any]


def prepare(config: ml_collections.ConfigDict, cli_fields=(),
            allow_large: bool = False) -> Any:
  """Validates everything and loads the data; raises ``ConfigError``."""
  if config.get("task") == "meta":
    from experiments.tasks import meta_plasticity  # pylint: disable=g-import-not-at-top
    return meta_plasticity.prepare(config)
  jobs = config_lib.validate(config, cli_fields)
  data = load_data(jobs)
  inputs = [d.input_dim for d in data.values() if hasattr(d, "input_dim")]
  check_size(jobs, inputs[0] if inputs else 1, allow_large)
  return Prepared(jobs, data)


def run(config: ml_collections.ConfigDict, prepared: Any, run_dir: str,
        command: str, restart: bool = False) -> str:
  """Runs (or resumes) every job; writes the run directory; returns summary.md.

  Nothing is written before the resume check has passed.
  """
  from experiments import report  # pylint: disable=g-import-not-at-top
  if config.get("task") == "meta":
    from experiments.tasks import meta_plasticity  # pylint: disable=g-import-not-at-top
    job = Job("run", None, "", config)
    check_resume(run_dir, [job], restart)
    fp_path = _job_paths(run_dir, job)[2]
    os.makedirs(os.path.dirname(fp_path), exist_ok=True)
    checkpoint.write_json_atomic(fp_path, config_lib.fingerprint(config))
    return meta_plasticity.run(config, prepared, run_dir, command)
  check_resume(run_dir, prepared.jobs, restart)
  lead = jax.process_index() == 0  # One host writes; all of them compute.
  if lead:
    report.write_config(run_dir, config)
  results = [run_job(job, run_dir, prepared.data) for job in prepared.jobs]
  if lead:
    report.write_run(run_dir, results, config, command)
  return os.path.join(run_dir, "summary.md")

"""The shared experiment runner: config -> jobs -> compiled runs -> results.

An experiment config names a base setting, a set of *arms* (overrides such as
``{"oja_lr": 0.0}`` for plain backprop), an optional *axis* (one field and the
values it takes, e.g. ``model.depth`` over ``(2, 5, 10)``) and an optional
*sweep* grid over the fields that can be vmapped (``lr``, ``oja_lr``,
``model.gain``). Each (axis value, arm) is a *job*: one compiled program that
trains every (grid point, seed) pair at once, vmapped, sharded over the local
devices. Seeds are paired: seed ``s`` gets the same initialization and sample
order in every job, so arms differ only by what the arm changes.

Jobs checkpoint with orbax every ``checkpoint_every`` samples. Running again
with the same run directory skips finished jobs and resumes the unfinished
one from its latest checkpoint, giving the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
from typing import Any, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ojax import checkpoint
from ojax import data as data_lib
from ojax import factory
from ojax import metrics as metrics_lib
from ojax import train
from ojax.factory import ConfigError

SWEEPABLE = {"lr": "learning_rate", "oja_lr": "oja_learning_rate",
             "model_gain": None}


class Job(NamedTuple):
  """One compiled run: an axis value and an arm, with its resolved config."""

  id: str
  axis_value: Any
  arm: str
  config: ml_collections.ConfigDict


class JobResult(NamedTuple):
  """A finished job: ``history[k]`` has shape ``(E, G, S, ...)``."""

  job: Job
  grid: list[dict[str, float]]  # The G sweep points (empty dicts if none).
  history: dict[str, np.ndarray]


def _get(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
  node = cfg
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"config field {dotted!r} does not exist; fields are "
                        f"{', '.join(sorted(_flat_fields(cfg)))}.")
    node = node[part]
  return node


def _set(cfg: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  _get(cfg, dotted)
  *parents, leaf = dotted.split(".")
  node = cfg
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[leaf] = value


def _flat_fields(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict) and k not in ("arms", "sweep"):
      out += _flat_fields(v, f"{prefix}{k}.")
    else:
      out.append(prefix + k)
  return out


def _apply_overrides(cfg, overrides, prefix: str = "") -> None:
  for k, v in overrides.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      _apply_overrides(cfg, v, f"{prefix}{k}.")
    else:
      _set(cfg, prefix + k, v)


def _slug(value: Any) -> str:
  return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(value)).strip("_")


def expand(config: ml_collections.ConfigDict) -> list[Job]:
  """The jobs of ``config``: every axis value times every arm."""
  arms = dict(config.arms) if config.arms else {"default": {}}
  if config.get("select_arms"):
    chosen = [a.strip() for a in config.select_arms.split(",") if a.strip()]
    for arm in chosen:
      if arm not in arms:
        raise ConfigError(f"select_arms names {arm!r}; arms are "
                          f"{', '.join(arms)}.")
    arms = {a: arms[a] for a in chosen}
  axis_values = tuple(config.axis_values) if config.axis else (None,)
  if config.axis and not axis_values:
    raise ConfigError(f"axis={config.axis!r} needs axis_values, e.g. "
                      "--config.axis_values='(2, 5)'.")
  jobs, seen = [], set()
  for value in axis_values:
    for arm, overrides in arms.items():
      cfg = copy.deepcopy(config)
      with cfg.unlocked():
        cfg.arms, cfg.sweep = ml_collections.ConfigDict(), config.sweep
      if config.axis:
        _set(cfg, config.axis, value)
      _apply_overrides(cfg, overrides)
      for field in config.sweep:  # A swept field overrides the arms' values.
        if config.sweep[field]:
          _set(cfg, field.replace("model_", "model."), config.sweep[field][0])
      fingerprint = cfg.to_json_best_effort(sort_keys=True)
      if fingerprint in seen:  # Arms that differ only in swept fields.
        continue
      seen.add(fingerprint)
      prefix = f"{config.axis.split('.')[-1]}={_slug(value)}-" if (
          config.axis) else ""
      jobs.append(Job(prefix + _slug(arm), value, arm, cfg))
  return jobs


def sweep_grid(config: ml_collections.ConfigDict) -> list[dict[str, float]]:
  """The product of the non-empty ``config.sweep`` value lists."""
  fields = {k: tuple(v) for k, v in config.sweep.items() if v}
  for k, values in fields.items():
    if k not in SWEEPABLE:
      raise ConfigError(f"sweep.{k} cannot be swept in one compiled call; "
                        f"sweepable: {', '.join(SWEEPABLE)}. Use axis for "
                        "fields that change shapes.")
    for v in values:
      factory.check_number(f"sweep.{k}", v, zero=(k == "oja_lr"))
  return [dict(zip(fields, combo)) for combo in itertools.product(
      *fields.values())] or [{}]


def _check_top(config: ml_collections.ConfigDict) -> None:
  factory.one_of("dataset", config.dataset, data_lib.DATASETS)
  for field in ("seeds", "num_samples", "eval_every", "batch_size",
                "eval_batch_size"):
    factory.check_number(field, config[field], integer=True)
  for field in ("seed", "checkpoint_every", "validation"):
    factory.check_number(field, config[field], integer=True, zero=True)
  train.check_chunks(config.num_samples, config.eval_every, config.batch_size)
  if config.checkpoint_every % config.eval_every:
    raise ConfigError(f"checkpoint_every={config.checkpoint_every} must be a "
                      f"multiple of eval_every={config.eval_every} (or 0).")


def validate(config: ml_collections.ConfigDict) -> list[Job]:
  """Checks every job of ``config``; raises ``ConfigError`` on a bad value."""
  if config.arms and config.reference_arm not in config.arms:
    raise ConfigError(f"reference_arm={config.reference_arm!r} is not an arm; "
                      f"arms are {', '.join(config.arms)}.")
  base = Job("base", None, "", config)  # Fields no arm overrides count too.
  jobs = expand(config)
  for job in [base] + jobs:
    _check_top(job.config)
    factory.make_model(job.config.model, 10)
    factory.make_optimizer(job.config)
    sweep_grid(job.config)
  return jobs


def _with_grid(states: train.TrainState, grid: list[dict[str, float]],
               num_seeds: int, base_gain: float) -> train.TrainState:
  """Sets each point's swept rates in the optimizer state and scales init."""
  opt_state = states.opt_state
  hyper = dict(opt_state.hyperparams)
  for field, name in SWEEPABLE.items():
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


def _shard(tree: Any, num_points: int) -> Any:
  """Pads the point axis to a multiple of the device count and shards it.

  The mesh spans ``jax.devices()``: every local device, and every device of
  every host after ``jax.distributed.initialize()``. Padded points repeat the
  last point; their results are dropped.
  """
  devices = jax.devices()
  pad = -num_points % len(devices)
  if pad:
    tree = jax.tree.map(
        lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, 0)]), tree)
  if len(devices) == 1:
    return tree
  mesh = jax.sharding.Mesh(np.array(devices), ("points",))
  sharding = jax.sharding.NamedSharding(mesh,
                                        jax.sharding.PartitionSpec("points"))

  def put(x):  # Each host supplies the shards its own devices hold.
    x = np.asarray(x) if jax.process_count() > 1 else x
    if jax.process_count() > 1:
      return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)


def _history_arrays(history, num_points, num_grid, num_seeds):
  stacked = train.stack_history(history)
  out = {"samples": stacked.pop("samples")}
  for k, v in stacked.items():
    v = v[:, :num_points]
    out[k] = v.reshape(v.shape[0], num_grid, num_seeds, *v.shape[2:])
  return out


def _data_key(cfg: ml_collections.ConfigDict) -> tuple[Any, ...]:
  return (cfg.dataset, cfg.data_dir, cfg.validation)


def load_datasets(jobs: list[Job]) -> dict[Any, data_lib.Dataset]:
  """Loads each distinct dataset the jobs need, once."""
  datasets = {}
  for job in jobs:
    cfg = job.config
    if _data_key(cfg) not in datasets:
      datasets[_data_key(cfg)] = data_lib.load(
          cfg.dataset, data_dir=cfg.data_dir or None, download=cfg.download,
          validation=cfg.validation)
  return datasets


def run_job(job: Job, run_dir: str,
            datasets: Optional[dict[Any, data_lib.Dataset]] = None
            ) -> JobResult:
  """Trains one job (all grid points and seeds), checkpointing as it goes."""
  cfg = job.config
  result_path = os.path.join(run_dir, "jobs", f"{job.id}.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      saved = json.load(f)
    logging.info("%s: finished earlier, loaded %s", job.id, result_path)
    return JobResult(job, saved["grid"],
                     {k: np.asarray(v) for k, v in saved["history"].items()})
  datasets = load_datasets([job]) if datasets is None else datasets
  data = datasets[_data_key(cfg)]
  grid = sweep_grid(cfg)
  model = factory.make_model(cfg.model, data.num_classes)
  tx = factory.make_optimizer(cfg, with_oja="oja_lr" in grid[0])
  keys = jax.random.split(jax.random.PRNGKey(cfg.seed), cfg.seeds)
  keys = jnp.tile(keys, (len(grid), 1))
  states = train.init_states(model, tx, keys, data.input_dim)
  states = _with_grid(states, grid, cfg.seeds, cfg.model.gain)
  num_points = len(grid) * cfg.seeds
  states = _shard(states, num_points)
  ckpt = checkpoint.Checkpointer(os.path.join(run_dir, "checkpoints", job.id))
  start = ckpt.restore(states) or states
  if isinstance(start, train.Progress):
    logging.info("%s: resuming at %d samples", job.id, start.samples_done)

  def on_chunk(progress: train.Progress) -> None:
    if (cfg.checkpoint_every and
        progress.samples_done % cfg.checkpoint_every == 0 and
        progress.samples_done < cfg.num_samples):
      ckpt.save(progress)

  diagnostics = metrics_lib.layer_diagnostics(model) if cfg.diagnostics else (
      None)
  final = train.run(model, tx, data, start, num_samples=cfg.num_samples,
                    eval_every=cfg.eval_every, batch_size=cfg.batch_size,
                    eval_batch_size=cfg.eval_batch_size,
                    diagnostics=diagnostics, on_chunk=on_chunk,
                    log_prefix=f"{job.id}: ")
  if ckpt.latest_step() != final.samples_done:
    ckpt.save(final)
  ckpt.close()
  history = _history_arrays(final.history, num_points, len(grid), cfg.seeds)
  if jax.process_index() != 0:
    return JobResult(job, grid, history)
  os.makedirs(os.path.dirname(result_path), exist_ok=True)
  checkpoint.write_json_atomic(result_path, {
      "job": job.id, "axis_value": job.axis_value, "arm": job.arm,
      "grid": grid, "history": {k: v.tolist() for k, v in history.items()}})
  return JobResult(job, grid, history)


def run(config: ml_collections.ConfigDict, run_dir: str) -> list[JobResult]:
  """Runs (or resumes) every job of ``config`` under ``run_dir``."""
  jobs = validate(config)
  datasets = load_datasets(jobs)
  return [run_job(job, run_dir, datasets) for job in jobs]

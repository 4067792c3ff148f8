"""The one validation path: an experiment config -> checked jobs.

An experiment config names a base setting, a set of *arms* (overrides such as
``{"oja_lr": 0.0}`` for plain backprop), an optional *axis* (one field and the
values it takes, e.g. ``model.depth`` over ``(2, 5, 10)``) and an optional
*sweep* grid over the fields that can be vmapped (``lr``, ``oja_lr``,
``model_gain``). Each (axis value, arm) is a *job*: one compiled program that
trains every (grid point, seed) pair at once.

Every bad value is reported as a :class:`ConfigError`, one line naming the
field, the value and what is allowed, before anything is compiled or written.
The model and optimizer built here are the ones the runner trains.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from typing import Any, NamedTuple, Sequence

import jax
import ml_collections
import optax

from experiments import data as data_lib
import ojax
from ojax import models

TASKS = ("classifier", "memory", "meta")
OPTIMIZERS = ("sgd", "adam")
# Config field -> the rate it sets in the optimizer state (the keyword of
# ojax.rules.with_rates, ojax.sgd_oja's argument), or None (not a rate).
SWEEPABLE = {"lr": "learning_rate", "oja_lr": "oja_learning_rate",
             "model_gain": None}
MAX_SEED = 2**31 - 1  # PRNGKey keeps 32 bits: larger seeds would collide.
# Fields that do not change a job's numbers (the rest make its fingerprint).
# eval_batch_size is not one of them: XLA:CPU computes an example's logits
# in the last bits differently in batches of another size (test_loss moves
# by ~1e-7).
NOT_NUMERIC = ("experiment", "select_arms", "reference_arm", "arms",
               "checkpoint_every", "download", "data_dir", "axis",
               "axis_values", "sweep", "processes", "claim")


# Fields a resumed run may raise: meta-training that ran out of steps goes
# on from its checkpoint with the same numbers as a run given the larger
# budget from the start (experiments.tasks.meta._continues).
GROWABLE = ("meta_steps",)


class ConfigError(ValueError):
  """A config field has a value that is not allowed."""


class Job(NamedTuple):
  """One compiled run: an axis value and an arm, with its resolved config."""

  id: str
  axis_value: Any
  arm: str
  config: ml_collections.ConfigDict


def check_number(field: str, value: Any, *, integer: bool = False,
                 zero: bool = False) -> None:
  """Raises ``ConfigError`` unless ``value`` is a finite number > 0 (>= 0)."""
  ok_type = isinstance(value, int) if integer else isinstance(
      value, (int, float))
  if isinstance(value, bool) or not ok_type:
    kind = "an integer" if integer else "a number"
    raise ConfigError(f"{field}={value!r} must be {kind}.")
  if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
    bound = ">= 0" if zero else "> 0"
    raise ConfigError(f"{field}={value!r} must be finite and {bound}.")


def one_of(field: str, value: Any, allowed: Sequence[Any]) -> None:
  """Raises ``ConfigError`` unless ``value`` is in ``allowed``."""
  if value not in allowed:
    raise ConfigError(f"{field}={value!r} is not known; choose one of "
                      f"{', '.join(map(str, allowed))}.")


def _walk(node: Any, prefix: str = ""):
  """Every (dotted field, value) leaf, tuples' items included."""
  if isinstance(node, (dict, ml_collections.ConfigDict)):
    for k, v in node.items():
      yield from _walk(v, f"{prefix}{k}.")
  elif isinstance(node, (list, tuple)):
    for i, v in enumerate(node):
      yield from _walk(v, f"{prefix[:-1]}[{i}].")
  else:
    yield prefix[:-1], node


def check_finite(config: ml_collections.ConfigDict) -> None:
  """Every float anywhere in ``config`` (arms and sweeps too) is finite."""
  for field, value in _walk(config):
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{field}={value!r} must be finite.")


def get(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
  node = cfg
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"config field {dotted!r} does not exist; fields are "
                        f"{', '.join(sorted(flat_fields(cfg)))}.")
    node = node[part]
  return node


def _set(cfg: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  get(cfg, dotted)
  *parents, leaf = dotted.split(".")
  node = cfg
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[leaf] = value


def flat_fields(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  out = []
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict) and k not in (
        "arms", "sweep", "claim"):
      out += flat_fields(v, f"{prefix}{k}.")
    else:
      out.append(prefix + k)
  return out


def _override_fields(overrides: Any, prefix: str = "") -> list[str]:
  out = []
  for k, v in overrides.items():
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out += _override_fields(v, f"{prefix}{k}.")
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


TUNING_PREFIX = "val_"  # An arm's tuning arm (config.tune): PREFIX + arm.


def tuning_overrides(config: ml_collections.ConfigDict,
                     overrides: Any) -> dict[str, Any]:
  """An arm's overrides as its tuning arm has them (``config.tune``): the
  tuning seeds ``tuning_seed`` .. ``tuning_seed + tuning_seeds - 1`` (their
  own splits, with ``split_per_seed``) and, for a classifier, validation
  held out of each seed's training data (``validation=-1``: as many samples
  as a test set has; for the embedded sets, the pool no test set contains)."""
  out = {**dict(overrides), "seed": config.tuning_seed,
         "seeds": config.tuning_seeds}
  if "validation" in config:
    out["validation"] = -1
  if config.get("split_per_seed"):
    out["data_split"] = config.tuning_seed
  return out


def _with_tuning(config: ml_collections.ConfigDict,
                 arms: dict[str, Any]) -> dict[str, Any]:
  """``arms`` and, with ``config.tune``, each one's tuning arm after it."""
  if not config.get("tune"):
    return arms
  out = {}
  for arm, overrides in arms.items():
    if arm.startswith(TUNING_PREFIX):
      raise ConfigError(f"arm {arm!r}: with tune=True, names starting with "
                        f"{TUNING_PREFIX!r} are the tuning arms'; rename it.")
    out[arm] = overrides
    out[TUNING_PREFIX + arm] = tuning_overrides(config, overrides)
  return out


def selected_arms(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The arms to run (all, or those ``select_arms`` names), with their
  tuning arms if ``config.tune``."""
  return _with_tuning(config, _selected(config))


def _selected(config: ml_collections.ConfigDict) -> dict[str, Any]:
  arms = dict(config.arms) if config.arms else {"default": {}}
  if not config.get("select_arms"):
    return arms
  chosen = [a.strip() for a in config.select_arms.split(",") if a.strip()]
  if not chosen:
    raise ConfigError(f"select_arms={config.select_arms!r} names no arm; "
                      f"arms are {', '.join(arms)}.")
  for arm in chosen:
    if arm not in arms:
      raise ConfigError(f"select_arms names {arm!r}; arms are "
                        f"{', '.join(arms)}.")
  return {a: arms[a] for a in chosen}


def expand(config: ml_collections.ConfigDict) -> list[Job]:
  """The jobs of ``config``: every axis value times every arm."""
  arms = selected_arms(config)
  axis_values = tuple(config.axis_values) if config.axis else (None,)
  if config.axis and not axis_values:
    raise ConfigError(f"axis={config.axis!r} needs axis_values, e.g. "
                      "--config.axis_values='(2, 5)'.")
  if config.axis:
    get(config, config.axis)
    setters = [a for a, o in _selected(config).items()
               if config.axis in _override_fields(o)]
    swept = config.axis.replace("model.", "model_") in config.sweep and (
        config.sweep[config.axis.replace("model.", "model_")])
    if setters or swept:
      raise ConfigError(
          f"axis={config.axis!r} would not apply: "
          + (f"arms {', '.join(setters)} set {config.axis}" if setters else
             f"sweep.{config.axis} sets it") + "; choose another axis or "
          "remove the override.")
  jobs, seen = [], set()
  for value in axis_values:
    for arm, overrides in arms.items():
      cfg = copy.deepcopy(config)
      with cfg.unlocked():
        cfg.arms = ml_collections.ConfigDict()
      if config.axis:
        _set(cfg, config.axis, value)
      _apply_overrides(cfg, overrides)  # An arm may set its own sweep.
      for field in cfg.sweep:  # A swept field overrides the arms' values.
        if cfg.sweep[field]:
          _set(cfg, field.replace("model_", "model."), cfg.sweep[field][0])
      resolve_passes(cfg)
      key = cfg.to_json_best_effort(sort_keys=True)
      if key in seen:  # Arms that differ only in swept fields.
        continue
      seen.add(key)
      jobs += _split_jobs(Job(_job_id(config, value, arm), value, arm, cfg))
  return _check_ids(config, jobs)


MAX_ID = 200  # Characters of a job id (a file name holds 255 bytes).


def _job_id(config: ml_collections.ConfigDict, value: Any, arm: str) -> str:
  """``<axis leaf>=<value>-<arm>`` (``<arm>`` without an axis), slugged."""
  prefix = f"{config.axis.split('.')[-1]}={_slug(value)}-" if (
      config.axis) else ""
  return prefix + _slug(arm)


def _check_ids(config: ml_collections.ConfigDict, jobs: list[Job]
               ) -> list[Job]:
  """``jobs`` if each has files of its own: no two ids equal, even up to
  case (case-insensitive file systems), none without its arm's name, too
  long for a file name, or holding :data:`SPLIT_TAG` (which marks
  split_per_seed's jobs); else a ``ConfigError`` naming the jobs."""
  def what(job: Job) -> str:
    return f"arm {job.arm!r}" + (f" at {config.axis}={job.axis_value!r}"
                                 if config.axis else "")
  seen: dict[str, Job] = {}
  for job in jobs:
    base = _job_id(config, job.axis_value, job.arm)
    if not _slug(job.arm):
      raise ConfigError(
          f"{what(job)}: an arm's name needs a letter or digit (job ids, "
          "which name its files, keep A-Z, a-z, 0-9, '_', '.', '=', '-'); "
          "rename it.")
    if SPLIT_TAG in base:
      raise ConfigError(
          f"{what(job)}: its job id {base!r} holds {SPLIT_TAG!r}, which "
          "marks split_per_seed's jobs; rename it.")
    if len(job.id) > MAX_ID:
      raise ConfigError(
          f"{what(job)}: its job id is {len(job.id)} characters long (> "
          f"{MAX_ID}), too long for a file name; shorten the arm's name or "
          "the axis value.")
    other = seen.setdefault(job.id.casefold(), job)
    if other is not job:
      ids = (f"one job id {job.id!r}" if other.id == job.id else
             f"the job ids {other.id!r} and {job.id!r}, one file name on "
             "case-insensitive file systems")
      raise ConfigError(
          f"{what(other)} and {what(job)} map to {ids}, so one would load "
          "the other's results; rename one.")
  return jobs


def resolve_passes(cfg: ml_collections.ConfigDict) -> None:
  """With ``passes`` > 0: ``num_samples`` = that many passes over the job's
  training set (validation held out), a multiple of ``batch_size``."""
  passes = cfg.get("passes", 0)
  if not passes:
    return
  if cfg.task != "classifier":
    raise ConfigError(f"passes={passes} is for the classifier task; the "
                      f"{cfg.task} task trains on fresh samples: set "
                      "num_samples.")
  check_number("passes", passes)
  from experiments import data  # pylint: disable=g-import-not-at-top
  try:
    n = data.train_size(cfg.dataset, data_dir=cfg.data_dir or None,
                        validation=cfg.validation)
  except (ValueError, data.DataUnavailableError) as err:
    raise ConfigError(" ".join(str(err).split())) from None
  samples = int(round(passes * n)) // cfg.batch_size * cfg.batch_size
  if samples < cfg.batch_size:
    raise ConfigError(f"passes={passes} is less than one batch of the "
                      f"{n} training samples of {cfg.dataset}.")
  cfg.num_samples = samples


SPLIT_TAG = "-split="  # Job id suffix of one train/test split's seeds.
MAX_SPLIT_JOBS = 100  # Seeds per (axis value, arm) with split_per_seed.


def num_splits(cfg: ml_collections.ConfigDict) -> int:
  """Train/test splits a job's seeds are spread over (1: one split)."""
  return cfg.seeds if cfg.get("split_per_seed") else 1


def _split_jobs(job: Job) -> list[Job]:
  """With ``split_per_seed``: one job per seed, each on its own split.

  Seed ``seed + k`` trains on split ``data_split + k``; the results are
  joined along the seed axis again (``runner.merge_splits``).
  """
  cfg = job.config
  if num_splits(cfg) == 1:
    return [job]
  if cfg.seeds > MAX_SPLIT_JOBS:
    raise ConfigError(
        f"split_per_seed runs one job per seed: seeds={cfg.seeds} is more "
        f"than {MAX_SPLIT_JOBS}; set --config.split_per_seed=false to train "
        "the seeds together on one split.")
  out = []
  for k in range(cfg.seeds):
    c = copy.deepcopy(cfg)
    with c.unlocked():
      c.split_per_seed, c.seeds = False, 1
      c.seed, c.data_split = cfg.seed + k, cfg.data_split + k
    out.append(Job(f"{job.id}{SPLIT_TAG}{k}", job.axis_value, job.arm, c))
  return out


def sweep_grid(config: ml_collections.ConfigDict) -> list[dict[str, float]]:
  """The product of the non-empty ``config.sweep`` value lists."""
  fields = {k: tuple(v) for k, v in config.sweep.items() if v}
  for k, values in fields.items():
    if k not in SWEEPABLE:
      raise ConfigError(f"sweep.{k} cannot be swept in one compiled call; "
                        f"sweepable: {', '.join(SWEEPABLE)}. Use axis for "
                        "fields that change shapes.")
    if k == "model_gain" and config.task != "classifier":
      raise ConfigError(f"sweep.model_gain is for the classifier task, not "
                        f"task={config.task!r}.")
    for v in values:
      check_number(f"sweep.{k}", v, zero=(k == "oja_lr"))
  return [dict(zip(fields, combo)) for combo in itertools.product(
      *fields.values())] or [{}]


def fingerprint(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The resolved fields of a job that change its numbers."""
  out = {}
  for field, value in _walk(json.loads(cfg.to_json_best_effort())):
    if field.split(".")[0].split("[")[0] not in NOT_NUMERIC:
      out[field] = value
  if "sweep" in cfg:
    out["sweep_grid"] = sweep_grid(cfg)
  return out


def fingerprint_digest(fp: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


# --- What a job trains ---------------------------------------------------


def hidden_widths(model_cfg) -> tuple[int, ...]:
  """``(width,) * depth`` if ``depth > 0``, else the explicit ``hidden``."""
  check_number("model.depth", model_cfg.depth, integer=True, zero=True)
  if model_cfg.depth > 0:
    check_number("model.width", model_cfg.width, integer=True)
    return (model_cfg.width,) * model_cfg.depth
  hidden = tuple(model_cfg.hidden)
  for i, w in enumerate(hidden):
    check_number(f"model.hidden[{i}]", w, integer=True)
  return hidden


def make_model(cfg: ml_collections.ConfigDict, num_outputs: int = 10):
  """The network ``cfg.model`` describes, checked field by field."""
  m = cfg.model
  check_number("model.beta", m.beta)
  if cfg.task == "memory":
    one_of("model.activation", m.activation, models.RNN_ACTIVATIONS)
    check_number("model.hidden", m.hidden, integer=True)
    check_number("model.input_scale", m.input_scale)
    check_number("model.radius", m.radius)
    return models.RNN(hidden=m.hidden, outputs=num_outputs,
                      activation=m.activation, beta=float(m.beta),
                      input_scale=float(m.input_scale),
                      radius=float(m.radius))
  one_of("model.activation", m.activation, models.ACTIVATIONS)
  one_of("model.kernel_init", m.kernel_init, models.KERNEL_INITS)
  one_of("model.output_post", m.output_post, models.OUTPUT_POSTS)
  one_of("model.feedback", m.feedback, models.FEEDBACKS)
  check_number("model.gain", m.gain)
  return models.MLP(
      features=hidden_widths(m) + (num_outputs,), activation=m.activation,
      beta=float(m.beta), use_bias=bool(m.use_bias),
      kernel_init=m.kernel_init, gain=float(m.gain),
      output_post=m.output_post, layer_norm=bool(m.layer_norm),
      feedback=m.feedback)


def oja_mask(cfg: ml_collections.ConfigDict, layer_names: Sequence[str]):
  """``params -> bool tree``: the layers ``cfg.oja_layers`` names.

  ``all``: every layer; ``hidden``: all but the last (output) layer; else a
  comma-separated list of layer names.
  """
  if cfg.oja_layers == "all":
    return None
  if cfg.oja_layers == "hidden":
    if cfg.task == "memory":
      raise ConfigError("oja_layers='hidden' is for the classifier; the RNN's "
                        f"layers are {', '.join(layer_names)}.")
    chosen = set(layer_names[:-1])
  else:
    chosen = {n.strip() for n in cfg.oja_layers.split(",") if n.strip()}
    unknown = sorted(chosen - set(layer_names))
    if unknown or not chosen:
      raise ConfigError(
          f"oja_layers={cfg.oja_layers!r} is not known; choose all, hidden "
          f"or a comma-separated list of {', '.join(layer_names)}.")

  def mask(params):
    return {k: jax.tree.map(lambda _, keep=(k in chosen): keep, v)
            for k, v in params.items()}
  return mask


def layer_names(cfg: ml_collections.ConfigDict) -> list[str]:
  """The model's layers with a trace, in order."""
  if cfg.task == "memory":
    return ["W_in", "W_rec"]
  n = len(hidden_widths(cfg.model)) + 1
  return models.layer_names({f"layer_{i}": None for i in range(n)})


def make_optimizer(cfg: ml_collections.ConfigDict, with_oja: bool = False
                   ) -> optax.GradientTransformation:
  """SGD or Adam at ``cfg.lr``, plus Oja at ``cfg.oja_lr`` if it is > 0.

  ``with_oja=True`` keeps the Oja transform even at ``oja_lr == 0`` (a sweep
  over ``oja_lr`` needs one program structure for every grid point). Rates
  live in the optimizer state so sweeps can vmap over them
  (``ojax.rules.with_rates``): SGD is ``ojax.sgd_oja`` (plain SGD with
  ``oja_learning_rate=None``), the transform ``ojax.train`` runs with its
  fused step; Adam is ``optax.inject_hyperparams`` of ``ojax.with_rule``.
  ``cfg.oja_layers`` picks the layers (the rule's ``mask``), and those
  whose units ``cfg.unit_norm`` projects to unit norm after every step
  (``ojax.sgd_oja``'s ``unit_norm``, SGD only; with ``oja_lr=0`` it is the
  non-plastic norm control).
  """
  one_of("optimizer", cfg.optimizer, OPTIMIZERS)
  check_number("lr", cfg.lr)
  check_number("oja_lr", cfg.oja_lr, zero=True)
  if not isinstance(cfg.oja_layers, str):
    raise ConfigError(f"oja_layers={cfg.oja_layers!r} must be a string.")
  unit_norm = cfg.get("unit_norm", False)
  if not isinstance(unit_norm, bool):
    raise ConfigError(f"unit_norm={unit_norm!r} must be True or False.")
  if unit_norm and cfg.optimizer != "sgd":
    raise ConfigError(f"unit_norm=True is for optimizer='sgd', not "
                      f"{cfg.optimizer!r}.")
  mask = oja_mask(cfg, layer_names(cfg))
  oja = cfg.oja_lr != 0 or with_oja
  if cfg.optimizer == "sgd":
    return ojax.sgd_oja(cfg.lr, cfg.oja_lr if oja else None, mask=mask,
                        unit_norm=unit_norm)
  if not oja:
    return optax.inject_hyperparams(optax.adam)(learning_rate=cfg.lr)

  def adam_oja(learning_rate, oja_learning_rate):
    return ojax.with_rule(optax.adam(learning_rate),
                          ojax.oja(oja_learning_rate, mask=mask))

  return optax.inject_hyperparams(adam_oja)(learning_rate=cfg.lr,
                                            oja_learning_rate=cfg.oja_lr)


# --- Checks --------------------------------------------------------------


def _check_top(cfg: ml_collections.ConfigDict) -> None:
  fields = ["seeds", "num_samples", "eval_every", "batch_size"]
  if cfg.task == "classifier":
    one_of("dataset", cfg.dataset, data_lib.DATASETS)
    hidden = cfg.model.hidden
    if cfg.model.depth == 0 and isinstance(hidden, (tuple, list)) and (
        not hidden):
      raise ConfigError(
          f"model.hidden={tuple(hidden)} has no hidden layer (with "
          "model.depth=0); the reports compare hidden layers: give at least "
          "one width, e.g. (100,).")
    fields.append("eval_batch_size")
    if cfg.validation != data_lib.TEST_SIZE:  # -1: a test set's worth.
      check_number("validation", cfg.validation, integer=True, zero=True)
    check_number("data_split", cfg.get("data_split", 0), integer=True,
                 zero=True)
    if (cfg.get("data_split", 0) or cfg.get("split_per_seed")) and (
        cfg.dataset not in data_lib.EMBEDDED):
      raise ConfigError(
          f"data_split/split_per_seed resample the train/test split of an "
          f"embedded dataset ({', '.join(data_lib.EMBEDDED)}); dataset="
          f"{cfg.dataset!r} has a fixed split (set --config.split_per_seed="
          "false and --config.data_split=0).")
  else:
    for f in ("delays", "length", "eval_batch", "eval_length"):
      check_number(f"memory.{f}", cfg.memory[f], integer=True)
    if cfg.memory.delays >= min(cfg.memory.length, cfg.memory.eval_length):
      raise ConfigError(
          f"memory.delays={cfg.memory.delays} must be < memory.length="
          f"{cfg.memory.length} and < memory.eval_length="
          f"{cfg.memory.eval_length}.")
  for field in fields:
    check_number(field, cfg[field], integer=True)
  for field in ("seed", "checkpoint_every"):
    check_number(field, cfg[field], integer=True, zero=True)
  if cfg.seed > MAX_SEED:
    raise ConfigError(f"seed={cfg.seed} must be <= {MAX_SEED} (PRNG keys "
                      "keep 32 bits, so larger seeds would repeat smaller "
                      "ones).")
  for field in ("eval_every", "num_samples"):
    if cfg[field] % cfg.batch_size:
      raise ConfigError(f"{field}={cfg[field]} must be a multiple of "
                        f"batch_size={cfg.batch_size}.")
  if cfg.checkpoint_every % cfg.eval_every:
    raise ConfigError(f"checkpoint_every={cfg.checkpoint_every} must be a "
                      f"multiple of eval_every={cfg.eval_every} (or 0).")


def _check_overrides(config: ml_collections.ConfigDict,
                     cli_fields: Sequence[str]) -> None:
  """A field given on the command line that the axis, the sweep or every arm
  overrides is an error: it would change nothing."""
  arms = _selected(config)  # The declared arms (their tuning arms follow).
  if "reference_arm" in cli_fields and config.get("claim"):
    claim = config.claim
    raise ConfigError(
        "--config.reference_arm changes nothing: it is the baseline of a "
        "run without a claim, and this config's claim names its arms "
        f"({claim.get('arm')!r} against {claim.get('reference')!r}); set "
        "--config.claim.reference instead.")
  if config.get("passes") and "num_samples" in cli_fields:
    raise ConfigError(
        f"--config.num_samples changes nothing: passes={config.passes:g} "
        "sets each job's samples; set --config.passes instead (or "
        "--config.passes=0 to give num_samples).")
  for field in cli_fields:
    if field.split(".")[0] in ("arms", "sweep", "select_arms"):
      continue
    if config.get("axis") and field == config.axis:
      raise ConfigError(
          f"--config.{field} changes nothing: the axis sets {field} to each "
          f"of axis_values={tuple(config.axis_values)}; set "
          f"--config.axis_values instead.")
    swept = field.replace("model.", "model_")
    sweep = config.get("sweep") or {}
    if swept in sweep and sweep[swept]:
      raise ConfigError(
          f"--config.{field} changes nothing: sweep.{swept}="
          f"{tuple(config.sweep[swept])} sets it; set --config.sweep.{swept} "
          "instead.")
    setters = [a for a, o in arms.items() if field in _override_fields(o)]
    if config.arms and len(setters) == len(arms):
      raise ConfigError(
          f"--config.{field} changes nothing: every arm sets {field} "
          f"({', '.join(setters)}); set --config.arms.<arm>.{field} instead.")


def check_claim(config: ml_collections.ConfigDict) -> None:
  """The arms a declared claim (``config.claim``) compares are arms, and
  the gains it counts are swept."""
  claim = config.get("claim")
  if not claim:
    return
  for role in ("arm", "reference", "secondary", "beside", "controls",
               "versus", "pairs"):
    names = claim.get(role, ())
    names = (names,) if isinstance(names, str) else names
    for name in [n for x in names for n in ((x,) if isinstance(x, str)
                                            else x)]:
      if name not in (config.arms or {}):
        raise ConfigError(
            f"claim.{role} names {name!r}, which is not an arm; arms are "
            f"{', '.join(config.arms or ())}.")
  for p in claim.get("at_passes", ()):
    check_number("claim.at_passes", p)
  counts_gains = (claim.get("gains_below") is not None or
                  claim.get("gains_above") is not None)
  if counts_gains and not config.sweep.get("model_gain"):
    raise ConfigError(
        f"sweep.model_gain={tuple(config.sweep.get('model_gain') or ())} "
        "does not hold the gains the claim counts (gains_below/gains_above);"
        " give e.g. --config.sweep.model_gain='(0.1, 1.0)'.")


# Fields that cannot be the axis: the seeds every comparison pairs over
# (and every field named for seeds), and the task (a job of another task
# is another experiment).
NOT_AXIS = ("seed", "seeds", "data_split", "split_per_seed", "task")


def _not_axis(field: str) -> bool:
  top = field.split(".")[0]
  return top in NOT_AXIS or "seed" in top


def _check_axis(config: ml_collections.ConfigDict) -> None:
  """The axis is a field that changes a job's numbers (not the seeds), and
  its values are distinct; ``axis_values`` need an axis."""
  axis, values = config.get("axis"), tuple(config.get("axis_values") or ())
  if not axis:
    if values:
      raise ConfigError(
          f"axis_values={values} change nothing without an axis; set "
          "--config.axis=FIELD too (e.g. model.depth), or drop them.")
    return
  if not isinstance(axis, str):
    raise ConfigError(f"axis={axis!r} must be a field name.")
  allowed = [f for f in flat_fields(config)
             if f.split(".")[0] not in NOT_NUMERIC and not _not_axis(f)]
  top = axis.split(".")[0]
  why = ("a job has one task" if top == "task" else
         "the seeds are what every comparison pairs over" if _not_axis(top)
         else "it changes no job's numbers" if top in NOT_NUMERIC else
         "it is a group of fields" if isinstance(get(config, axis),
                                                  ml_collections.ConfigDict)
         else "")
  if why:
    raise ConfigError(f"axis={axis!r} cannot be the axis: {why}; choose one "
                      f"of {', '.join(allowed)}.")
  for i, v in enumerate(values):
    if v in values[:i]:
      raise ConfigError(f"axis_values={values} repeats {v!r}; give each "
                        "value once.")


def _check_unused(jobs: Sequence[Job], cli_fields: Sequence[str]) -> None:
  """A field given on the command line that no job reads is an error."""
  def unused(field: str, cfg) -> bool:
    if cfg.task != "classifier":
      return False
    return {"model.width": cfg.model.depth == 0,
            "model.hidden": cfg.model.depth != 0,
            "oja_layers": cfg.oja_lr == 0 and not any(
                v > 0 for v in (cfg.sweep.get("oja_lr") or ())),
            "data_dir": cfg.dataset in data_lib.EMBEDDED,
            "download": cfg.dataset in data_lib.EMBEDDED}.get(field, False)
  why = {"model.width": "every job has model.depth=0, which takes the "
                        "widths from model.hidden",
         "model.hidden": "every job has model.depth > 0, which takes "
                         "model.width",
         "oja_layers": "no job has an Oja term (oja_lr=0 and no Oja rate "
                       "swept)",
         "data_dir": "every job's dataset is embedded in the package",
         "download": "every job's dataset is embedded in the package"}
  for field in cli_fields:
    if jobs and all(unused(field, job.config) for job in jobs):
      raise ConfigError(f"--config.{field} changes nothing: {why[field]}.")


def _check_tuning(config: ml_collections.ConfigDict) -> None:
  """With ``tune``: tuning seeds that are not the verdict's seeds."""
  if not config.get("tune"):
    return
  check_number("tuning_seeds", config.tuning_seeds, integer=True)
  check_number("tuning_seed", config.tuning_seed, integer=True, zero=True)
  first, last = config.tuning_seed, config.tuning_seed + config.tuning_seeds
  if first < config.seed + config.seeds and config.seed < last:
    raise ConfigError(
        f"tuning seeds {first}..{last - 1} overlap the verdict's seeds "
        f"{config.seed}..{config.seed + config.seeds - 1}: rates chosen on a "
        "seed must not be tested on it; set --config.tuning_seed="
        f"{config.seed + config.seeds} or higher.")


def validate(config: ml_collections.ConfigDict,
             cli_fields: Sequence[str] = ()) -> list[Job]:
  """Checks every job of ``config``; raises ``ConfigError`` on a bad value.

  Args:
    config: the experiment config, command-line overrides applied.
    cli_fields: dotted fields the user set on the command line (to refuse
      overrides that every arm would undo).

  Returns:
    The jobs, each with its resolved config.
  """
  one_of("task", config.get("task", "classifier"), TASKS)
  check_finite(config)
  if config.arms and config.reference_arm not in config.arms:
    raise ConfigError(f"reference_arm={config.reference_arm!r} is not an arm; "
                      f"arms are {', '.join(config.arms)}.")
  check_claim(config)
  _check_axis(config)
  _check_tuning(config)
  _check_overrides(config, cli_fields)
  jobs = expand(config)
  for job in [Job("base", None, "", config)] + jobs:
    where = f"arm {job.arm!r}" + (f" at {config.axis}={job.axis_value!r}"
                                  if config.axis else "")
    try:
      _check_top(job.config)
      if not re.search(f"{SPLIT_TAG}[1-9]", job.id):  # Same model as split 0.
        make_model(job.config)
        make_optimizer(job.config)
        sweep_grid(job.config)
    except ConfigError as err:
      if job.arm in ("", "default"):
        raise
      raise ConfigError(f"{where}: {err}") from None
  _check_unused(jobs, cli_fields)
  return jobs

"""The one online loop: ``jit(over seeds(scan over steps))``.

A :class:`Task` says what one seed does: ``step`` (one update from the inputs
of one time step), ``sample`` (the inputs of a chunk of steps, e.g. the
indices of the samples it sees) and ``evaluate``. :func:`run` trains S seeds
(or grid points) together: each *chunk* of ``eval_every`` samples is one
compiled call, ``lax.scan`` over steps then evaluation, for every seed
(:func:`over_seeds`: vmapped on accelerators, one after another on a CPU).
The host loops over chunks only to log, call ``on_chunk`` (checkpoints) and
collect metrics; there is no Python loop over samples.

The loop knows nothing about Oja: :func:`classifier_task` takes any optax
transformation and passes the model's ``activations`` tree to ``tx.update``
(transforms that do not need it ignore it). Each seed's sample order is a
fresh permutation of the training set per epoch, drawn from that seed's key,
so one seed gives every arm of an experiment the same initialization and the
same sample order.

Divergence: a seed diverges at the first sample whose training loss is not
finite or above :data:`LOSS_BOUND`, or at the first evaluation where a
parameter is not finite or the evaluation loss is not finite or above the
bound. ``diverged_at`` records that sample (-1: never); training goes on (the
numbers of a diverged seed are meaningless and reports set them apart).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from typing import Any, Callable, MutableMapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ojax import fused
from ojax import rules
from ojax.state import ClassifierData
from ojax.state import Metrics
from ojax.state import TrainState

__all__ = [
  "all_finite",
  "check_chunks",
  "chunk_ends",
  "classifier_task",
  "ClassifierData",
  "cross_entropy",
  "Diagnostics",
  "evaluate",
  "generic_classifier_step",
  "init_state",
  "init_states",
  "is_diverged",
  "LOSS_BOUND",
  "Metrics",
  "over_seeds",
  "Progress",
  "run",
  "sample_indices",
  "shard",
  "single_threaded_cpu",
  "SINGLE_THREADED_FLAG",
  "stack_history",
  "Task",
  "to_host",
  "TrainState",
]

LOSS_BOUND = 1e4  # A loss above this counts as divergence (see above).
_log = logging.getLogger("ojax")


class Task(NamedTuple):
  """What the loop trains, for one seed.

  Attributes:
    step: ``(state, inputs_t, data) -> (state, metrics_t)``: one update.
      ``metrics_t`` maps names to scalars, averaged over the chunk; it must
      hold ``train_loss`` (used for divergence).
    evaluate: ``(state, data) -> metrics`` at each evaluation.
    sample: ``(state, start, num_steps, data) -> inputs`` with a leading axis
      of ``num_steps``; ``start`` is the step index. Default: the step
      indices ``start .. start + num_steps``.
    samples_per_step: samples one step consumes (the batch size).
    enter: optional ``state -> state`` applied before a chunk's steps, and
      ``exit`` after them (e.g. a step that wants its own parameter layout;
      outside a chunk, ``exit(enter(state))`` is what evaluation and
      checkpoints see).
  """

  step: Callable[[TrainState, Any, Any], tuple[TrainState, Metrics]]
  evaluate: Callable[[TrainState, Any], Metrics]
  sample: Optional[Callable[[TrainState, jax.Array, int, Any], Any]] = None
  samples_per_step: int = 1
  enter: Optional[Callable[[TrainState], TrainState]] = None
  exit: Optional[Callable[[TrainState], TrainState]] = None


class Progress(NamedTuple):
  """What ``run`` hands ``on_chunk`` after each chunk, and returns."""

  samples_done: int
  states: TrainState  # Stacked over seeds.
  history: list[Metrics]


def cross_entropy(logits_BxC: jax.Array, y_B: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, y_B).mean()


def is_diverged(loss: jax.Array) -> jax.Array:
  """True where ``loss`` is not finite or above :data:`LOSS_BOUND`."""
  return ~jnp.isfinite(loss) | (loss > LOSS_BOUND)


def all_finite(tree: Any) -> jax.Array:
  """True iff every floating-point leaf of ``tree`` is finite."""
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def init_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  key: jax.Array,
  input_dim: int | jax.Array,
) -> TrainState:
  """Initializes one seed: ``key`` splits into an init key and a data key.

  ``input_dim`` is the input width (the model is initialized on a zero
  ``(1, input_dim)`` batch) or an example input array. A transform that
  would misapply a plasticity rule (one inside ``optax.MultiSteps``, or
  after it in a chain) raises a ValueError
  (:func:`ojax.rules.check_placement`).
  """
  init_key, data_key = jax.random.split(key)
  example = (
    jnp.zeros((1, input_dim), jnp.float32)
    if isinstance(input_dim, (int, np.integer))
    else input_dim
  )
  variables = dict(model.init(init_key, example))
  params = variables.pop("params")
  opt_state = tx.init(params)
  rules.check_placement(opt_state)
  return TrainState(
    params, opt_state, variables, data_key, jnp.array(-1, jnp.int32)
  )


def init_states(
  model: nn.Module,
  tx: optax.GradientTransformation,
  keys_S: jax.Array,
  input_dim: int | jax.Array,
) -> TrainState:
  """One :class:`TrainState` per key, stacked along a leading seed axis."""
  if isinstance(input_dim, (int, np.integer)):
    return _compiled_init(model, tx, int(input_dim))(keys_S)
  return jax.jit(jax.vmap(lambda k: init_state(model, tx, k, input_dim)))(
    keys_S
  )


@functools.lru_cache(maxsize=64)
def _compiled_init(
  model: nn.Module, tx: optax.GradientTransformation, input_dim: int
):
  """The jitted init of :func:`init_states`, made once per (model, tx)."""
  return jax.jit(jax.vmap(lambda k: init_state(model, tx, k, input_dim)))


# --- The feedforward classifier task -------------------------------------


def sample_indices(
  data_key: jax.Array, start: jax.Array, length: int, num_examples: int
) -> jax.Array:
  """Indices of samples ``start .. start + length`` of the training stream.

  The stream is the concatenation of per-epoch permutations of
  ``range(num_examples)``; epoch ``e`` uses ``fold_in(data_key, e)``.
  """
  num_epochs = length // num_examples + 2
  epochs = start // num_examples + jnp.arange(num_epochs)
  perms = jax.vmap(
    lambda e: jax.random.permutation(
      jax.random.fold_in(data_key, e), num_examples
    )
  )(epochs)
  return jax.lax.dynamic_slice(
    perms.reshape(-1), (start % num_examples,), (length,)
  )


def evaluate(
  model: nn.Module,
  params: Any,
  model_state: Any,
  x_MxD: jax.Array,
  y_M: jax.Array,
  eval_batch_size: int = 1000,
) -> Metrics:
  """Mean cross-entropy and accuracy on ``(x, y)``, in batches."""
  m = x_MxD.shape[0]
  b = min(eval_batch_size, m)
  pad = -m % b
  x = jnp.pad(x_MxD, ((0, pad), (0, 0))).reshape(-1, b, x_MxD.shape[1])
  y = jnp.pad(y_M, (0, pad)).reshape(-1, b)
  w = (jnp.arange(m + pad) < m).reshape(-1, b)

  def batch(args):
    x_BxD, y_B, w_B = args
    logits, _ = model.apply({"params": params, **model_state}, x_BxD)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_B)
    correct = jnp.argmax(logits, -1) == y_B
    return jnp.sum(loss * w_B), jnp.sum(correct * w_B)

  loss, correct = jax.lax.map(batch, (x, y, w))
  return {"test_loss": jnp.sum(loss) / m, "test_accuracy": jnp.sum(correct) / m}


Diagnostics = Callable[[Any, Any, jax.Array, jax.Array], Metrics]


def generic_classifier_step(
  model: nn.Module, tx: optax.GradientTransformationExtraArgs
) -> Callable[..., tuple[TrainState, Metrics]]:
  """``step(state, idx_B, data)``: one SGD-style update on samples ``idx_B``.

  Any model returning ``(logits, activations)`` and any optax transform; the
  transform receives ``activations=``. Online accuracy scores each sample by
  the forward pass that then learns from it (before the update).
  """

  def loss_fn(params, model_state, x_BxD, y_B):
    logits, activations = model.apply({"params": params, **model_state}, x_BxD)
    return cross_entropy(logits, y_B), (logits, activations)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, idx_B: jax.Array, data: ClassifierData):
    x_BxD, y_B = data.train_x[idx_B], data.train_y[idx_B]
    (loss, (logits, activations)), grads = grad_fn(
      state.params, state.model_state, x_BxD, y_B
    )
    updates, opt_state = tx.update(
      grads, state.opt_state, state.params, activations=activations
    )
    params = optax.apply_updates(state.params, updates)
    correct = jnp.mean(jnp.argmax(logits, -1) == y_B)
    return state._replace(params=params, opt_state=opt_state), {
      "train_loss": loss,
      "online_accuracy": correct,
    }

  return step


def classifier_task(
  model: nn.Module,
  tx: optax.GradientTransformationExtraArgs,
  *,
  batch_size: int = 1,
  eval_batch_size: int = 1000,
  diagnostics: Optional[Diagnostics] = None,
  step: Optional[Callable[..., Any]] = None,
  fast: bool = True,
) -> Task:
  """Online (or mini-batch) training of a classifier on ``ClassifierData``.

  Args:
    model: a module whose ``apply`` returns ``(logits, activations)``.
    tx: any optax transformation; it receives ``activations=``.
    batch_size: samples per update (1 = online learning).
    eval_batch_size: evaluation batch size. It bounds memory, and changes
      ``test_loss`` in the last bits: XLA:CPU computes an example's logits
      slightly differently in batches of another size.
    diagnostics: optional ``f(params, model_state, test_x, test_y) -> dict``
      of extra per-seed metrics at each evaluation, inside the compiled call.
    step: a step with the signature of :func:`generic_classifier_step`'s
      result that replaces it (e.g. a fused fast path); it must compute the
      same update. Its ``enter``/``exit`` attributes, if any, become the
      task's hooks (see :class:`Task`).
    fast: if ``step`` is None, use :mod:`ojax.fused`'s step when it applies
      to ``(model, tx)``: an :class:`ojax.models.MLP` trained by
      :func:`ojax.sgd_oja` (any mask, or plain SGD), decided by their
      types and fields (same numbers to float tolerance, about twice as
      fast; see docs/performance.md). Otherwise the generic step, and one
      info line on the ``"ojax"`` logger says why.

  >>> import ojax
  >>> from ojax import models, train
  >>> task = train.classifier_task(models.MLP(features=(8, 3)),
  ...                              ojax.sgd_oja(0.01, 1e-3))
  >>> type(task.step).__name__
  'FusedStep'
  """
  if step is None and fast:
    step = fused.select_step(model, tx, batch_size=batch_size)
  step = step or generic_classifier_step(model, tx)

  def sample(state, start, num_steps, data):
    n = data.train_y.shape[0]
    return sample_indices(
      state.data_key, start * batch_size, num_steps * batch_size, n
    ).reshape(num_steps, batch_size)

  def evaluate_fn(state, data):
    metrics = evaluate(
      model,
      state.params,
      state.model_state,
      data.test_x,
      data.test_y,
      eval_batch_size,
    )
    if diagnostics is not None:
      metrics.update(
        diagnostics(state.params, state.model_state, data.test_x, data.test_y)
      )
    return metrics

  return Task(
    step,
    evaluate_fn,
    sample,
    batch_size,
    enter=getattr(step, "enter", None),
    exit=getattr(step, "exit", None),
  )


# --- The loop ------------------------------------------------------------


SINGLE_THREADED_FLAG = "--xla_cpu_multi_thread_eigen=false"


def _backend_started() -> bool:
  """True once JAX has created its backends (XLA_FLAGS are read then)."""
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top

  started = getattr(xla_bridge, "backends_are_initialized", None)
  if started is not None:
    return bool(started())
  return bool(getattr(xla_bridge, "_backends", {}))


def single_threaded_cpu(
  environ: Optional[MutableMapping[str, str]] = None,
) -> None:
  """Makes XLA:CPU single-threaded: call it before JAX starts its backend.

  A batch-1 online step gains nothing from XLA's intra-op threads: the fused
  step runs at about half speed with them (BENCHMARKS.md), and one
  single-threaded process per core uses a machine best. This appends
  ``--xla_cpu_multi_thread_eigen=false`` to ``XLA_FLAGS`` unless
  ``XLA_FLAGS`` already sets ``xla_cpu_multi_thread_eigen`` (the user's
  choice, or an earlier call, stands). XLA reads ``XLA_FLAGS`` once, when
  JAX creates its backend (the first computation, ``jax.devices()``, ...;
  importing jax does not), so call this first thing in a script::

      from ojax import train
      train.single_threaded_cpu()
      ...  # then build and train

  Args:
    environ: the environment to set it in. None (default): this process's
      (``os.environ``); raises a ``RuntimeError`` if JAX's backend has
      already started, when the flag would silently do nothing. A mapping
      (e.g. ``os.environ`` to reach only the processes this one starts
      from now on, or a subprocess's ``env``) is set without that check.

  Raises:
    RuntimeError: ``environ`` is None and JAX's backend has already started.
  """
  target = os.environ if environ is None else environ
  current = target.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" in current:
    return  # Set already (by an earlier call or the user).
  if environ is None and _backend_started():
    raise RuntimeError(
      "ojax.train.single_threaded_cpu() was called after JAX started its "
      "backend, so XLA_FLAGS are no longer read; call it before the first "
      "JAX computation (or jax.devices()), e.g. at the top of the script, "
      f"or set XLA_FLAGS={SINGLE_THREADED_FLAG} in the environment."
    )
  target["XLA_FLAGS"] = f"{current} {SINGLE_THREADED_FLAG}".strip()


def check_chunks(num_samples: int, eval_every: int, batch_size: int) -> None:
  """Raises ValueError unless the sample counts fit together."""
  for field, value in (
    ("num_samples", num_samples),
    ("eval_every", eval_every),
    ("batch_size", batch_size),
  ):
    if (
      isinstance(value, bool)
      or not isinstance(value, (int, np.integer))
      or value < 1
    ):
      raise ValueError(f"{field}={value!r} must be a positive integer.")
  for field, value in (
    ("eval_every", eval_every),
    ("num_samples", num_samples),
  ):
    if value % batch_size:
      raise ValueError(
        f"{field}={value} must be a multiple of batch_size={batch_size}."
      )


def chunk_ends(num_samples: int, eval_every: int) -> list[int]:
  """Sample counts at which the loop evaluates (after sample 0)."""
  ends = list(range(eval_every, num_samples + 1, eval_every))
  if not ends or ends[-1] != num_samples:
    ends.append(num_samples)
  return ends


def shard(tree: Any, num_points: int) -> Any:
  """Pads the leading (seed or grid point) axis and shards it over devices.

  The mesh spans ``jax.devices()``: every local device (e.g. CPU host devices
  made with ``--xla_force_host_platform_device_count``), and every device of
  every host after ``jax.distributed.initialize()``. XLA runs each device's
  share with no communication. Padded entries repeat the last one; drop them
  from the results (``[:num_points]``).
  """
  devices = jax.devices()
  pad = -num_points % len(devices)
  if pad:
    tree = jax.tree.map(
      lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, 0)]), tree
    )
  if len(devices) == 1:
    return tree
  mesh = jax.sharding.Mesh(np.array(devices), ("points",))
  sharding = jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec("points")
  )

  def put(x):  # Each host supplies the shards its own devices hold.
    if jax.process_count() > 1:
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
  """Numpy copies of (possibly multi-host sharded) arrays, on every host."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


def _steps(
  task: Task, state: TrainState, start: jax.Array, num_steps: int, data: Any
) -> tuple[TrainState, Metrics]:
  """``num_steps`` steps of one seed by ``lax.scan``; chunk-mean metrics."""
  if task.sample is None:
    inputs = start + jnp.arange(num_steps)
  else:
    inputs = task.sample(state, start, num_steps, data)

  def body(carry, xs):
    state, t = carry, xs[0]
    state, metrics = task.step(state, xs[1], data)
    first = (state.diverged_at < 0) & is_diverged(metrics["train_loss"])
    state = state._replace(
      diverged_at=jnp.where(
        first,
        ((start + t) * task.samples_per_step).astype(jnp.int32),
        state.diverged_at,
      )
    )
    return state, metrics

  if task.enter is not None:
    state = task.enter(state)
  state, metrics = jax.lax.scan(body, state, (jnp.arange(num_steps), inputs))
  if task.exit is not None:
    state = task.exit(state)
  return state, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)


def _evaluate(
  task: Task, state: TrainState, data: Any, samples_done: jax.Array
) -> Metrics:
  metrics = dict(task.evaluate(state, data))
  bad = ~all_finite(state.params)
  if "test_loss" in metrics:
    bad = bad | is_diverged(metrics["test_loss"])
  metrics["diverged_at"] = jnp.where(
    (state.diverged_at < 0) & bad,
    samples_done.astype(jnp.int32),
    state.diverged_at,
  )
  return metrics


def over_seeds(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
  """``fn`` of one seed, applied to states stacked over seeds.

  ``jax.vmap`` on accelerators and on several devices; on a single CPU
  device the seeds run one after another (``lax.map``): a batch-1 step
  streams each seed's weights through the cache, and vmapped seeds spill it
  (the reference net, 10 seeds, one core: 6.5k samples/s vmapped, 14.3k one
  after another).
  """
  if jax.default_backend() == "cpu" and len(jax.devices()) == 1:
    return lambda states: jax.lax.map(fn, states)
  return jax.vmap(fn)


@functools.lru_cache(maxsize=64)
def _compiled(task: Task):
  """The jitted evaluation and chunk functions of ``task`` (made once)."""
  per_step = task.samples_per_step

  @jax.jit
  def eval_all(states, data, done):
    return over_seeds(lambda s: _evaluate(task, s, data, done))(states)

  @functools.partial(jax.jit, static_argnames="num_steps")
  def chunk(states, start_step, data, *, num_steps):
    def one(state):
      state, metrics = _steps(task, state, start_step, num_steps, data)
      metrics.update(
        _evaluate(task, state, data, (start_step + num_steps) * per_step)
      )
      return state._replace(diverged_at=metrics["diverged_at"]), metrics

    return over_seeds(one)(states)

  return eval_all, chunk


def run(
  task: Task,
  start: TrainState | Progress,
  data: Any,
  *,
  num_samples: int,
  eval_every: int,
  on_chunk: Optional[Callable[[Progress], None]] = None,
  log_prefix: str = "",
) -> Progress:
  """Trains S seeds (or grid points) in lock-step, evaluating every chunk.

  Args:
    task: what one seed does (:class:`Task`).
    start: states stacked over seeds (see :func:`init_states`), or the
      :class:`Progress` of an interrupted run to resume from (its
      ``samples_done`` must be one of this run's evaluation points).
    data: a pytree of arrays handed to the task's functions (passed to the
      compiled chunk as arguments, not baked in as constants).
    num_samples: training samples per seed (several epochs if > N).
    eval_every: samples between evaluations.
    on_chunk: called on the host after each chunk (progress, checkpoints).
    log_prefix: text put before each progress log line.

  Returns:
    The final :class:`Progress`: ``history`` is one dict per evaluation (at
    samples 0, ``eval_every``, ...) of numpy arrays shaped ``(S, ...)``.
  """
  per_step = task.samples_per_step
  check_chunks(num_samples, eval_every, per_step)
  ends = chunk_ends(num_samples, eval_every)
  data = jax.tree.map(jnp.asarray, data)

  eval_all, chunk = _compiled(task)
  if isinstance(start, Progress):
    states, history, done = (
      start.states,
      list(start.history),
      (start.samples_done),
    )
    if done not in [0] + ends:
      raise ValueError(
        f"cannot resume at {done} samples: evaluations of this run are at "
        f"{ends[:3]}...{ends[-1:]} (eval_every={eval_every}, num_samples="
        f"{num_samples})."
      )
  else:
    states, done = start, 0
    first = to_host(eval_all(states, data, jnp.asarray(0)))
    # Step metrics (online accuracy, ...) do not exist before any step.
    seed0 = jax.tree.map(lambda x: x[0], states)
    step_metrics = jax.eval_shape(
      lambda s: _steps(task, s, jnp.asarray(0), 1, data)[1], seed0
    )
    num_seeds = len(first["diverged_at"])
    history = [
      {
        "samples": 0,
        **{k: np.full(num_seeds, np.nan, np.float32) for k in step_metrics},
        **first,
      }
    ]
  for end in [e for e in ends if e > done]:
    tic = time.perf_counter()
    states, metrics = chunk(
      states,
      jnp.asarray(done // per_step, jnp.int32),
      data,
      num_steps=(end - done) // per_step,
    )
    metrics = to_host(metrics)
    history.append({"samples": end, **metrics})
    # The first chunk's rate includes compilation.
    _log.info(
      "%s%d/%d samples  %.0f samples/s/seed%s",
      log_prefix,
      end,
      num_samples,
      (end - done) / max(time.perf_counter() - tic, 1e-9),
      (
        f"  test acc {float(np.nanmean(metrics['test_accuracy'])):.4f}"
        if "test_accuracy" in metrics
        else ""
      ),
    )
    done = end
    if on_chunk is not None:
      on_chunk(Progress(done, states, history))
  return Progress(done, states, history)


def stack_history(history: list[Metrics]) -> dict[str, np.ndarray]:
  """Turns a list of per-evaluation dicts into arrays shaped ``(E, S, ...)``."""
  keys = history[0].keys()
  return {k: np.stack([np.asarray(h[k]) for h in history]) for k in keys}

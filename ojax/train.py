"""The compiled online training loop: ``jit(vmap over seeds(scan over samples))``.

One *chunk* trains every seed on ``eval_every`` samples with ``lax.scan`` (batch
size 1 by default), then evaluates on held-out data, all in one compiled call.
The host loops over chunks only to log progress, call ``on_chunk`` (e.g. to
checkpoint) and collect metrics, so there is no Python loop over samples.

The loop knows nothing about Oja: it takes any optax transformation and passes
the model's ``activations`` tree to ``tx.update`` (optax transforms that do not
need it ignore it). Each seed's sample order is a fresh permutation of the
training set per epoch, drawn from that seed's key, so the same seed gives the
same order and the same initialization to every arm of an experiment.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ojax.data import Dataset

Metrics = dict[str, Any]


class TrainState(NamedTuple):
  """Everything one seed needs to go on training (a pytree of arrays)."""

  params: Any
  opt_state: Any
  model_state: Any  # Non-trainable variables, e.g. fixed feedback weights.
  data_key: jax.Array
  diverged_at: jax.Array  # First sample index with a non-finite loss, or -1.


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               key: jax.Array, input_dim: int) -> TrainState:
  """Initializes one seed: ``key`` splits into an init key and a data key."""
  init_key, data_key = jax.random.split(key)
  variables = model.init(init_key, jnp.zeros((1, input_dim), jnp.float32))
  variables = dict(variables)
  params = variables.pop("params")
  return TrainState(params, tx.init(params), variables, data_key,
                    jnp.array(-1, jnp.int32))


def sample_indices(data_key: jax.Array, start: jax.Array, length: int,
                   num_examples: int) -> jax.Array:
  """Indices of samples ``start .. start + length`` of the training stream.

  The stream is the concatenation of per-epoch permutations of
  ``range(num_examples)``; epoch ``e`` uses ``fold_in(data_key, e)``.
  """
  num_epochs = length // num_examples + 2
  epochs = start // num_examples + jnp.arange(num_epochs)
  perms = jax.vmap(lambda e: jax.random.permutation(
      jax.random.fold_in(data_key, e), num_examples))(epochs)
  return jax.lax.dynamic_slice(perms.reshape(-1), (start % num_examples,),
                               (length,))


def cross_entropy(logits_BxC: jax.Array, y_B: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, y_B).mean()


def _loss_fn(model, params, model_state, x_BxD, y_B):
  logits, activations = model.apply({"params": params, **model_state}, x_BxD)
  return cross_entropy(logits, y_B), (logits, activations)


def train_steps(model: nn.Module, tx: optax.GradientTransformation,
                state: TrainState, start: jax.Array, x_NxD: jax.Array,
                y_N: jax.Array, *, num_steps: int,
                batch_size: int = 1) -> tuple[TrainState, Metrics]:
  """Trains one seed for ``num_steps`` steps of ``batch_size`` samples.

  Returns the new state and the chunk's online metrics: the mean training loss
  and the online accuracy (each sample scored by the forward pass that then
  learns from it, i.e. before the update).
  """
  x_NxD, y_N = jnp.asarray(x_NxD), jnp.asarray(y_N)
  idx = sample_indices(state.data_key, start, num_steps * batch_size,
                       x_NxD.shape[0]).reshape(num_steps, batch_size)
  grad_fn = jax.value_and_grad(functools.partial(_loss_fn, model),
                               has_aux=True)

  def step(carry, inputs):
    params, opt_state, diverged_at = carry
    t, idx_B = inputs
    (loss, (logits, activations)), grads = grad_fn(
        params, state.model_state, x_NxD[idx_B], y_N[idx_B])
    updates, opt_state = tx.update(grads, opt_state, params,
                                   activations=activations)
    params = optax.apply_updates(params, updates)
    diverged_at = jnp.where((diverged_at < 0) & ~jnp.isfinite(loss),
                            start + t * batch_size, diverged_at)
    correct = jnp.sum(jnp.argmax(logits, -1) == y_N[idx_B])
    return (params, opt_state, diverged_at), (loss, correct)

  (params, opt_state, diverged_at), (losses, correct) = jax.lax.scan(
      step, (state.params, state.opt_state, state.diverged_at),
      (jnp.arange(num_steps), idx))
  metrics = {"train_loss": jnp.mean(losses),
             "online_accuracy": jnp.sum(correct) / (num_steps * batch_size)}
  return state._replace(params=params, opt_state=opt_state,
                        diverged_at=diverged_at), metrics


def evaluate(model: nn.Module, params: Any, model_state: Any,
             x_MxD: jax.Array, y_M: jax.Array,
             eval_batch_size: int = 1000) -> Metrics:
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


def check_chunks(num_samples: int, eval_every: int, batch_size: int) -> None:
  """Raises ValueError unless the sample counts fit together."""
  for field, value in (("num_samples", num_samples),
                       ("eval_every", eval_every), ("batch_size", batch_size)):
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
        or value < 1):
      raise ValueError(f"{field}={value!r} must be a positive integer.")
  for field, value in (("eval_every", eval_every),
                       ("num_samples", num_samples)):
    if value % batch_size:
      raise ValueError(f"{field}={value} must be a multiple of "
                       f"batch_size={batch_size}.")


def _chunk_sizes(num_samples: int, eval_every: int) -> list[int]:
  sizes = [eval_every] * (num_samples // eval_every)
  if num_samples % eval_every:
    sizes.append(num_samples % eval_every)
  return sizes


def to_host(tree: Any) -> Any:
  """Numpy copies of (possibly multi-host sharded) arrays, on every host."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.device_get(tree)


class Progress(NamedTuple):
  """What ``run`` hands ``on_chunk`` after each chunk."""

  samples_done: int
  states: TrainState  # Stacked over seeds.
  history: list[Metrics]


def init_states(model: nn.Module, tx: optax.GradientTransformation,
                keys_S: jax.Array, input_dim: int) -> TrainState:
  """One :class:`TrainState` per key, stacked along a leading seed axis."""
  return jax.jit(jax.vmap(lambda k: init_state(model, tx, k, input_dim)))(
      keys_S)


def run(model: nn.Module, tx: optax.GradientTransformation, data: Dataset,
        start: TrainState | Progress, *, num_samples: int, eval_every: int,
        batch_size: int = 1, eval_batch_size: int = 1000,
        diagnostics: Optional[Diagnostics] = None,
        on_chunk: Optional[Callable[[Progress], None]] = None,
        log_prefix: str = "") -> Progress:
  """Trains S seeds (or grid points) in lock-step, evaluating every chunk.

  Args:
    model: a module whose ``apply`` returns ``(logits, activations)``.
    tx: any optax transformation; it receives ``activations=``.
    data: the dataset; ``test_*`` is the held-out evaluation set.
    start: states stacked over seeds (see :func:`init_states`), or the
      :class:`Progress` of an interrupted run to resume from.
    num_samples: training samples per seed (several epochs if > N).
    eval_every: samples between evaluations (a multiple of ``batch_size``).
    batch_size: samples per update (1 = online learning).
    eval_batch_size: evaluation batch size (memory only, not results).
    diagnostics: optional ``f(params, model_state, test_x, test_y) -> dict``
      of extra per-seed metrics computed at each evaluation, inside the
      compiled call.
    on_chunk: called on the host after each chunk (progress, checkpoints).
    log_prefix: text put before each progress log line.

  Returns:
    The final :class:`Progress`: ``history`` is one dict per evaluation (at
    samples 0, ``eval_every``, ...) of numpy arrays shaped ``(S,)``.
  """
  check_chunks(num_samples, eval_every, batch_size)
  sizes = _chunk_sizes(num_samples, eval_every)
  arrays = tuple(jnp.asarray(a) for a in (data.train_x, data.train_y,
                                           data.test_x, data.test_y))

  # The data are arguments, not closed-over constants, so they are not copied
  # into every compiled program.
  def eval_one(state, x_test, y_test):
    metrics = evaluate(model, state.params, state.model_state, x_test, y_test,
                       eval_batch_size)
    if diagnostics is not None:
      metrics.update(diagnostics(state.params, state.model_state, x_test,
                                 y_test))
    metrics["diverged_at"] = state.diverged_at
    return metrics

  @functools.partial(jax.jit, static_argnames="num_steps")
  def chunk(states, start, x, y, x_test, y_test, *, num_steps):
    def one(state):
      state, metrics = train_steps(model, tx, state, start, x, y,
                                   num_steps=num_steps, batch_size=batch_size)
      metrics.update(eval_one(state, x_test, y_test))
      return state, metrics
    return jax.vmap(one)(states)

  if isinstance(start, Progress):
    states, history, done = start.states, list(start.history), (
        start.samples_done)
  else:
    states, done = start, 0
    first = to_host(jax.jit(jax.vmap(eval_one, in_axes=(0, None, None)))(
        states, *arrays[2:]))
    nan_S = np.full_like(first["test_loss"], np.nan)
    history = [{"samples": 0, "train_loss": nan_S, "online_accuracy": nan_S,
                **first}]
  for size in _remaining(sizes, done):
    tic = time.perf_counter()
    states, metrics = chunk(states, jnp.asarray(done, jnp.int32), *arrays,
                            num_steps=size // batch_size)
    metrics = to_host(metrics)
    done += size
    history.append({"samples": done, **metrics})
    elapsed = time.perf_counter() - tic
    # The first chunk's rate includes compilation.
    logging.info("%s%d/%d samples  %.0f samples/s/seed  test acc %.4f",
                 log_prefix, done, num_samples, size / max(elapsed, 1e-9),
                 float(np.nanmean(metrics["test_accuracy"])))
    progress = Progress(done, states, history)
    if on_chunk is not None:
      on_chunk(progress)
  return Progress(done, states, history)


def _remaining(sizes: list[int], done: int) -> list[int]:
  """The chunk sizes still to run after ``done`` samples."""
  out, pos = [], 0
  for size in sizes:
    if pos >= done:
      out.append(size)
    pos += size
  if pos < done:
    raise ValueError(f"resume at {done} samples is past num_samples={pos}.")
  return out


def stack_history(history: list[Metrics]) -> dict[str, np.ndarray]:
  """Turns a list of per-evaluation dicts into arrays shaped ``(E, S, ...)``."""
  keys = history[0].keys()
  return {k: np.stack([np.asarray(h[k]) for h in history]) for k in keys}

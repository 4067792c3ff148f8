"""The JAX implementations: ojax's compiled loop, vmapped, and a Python loop.

* ``compile_scan``: ``jax.jit(ojax.train.train_steps)`` for one seed, the
  ``lax.scan`` over samples that ``ojax.train.run`` runs per chunk.
* ``compile_vmapped_scan``: the same under ``jax.vmap`` over ``S`` seeds,
  exactly what ``ojax.train.run`` compiles (without the evaluation).
* ``make_python_step``: one jitted update per sample, called from Python, for
  the cost of a framework call per sample. Its math is ``train_steps``'s step.

Compilation is done ahead of time (``lower(...).compile()``) so its time is
reported apart from the training time.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ojax import train


def compile_scan(model: Any, tx: optax.GradientTransformation,
                 state: train.TrainState, x_NxD: jax.Array, y_N: jax.Array,
                 num_steps: int) -> tuple[Callable[..., Any], float]:
  """Compiles ``train_steps`` for one seed; returns ``(fn, compile_seconds)``.

  ``fn(state, start, x_NxD, y_N)`` trains ``num_steps`` samples from
  ``start`` and returns ``(state, metrics)``.
  """
  fn = jax.jit(functools.partial(train.train_steps, model, tx,
                                 num_steps=num_steps))
  tic = time.perf_counter()
  compiled = fn.lower(state, jnp.asarray(0, jnp.int32), x_NxD, y_N).compile()
  return compiled, time.perf_counter() - tic


def init_states(model: Any, tx: optax.GradientTransformation, seeds: int,
                input_dim: int, seed: int = 0) -> train.TrainState:
  """``seeds`` stacked states; seed ``i`` uses ``fold_in(key(seed), i)``."""
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
      jnp.arange(seeds))
  return jax.jit(jax.vmap(lambda k: train.init_state(model, tx, k, input_dim))
                 )(keys)


def compile_vmapped_scan(model: Any, tx: optax.GradientTransformation,
                         states: train.TrainState, x_NxD: jax.Array,
                         y_N: jax.Array, num_steps: int
                         ) -> tuple[Callable[..., Any], float]:
  """Compiles ``vmap(train_steps)`` over stacked ``states`` (as ``run`` does).

  Returns ``(fn, compile_seconds)``; ``fn(states, start, x_NxD, y_N)``.
  """
  one = functools.partial(train.train_steps, model, tx, num_steps=num_steps)
  fn = jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))
  tic = time.perf_counter()
  compiled = fn.lower(states, jnp.asarray(0, jnp.int32), x_NxD, y_N).compile()
  return compiled, time.perf_counter() - tic


def make_python_step(model: Any, tx: optax.GradientTransformation
                     ) -> Callable[..., tuple[Any, Any]]:
  """A jitted single-sample update ``step(params, opt_state, model_state,
  x_NxD, y_N, index) -> (params, opt_state)``; params and optimizer state are
  donated, so XLA updates them in place between calls."""

  def loss_fn(params, model_state, x_BxD, y_B):
    logits, activations = model.apply({"params": params, **model_state}, x_BxD)
    return train.cross_entropy(logits, y_B), activations

  grad_fn = jax.grad(loss_fn, has_aux=True)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, model_state, x_NxD, y_N, index):
    x_BxD = jax.lax.dynamic_slice_in_dim(x_NxD, index, 1)
    y_B = jax.lax.dynamic_slice_in_dim(y_N, index, 1)
    grads, activations = grad_fn(params, model_state, x_BxD, y_B)
    updates, opt_state = tx.update(grads, opt_state, params,
                                   activations=activations)
    return optax.apply_updates(params, updates), opt_state

  return step


def python_loop(step: Callable[..., tuple[Any, Any]], params: Any,
                opt_state: Any, model_state: Any, x_NxD: jax.Array,
                y_N: jax.Array, order_T: Sequence[int]) -> tuple[Any, Any]:
  """Calls ``step`` once per sample of ``order_T``; returns the final state."""
  indices = [np.int32(i) for i in order_T]
  for i in indices:
    params, opt_state = step(params, opt_state, model_state, x_NxD, y_N, i)
  return jax.block_until_ready((params, opt_state))


def copy_tree(tree: Any) -> Any:
  """A fresh device copy of ``tree`` (inputs to donating calls get consumed)."""
  return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), tree)

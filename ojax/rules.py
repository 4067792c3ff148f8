"""Oja's plasticity rule as an optax gradient transformation.

For a Flax kernel ``K`` of shape ``(fan_in, fan_out)`` with pre-synaptic
activity ``x`` (the layer's input) and post-synaptic activity ``y`` (its
post-nonlinearity output), Oja's subspace rule is

    dK = eta * (x y^T - K y y^T) = eta * outer(x - K @ y, y),

averaged over the batch. In the reference formulation (Shervani-Tabar &
Rosenbaum, 2023; Shervani-Tabar, Mirhoseini & Rosenbaum, 2024) this term is
added to the backprop step computed from the same forward pass:

    dK = -lr * dL/dK + eta * outer(x - K @ y, y).

``optax.chain(optax.sgd(lr), ojax.oja(eta))`` is exactly that, and
``ojax.sgd_oja(lr, eta)`` builds it. The residual ``x - K @ y`` is computed
first, so the cost is O(batch * fan_in * fan_out); ``y y^T`` is never formed.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from optax._src import base
from optax._src import numerics


class Trace(NamedTuple):
  """Activity around one kernel, the input of the Oja rule.

  Attributes:
    pre: pre-synaptic activity ``x``, shape ``(..., fan_in)``: the layer input.
    post: post-synaptic activity ``y``, shape ``(..., fan_out)``: the layer's
      post-nonlinearity output. Leading axes (batch, time, ...) are averaged.
  """

  pre: jax.Array
  post: jax.Array


class OjaState(NamedTuple):
  """State of :func:`oja`: the step count, for learning-rate schedules."""

  count: jax.Array


def _is_trace_or_none(x: Any) -> bool:
  return x is None or isinstance(x, Trace)


def _is_param_leaf(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _path_str(path) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def oja_term(kernel_IxO: jax.Array, trace: Trace) -> jax.Array:
  """Oja's subspace term ``mean_b outer(x_b - K y_b, y_b)`` for one kernel.

  Args:
    kernel_IxO: kernel ``K`` of shape ``(fan_in, fan_out)``.
    trace: activity around ``K``; leading axes of ``pre``/``post`` are batch.

  Returns:
    An array shaped like ``kernel_IxO`` (without the learning rate).
  """
  fan_in, fan_out = kernel_IxO.shape
  x_BxI = jnp.reshape(trace.pre, (-1, fan_in))
  y_BxO = jnp.reshape(trace.post, (-1, fan_out))
  # K @ y for every sample as (I, O) @ (O, B) -> (I, B), with the kernel as
  # the left operand in its stored layout, so XLA:CPU emits a plain
  # matrix-vector product (y @ K.T walked K transposed, ~3x slower there).
  # y y^T is never formed.
  residual_BxI = x_BxI - (kernel_IxO @ y_BxO.T).T
  return (residual_BxI.T @ y_BxO) / x_BxI.shape[0]


def _check_trace(where: str, kernel: Any, trace: Trace) -> None:
  """Raises a ValueError naming the bad trace and what is allowed."""
  if trace.pre is None or trace.post is None:
    raise ValueError(
        f"ojax.oja: Trace at {where} has pre={type(trace.pre).__name__}, "
        f"post={type(trace.post).__name__}; both must be arrays.")
  shape = getattr(kernel, "shape", None)
  if shape is None or len(shape) != 2:
    raise ValueError(
        f"ojax.oja: Trace at {where} matches a parameter of shape {shape}; "
        "the rule applies to 2-D kernels (fan_in, fan_out) only. Put None "
        "there instead of a Trace.")
  fan_in, fan_out = shape
  pre_shape, post_shape = jnp.shape(trace.pre), jnp.shape(trace.post)
  if not pre_shape or pre_shape[-1] != fan_in:
    raise ValueError(
        f"ojax.oja: Trace.pre at {where} has shape {pre_shape}; the kernel "
        f"there is {shape}, so pre must be (..., {fan_in}).")
  if not post_shape or post_shape[-1] != fan_out:
    raise ValueError(
        f"ojax.oja: Trace.post at {where} has shape {post_shape}; the kernel "
        f"there is {shape}, so post must be (..., {fan_out}).")
  if pre_shape[:-1] != post_shape[:-1]:
    raise ValueError(
        f"ojax.oja: Trace at {where} has batch shape {pre_shape[:-1]} for pre "
        f"but {post_shape[:-1]} for post; they must agree.")


def _traces_by_path(activations: Any, params: Any) -> dict[str, Trace]:
  """Maps parameter paths to traces, checking that every trace has a home."""
  flat = jax.tree_util.tree_flatten_with_path(
      activations, is_leaf=_is_trace_or_none)[0]
  traces = {}
  for path, leaf in flat:
    if leaf is None:
      continue
    if not isinstance(leaf, Trace):
      raise ValueError(
          f"ojax.oja: activations{_path_str(path)} is a "
          f"{type(leaf).__name__}; each leaf must be an ojax.Trace(pre, post) "
          "or None.")
    traces[_path_str(path)] = leaf
  if not traces:
    raise ValueError(
        "ojax.oja: activations holds no ojax.Trace; give a tree shaped like "
        "params with Trace(pre, post) at each kernel the rule updates.")
  param_paths = {
      _path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(
          params, is_leaf=_is_param_leaf)[0]}
  unknown = sorted(set(traces) - param_paths)
  if unknown:
    raise ValueError(
        f"ojax.oja: no parameter matches the Trace at {unknown[0]} (a missing "
        f"or misnamed layer?); parameters are at {sorted(param_paths)}.")
  return traces


def oja(
    learning_rate: base.ScalarOrSchedule,
) -> base.GradientTransformationExtraArgs:
  """Adds Oja's subspace rule ``eta * mean_b outer(x - K y, y)`` to updates.

  ``update(updates, state, params, *, activations, **extra_args)`` adds, for
  each kernel ``K`` of ``params`` that has an :class:`ojax.Trace` in
  ``activations`` at the same tree path,

      eta * mean_b (x_b y_b^T - K y_b y_b^T),

  to the update of ``K``. The rule uses ``params`` (the weights of the forward
  pass), so chained after ``optax.sgd`` both steps come from one forward pass.
  Leaves of ``activations`` that are ``None``, and parameters absent from it,
  are passed through unchanged (biases, norms, layers the rule skips).

  Args:
    learning_rate: the Oja rate ``eta`` >= 0, a float or an optax schedule of
      the step count.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  if not callable(learning_rate):
    try:
      rate = float(learning_rate)
    except (TypeError, jax.errors.ConcretizationTypeError):
      rate = None  # A traced value (e.g. from inject_hyperparams).
    if rate is not None and not rate >= 0.0:
      raise ValueError(
          f"ojax.oja: learning_rate={learning_rate!r}; it must be a float "
          ">= 0 or an optax schedule.")

  def init_fn(params: base.Params) -> OjaState:
    del params
    return OjaState(count=jnp.zeros([], jnp.int32))

  def update_fn(
      updates: base.Updates,
      state: OjaState,
      params: Optional[base.Params] = None,
      *,
      activations: Any = None,
      **extra_args: Any,
  ) -> tuple[base.Updates, OjaState]:
    del extra_args
    if params is None:
      raise ValueError(base.NO_PARAMS_MSG)
    if activations is None:
      raise ValueError(
          "ojax.oja: update() needs activations=<tree of ojax.Trace shaped "
          "like params>, e.g. the second output of ojax.models.MLP.apply.")
    traces = _traces_by_path(activations, params)
    eta = learning_rate(state.count) if callable(learning_rate) else (
        learning_rate)

    def add_term(path, update, kernel):
      trace = traces.get(_path_str(path))
      if trace is None or isinstance(kernel, optax.MaskedNode):
        return update
      _check_trace(_path_str(path), kernel, trace)
      term = oja_term(kernel, trace)
      return update + (eta * term).astype(update.dtype)

    new_updates = jax.tree_util.tree_map_with_path(
        add_term, updates, params, is_leaf=_is_param_leaf)
    return new_updates, OjaState(count=numerics.safe_increment(state.count))

  return base.GradientTransformationExtraArgs(init_fn, update_fn)


def sgd_oja(
    learning_rate: base.ScalarOrSchedule,
    oja_learning_rate: base.ScalarOrSchedule,
) -> base.GradientTransformationExtraArgs:
  """The paper's "BP + Oja": an SGD step plus an Oja step, one forward pass.

  ``dK = -learning_rate * dL/dK + oja_learning_rate * mean_b outer(x - K y, y)``.

  Args:
    learning_rate: SGD rate (float or schedule).
    oja_learning_rate: Oja rate ``eta`` (float >= 0 or schedule).

  Returns:
    ``optax.chain(optax.sgd(learning_rate), ojax.oja(oja_learning_rate))``.
  """
  return optax.chain(optax.sgd(learning_rate), oja(oja_learning_rate))

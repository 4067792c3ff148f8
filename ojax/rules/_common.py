"""What every rule shares: the Trace, tree matching, checks, the rule engine.

A rule sees ``params`` and a tree of :class:`Trace` (``activations=``) shaped
like ``params``. For each kernel with a Trace it computes a local term
``dK`` from the kernel and its trace, scales it by the rule's rate and adds it
to the incoming update of that kernel. Everything else passes through.

Kernels are viewed as matrices ``(fan_in, fan_out)``:

* ``layout="in_out"`` (Flax, Haiku): ``fan_out = shape[-1]`` and ``fan_in``
  is the product of the other axes, flattened in the kernel's own order
  (``(kh, kw, cin)`` for a Flax conv kernel ``(kh, kw, cin, cout)``).
* ``layout="out_in"`` (Equinox, PyTorch): ``fan_out = shape[0]`` and
  ``fan_in`` the product of the others (``(cin, kh, kw)`` for a PyTorch conv
  weight ``(cout, cin, kh, kw)``).

``Trace.pre`` then has shape ``(..., fan_in)`` and ``Trace.post``
``(..., fan_out)``; all leading axes (batch, time, positions) are averaged.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

# optax's own text (optax does not export its constant), so that a missing
# ``params`` reads the same as in every optax transform that needs them.
NO_PARAMS_MSG = (
  "You are using a transformation that requires the current value of "
  "parameters, but you are not passing `params` when calling `update`."
)

LAYOUTS = ("in_out", "out_in")


class Trace(NamedTuple):
  """Activity around one kernel: what a local plasticity rule sees.

  ``Trace(pre, post)`` is all that Hebbian, Oja, Sanger and BCM need; the
  error fields are for rules with error terms (:func:`ojax.plasticity`).
  A Trace is a pytree (``None`` fields are empty), so it passes through
  ``jax.jit``, ``jax.vmap`` and ``jax.lax.scan``.

  Attributes:
    pre: pre-synaptic activity ``x``, shape ``(..., fan_in)``: the layer's
      input (image patches flattened in the kernel's order for a conv).
    post: post-synaptic activity ``y``, shape ``(..., fan_out)``: the layer's
      output after its nonlinearity.
    pre_error: the error (modulatory signal) at the layer's input units
      ``e_{l-1}``, shape ``(..., fan_in)``, or None.
    post_error: the error at the layer's output units ``e_l``, shape
      ``(..., fan_out)``, or None. For backprop at a softmax output this is
      ``softmax(z) - onehot``, below it ``(e_{l+1} B^T) * sigma'(z_l)``.

  Leading axes (batch, time, positions) must agree between fields and are
  averaged by the rules.

  >>> import jax.numpy as jnp
  >>> import ojax
  >>> t = ojax.Trace(jnp.ones((8, 3)), jnp.ones((8, 2)))
  >>> t.post_error is None
  True
  """

  pre: Any
  post: Any
  pre_error: Any = None
  post_error: Any = None


class RuleState(NamedTuple):
  """State of a stateless rule: the step count, for rate schedules.

  >>> import jax.numpy as jnp, ojax
  >>> ojax.hebb(0.1).init({"w": jnp.ones((2, 2))})
  RuleState(count=Array(0, dtype=int32))
  """

  # The field shadows tuple.count, as the count of optax's states does.
  count: jax.Array  # type: ignore[assignment]


class PlasticityRule(optax.GradientTransformationExtraArgs):
  """An optax transform that adds a local plasticity term to the updates.

  Every ``ojax`` rule is one. It is an ordinary
  ``optax.GradientTransformationExtraArgs``; the subclass only lets
  :func:`ojax.with_rule` tell rules from optimizers.

  >>> import ojax, optax
  >>> isinstance(ojax.oja(0.01), ojax.PlasticityRule)
  True
  >>> isinstance(optax.sgd(0.1), ojax.PlasticityRule)
  False
  """

  __slots__ = ()


# --------------------------------------------------------------------------
# Argument checks (at construction).


def describe(value: Any) -> str:
  """A short one-line description of a value for error messages."""
  if isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) > 0:
    return f"an array of shape {tuple(np.shape(value))} and dtype {value.dtype}"
  if isinstance(value, jax.core.Tracer):
    return f"a traced {value.dtype} scalar"
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def type_name(value: Any) -> str:
  return type(value).__name__


def check_rate(
  value: Any,
  *,
  fn: str,
  arg: str,
  nonnegative: bool = True,
  allow_schedule: bool = True,
) -> None:
  """Raises a one-line ValueError unless ``value`` is a valid rate.

  Allowed: a real number (finite; >= 0 when ``nonnegative``), a scalar
  array (checked at run time, see :func:`guard_rate`), or, when
  ``allow_schedule``, a callable of the step count.
  """
  allowed = "a finite float >= 0" if nonnegative else "a finite float"
  if allow_schedule:
    allowed += " or an optax schedule (a callable of the step count)"
  if callable(value) and not isinstance(value, (jax.Array, np.ndarray)):
    if allow_schedule:
      return
    raise ValueError(
      f"{fn}: {arg}={describe(value)} is a callable; it must be {allowed}."
    )
  if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
    raise ValueError(
      f"{fn}: {arg}={describe(value)} has type "
      f"{type_name(value)}; it must be {allowed}."
    )
  if isinstance(value, (jax.Array, np.ndarray)):
    if np.ndim(value) != 0:
      raise ValueError(
        f"{fn}: {arg} is {describe(value)}; it must be a scalar, {allowed}."
      )
    if not (
      jnp.issubdtype(value.dtype, jnp.floating)
      or jnp.issubdtype(value.dtype, jnp.integer)
    ):
      raise ValueError(
        f"{fn}: {arg} has dtype {value.dtype}; it must be {allowed}."
      )
    if isinstance(value, np.ndarray):
      value = value.item()
    else:
      return  # A jax array (maybe traced): checked at run time.
  if not isinstance(value, numbers.Real):
    raise ValueError(
      f"{fn}: {arg}={describe(value)} has type "
      f"{type_name(value)}; it must be {allowed}."
    )
  number = float(value)
  if not math.isfinite(number) or (nonnegative and number < 0):
    raise ValueError(f"{fn}: {arg}={value!r}; it must be {allowed}.")


def is_static_number(value: Any) -> bool:
  """True for rates fully checked at construction (Python/NumPy numbers)."""
  return isinstance(value, (numbers.Real, np.ndarray)) and not isinstance(
    value, jax.Array
  )


def check_layout(layout: Any, *, fn: str) -> None:
  if layout not in LAYOUTS:
    raise ValueError(
      f"{fn}: layout={layout!r} is not known; choose "
      f"'in_out' (Flax, Haiku: kernel (fan_in, fan_out)) or "
      f"'out_in' (Equinox, PyTorch: weight (fan_out, fan_in))."
    )


def rate_at(
  learning_rate: Any, count: jax.Array, *, nonnegative: bool = True
) -> Any:
  """The rate at step ``count``, with a run-time guard when it is dynamic.

  A Python/NumPy number was checked at construction and is returned as is
  (so a constant rate compiles to exactly the arithmetic it always did). A
  schedule's value or a jax array (``optax.inject_hyperparams``, a traced
  value) is checked here, in a jit-compatible way: a negative (when
  ``nonnegative``) or non-finite rate becomes NaN, which makes the rule's
  term, and so the update of every traced kernel, NaN. The mistake shows up
  as a NaN update (``optax.apply_if_finite`` skips it, a divergence check
  sees it) instead of silently applying the opposite rule.
  """
  if callable(learning_rate):
    eta = learning_rate(count)
  else:
    eta = learning_rate
  if is_static_number(eta) and not callable(learning_rate):
    return eta
  return guard_rate(eta, nonnegative=nonnegative)


def guard_rate(
  eta: Any, *, nonnegative: bool = True, below: Optional[float] = None
) -> jax.Array:
  """``eta`` where it is finite (>= 0, < ``below``), NaN elsewhere."""
  eta = jnp.asarray(eta)
  if not jnp.issubdtype(eta.dtype, jnp.floating):
    eta = eta.astype(jnp.float32)
  ok = jnp.isfinite(eta)
  if nonnegative:
    ok = ok & (eta >= 0)
  if below is not None:
    ok = ok & (eta < below)
  return jnp.where(ok, eta, jnp.nan).astype(eta.dtype)


# --------------------------------------------------------------------------
# Trees.


def is_trace_or_none(x: Any) -> bool:
  return x is None or isinstance(x, Trace)


def is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def path_str(path: Sequence[Any]) -> str:
  """``keystr`` of a path, without a trailing ``.value`` (NNX Variables)."""
  path = tuple(path)
  if (
    path
    and isinstance(path[-1], jax.tree_util.GetAttrKey)
    and path[-1].name == "value"
  ):
    path = path[:-1]
  return jax.tree_util.keystr(path) or "<root>"


def traces_by_path(
  activations: Any, params: Any, *, fn: str
) -> dict[str, Trace]:
  """Maps parameter paths to traces, checking that every trace has a home."""
  if activations is None:
    raise ValueError(
      f"{fn}: update() needs activations=<tree of ojax.Trace shaped like "
      "params>, e.g. from ojax.traces.apply (Linen), ojax.traces.call (NNX) "
      "or a model that returns its traces."
    )
  flat = jax.tree_util.tree_flatten_with_path(
    activations, is_leaf=is_trace_or_none
  )[0]
  traces = {}
  for path, leaf in flat:
    if leaf is None:
      continue
    if not isinstance(leaf, Trace):
      raise ValueError(
        f"{fn}: activations{path_str(path)} has type {type_name(leaf)}; "
        "each leaf must be an ojax.Trace(pre, post) or None."
      )
    traces[path_str(path)] = leaf
  if not traces:
    raise ValueError(
      f"{fn}: activations holds no ojax.Trace; give a tree shaped like "
      "params with Trace(pre, post) at each kernel the rule updates."
    )
  param_paths = {
    path_str(p)
    for p, _ in jax.tree_util.tree_flatten_with_path(params, is_leaf=is_masked)[
      0
    ]
  }
  unknown = sorted(set(traces) - param_paths)
  if unknown:
    raise ValueError(
      f"{fn}: no parameter matches the Trace at {unknown[0]} (a missing or "
      f"misnamed layer?); parameters are at {sorted(param_paths)}."
    )
  return traces


# --------------------------------------------------------------------------
# Kernels as matrices.


def fans(shape: Sequence[int], layout: str) -> tuple[int, int]:
  if layout == "in_out":
    return math.prod(shape[:-1]), shape[-1]
  return math.prod(shape[1:]), shape[0]


def as_matrix(kernel: jax.Array, layout: str) -> jax.Array:
  """The ``(fan_in, fan_out)`` view of a kernel."""
  if layout == "in_out":
    return (
      kernel
      if kernel.ndim == 2
      else jnp.reshape(kernel, (-1, kernel.shape[-1]))
    )
  return jnp.reshape(kernel, (kernel.shape[0], -1)).T


def from_matrix(
  term_IxO: jax.Array, shape: Sequence[int], layout: str
) -> jax.Array:
  """Inverse of :func:`as_matrix` for a term."""
  if layout == "in_out":
    return term_IxO if len(shape) == 2 else jnp.reshape(term_IxO, shape)
  return jnp.reshape(term_IxO.T, shape)


def flat_trace(trace: Trace, fan_in: int, fan_out: int) -> Trace:
  """The trace with every field reshaped to ``(samples, fan)``."""

  def flat(a, n):
    return None if a is None else jnp.reshape(a, (-1, n))

  return Trace(
    flat(trace.pre, fan_in),
    flat(trace.post, fan_out),
    flat(trace.pre_error, fan_in),
    flat(trace.post_error, fan_out),
  )


_FIELD_FAN = {
  "pre": "fan_in",
  "post": "fan_out",
  "pre_error": "fan_in",
  "post_error": "fan_out",
}


def check_trace(
  fn: str,
  where: str,
  kernel: Any,
  trace: Trace,
  layout: str,
  needs: Sequence[str],
) -> tuple[int, int]:
  """Raises a ValueError naming the bad trace; returns (fan_in, fan_out)."""
  shape = getattr(kernel, "shape", None)
  if shape is None or len(shape) < 2:
    raise ValueError(
      f"{fn}: Trace at {where} matches a parameter of shape {shape}; the "
      "rule applies to 2-D kernels (fan_in, fan_out) and conv kernels "
      "(..., fan_out) only. Put None there instead of a Trace."
    )
  fan_in, fan_out = fans(tuple(shape), layout)
  sizes = {"fan_in": fan_in, "fan_out": fan_out}
  batch = None
  for field in needs:
    value = getattr(trace, field)
    if value is None:
      raise ValueError(
        f"{fn}: Trace at {where} has {field}=None; this rule needs "
        f"{', '.join(needs)}."
      )
    value_shape = tuple(jnp.shape(value))
    size = sizes[_FIELD_FAN[field]]
    if not value_shape or value_shape[-1] != size:
      layout_note = (
        ""
        if len(shape) == 2 and layout == "in_out"
        else (f" (layout={layout!r}, {_FIELD_FAN[field]} {size})")
      )
      dotted = "Trace." + field
      raise ValueError(
        f"{fn}: {dotted} at {where} has shape {value_shape}; the kernel "
        f"there is {tuple(shape)}{layout_note}, so {field} must be "
        f"(..., {size})."
      )
    if batch is None:
      batch = (field, value_shape[:-1])
    elif value_shape[:-1] != batch[1]:
      raise ValueError(
        f"{fn}: Trace at {where} has batch shape {batch[1]} for "
        f"{batch[0]} but {value_shape[:-1]} for {field}; they must agree."
      )
  return fan_in, fan_out


# --------------------------------------------------------------------------
# Masks.


def _is_bool(value: Any) -> bool:
  if isinstance(value, (bool, np.bool_)):
    return True
  return (
    isinstance(value, (np.ndarray, jax.Array))
    and not isinstance(value, jax.core.Tracer)
    and value.dtype == np.bool_
    and value.ndim == 0
  )


def resolve_mask(mask: Any, params: Any, *, fn: str) -> Any:
  """``mask`` (a tree or a callable of ``params``) as a checked tree.

  Raises a one-line ValueError unless the tree is a prefix of ``params``'
  structure (as ``optax.masked`` takes it) with a boolean at every leaf.
  Returns the tree, unchanged.
  """
  tree = mask(params) if callable(mask) else mask
  mask_def: Any = jax.tree_util.tree_structure(tree)  # A PyTreeDef.
  try:
    mask_def.flatten_up_to(params)
  except (ValueError, TypeError):
    params_def = jax.tree_util.tree_structure(params, is_leaf=is_masked)
    raise ValueError(
      f"{fn}: mask has structure {_short(mask_def)}; it must be a tree of "
      "booleans shaped like params (or a prefix of it), or a callable "
      f"returning one; params have structure {_short(params_def)}."
    ) from None
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not _is_bool(leaf):
      raise ValueError(
        f"{fn}: mask{jax.tree_util.keystr(path)} is {describe(leaf)}; each "
        "leaf of a mask must be True or False."
      )
  return tree


def full_mask(mask: Any, params: Any, *, fn: str) -> Any:
  """A bool at every leaf of ``params``: ``mask`` broadcast over subtrees.

  ``None`` (no mask) is True everywhere.
  """
  if mask is None:
    return jax.tree.map(lambda _: True, params)
  tree = resolve_mask(mask, params, fn=fn)
  return jax.tree.map(
    lambda m, sub: jax.tree.map(lambda _: bool(m), sub), tree, params
  )


def _short(treedef: Any, limit: int = 160) -> str:
  text = str(treedef).replace("PyTreeDef(", "", 1)
  text = text[:-1] if text.endswith(")") else text
  return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------
# The engine.


def check_float(fn: str, where: str, kernel: Any, update: Any) -> None:
  """Refuses an integer kernel (or update): its update would be truncated."""
  for what, value in (("parameter", kernel), ("update", update)):
    dtype = getattr(value, "dtype", None)
    if dtype is not None and not jnp.issubdtype(dtype, jnp.inexact):
      raise ValueError(
        f"{fn}: the {what} at {where} has dtype {dtype}; plasticity rules "
        "update floating-point kernels only (an integer kernel's update "
        "would be silently truncated). Use float parameters."
      )


KernelFn = Callable[[str, jax.Array, Trace, Any], tuple[jax.Array, Any]]


def add_terms(
  fn: str,
  updates: Any,
  params: Any,
  activations: Any,
  *,
  layout: str,
  needs: Sequence[str],
  kernel_fn: KernelFn,
  leaf_states: Optional[Any] = None,
) -> tuple[Any, Any]:
  """Adds ``kernel_fn``'s term to the update of every traced kernel.

  Args:
    fn: the rule's name for error messages.
    updates, params: trees of the same structure (``MaskedNode`` allowed).
    activations: the Trace tree.
    layout: "in_out" or "out_in".
    needs: Trace fields the rule reads.
    kernel_fn: ``(where, kernel_IxO, flat_trace, leaf_state) -> (scaled
      term_IxO, new_leaf_state)``; ``flat_trace`` fields are
      ``(samples, fan)``.
    leaf_states: None, or a tree shaped like params (None/MaskedNode at
      leaves without state) passed leaf by leaf to ``kernel_fn``.

  Returns:
    ``(new_updates, new_leaf_states)``.
  """
  if params is None:
    raise ValueError(NO_PARAMS_MSG)
  traces = traces_by_path(activations, params, fn=fn)
  treedef: Any  # A PyTreeDef; jaxlib ships no type stubs for it.
  flat_params, treedef = jax.tree_util.tree_flatten_with_path(
    params, is_leaf=is_masked
  )
  flat_updates = treedef.flatten_up_to(updates)
  flat_states = (
    treedef.flatten_up_to(leaf_states)
    if leaf_states is not None
    else [None] * len(flat_params)
  )
  new_updates, new_states = [], []
  for (path, kernel), update, leaf_state in zip(
    flat_params, flat_updates, flat_states, strict=True
  ):
    where = path_str(path)
    trace = traces.get(where)
    if (
      trace is None or is_masked(kernel) or update is None or is_masked(update)
    ):
      new_updates.append(update)
      new_states.append(leaf_state)
      continue
    check_float(fn, where, kernel, update)
    fan_in, fan_out = check_trace(fn, where, kernel, trace, layout, needs)
    term, leaf_state = kernel_fn(
      where,
      as_matrix(kernel, layout),
      flat_trace(trace, fan_in, fan_out),
      leaf_state,
    )
    term = from_matrix(term, kernel.shape, layout)
    new_updates.append(update + term.astype(update.dtype))
    new_states.append(leaf_state)
  new_updates = treedef.unflatten(new_updates)
  if leaf_states is not None:
    leaf_states = treedef.unflatten(new_states)
  return new_updates, leaf_states


def finish(
  tx: optax.GradientTransformationExtraArgs, mask: Any, *, fn: str
) -> PlasticityRule:
  """Applies ``mask`` (like ``optax.add_decayed_weights``) and tags the rule.

  The mask is checked where ``optax.masked`` uses it (a mask that does not
  fit the params raises a ValueError naming both structures).
  """
  if mask is not None:
    tx = optax.masked(tx, lambda tree: resolve_mask(mask, tree, fn=fn))
  return PlasticityRule(tx.init, tx.update)


def mean_outer(a_BxI: jax.Array, b_BxO: jax.Array) -> jax.Array:
  """``mean_b outer(a_b, b_b)`` as one matrix product."""
  return (a_BxI.T @ b_BxO) / a_BxI.shape[0]


ScalarOrSchedule = optax.ScalarOrSchedule  # A float, array or schedule.


def term_rule(
  fn: str,
  term: Callable[[jax.Array, Trace], jax.Array],
  learning_rate: Any,
  *,
  mask: Any,
  layout: str,
  state_cls: type = RuleState,
) -> PlasticityRule:
  """A stateless rule: adds ``learning_rate * term(K, trace)`` to each
  traced kernel (Hebb, Oja, Sanger); ``fn`` names it in errors."""
  check_rate(learning_rate, fn=fn, arg="learning_rate")
  check_layout(layout, fn=fn)

  def init_fn(params: Any):
    del params
    return state_cls(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, activations=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(NO_PARAMS_MSG)
    eta = rate_at(learning_rate, state.count)

    def kernel_fn(where, kernel_IxO, trace, leaf_state):
      del where
      return eta * term(kernel_IxO, trace), leaf_state

    new_updates, _ = add_terms(
      fn,
      updates,
      params,
      activations,
      layout=layout,
      needs=("pre", "post"),
      kernel_fn=kernel_fn,
    )
    return new_updates, state_cls(count=optax.safe_increment(state.count))

  return finish(
    optax.GradientTransformationExtraArgs(init_fn, update_fn), mask, fn=fn
  )

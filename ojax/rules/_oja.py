"""Oja's rule (subspace form)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from ojax.rules import _common
from ojax.rules._common import Trace


class OjaState(NamedTuple):
  """State of :func:`oja`: the step count, for learning-rate schedules.

  >>> import jax.numpy as jnp, ojax
  >>> ojax.oja(0.01).init({"w": jnp.ones((3, 2))})
  OjaState(count=Array(0, dtype=int32))
  """

  # The field shadows tuple.count, as the count of optax's states does.
  count: jax.Array  # type: ignore[assignment]


def oja_term(kernel_IxO: jax.Array, trace: Trace) -> jax.Array:
  """Oja's subspace term ``mean_b outer(x_b - K y_b, y_b)`` for one kernel.

  ``= mean_b (x y^T - K y y^T)``; ``K y`` is computed first, so the cost is
  O(batch * fan_in * fan_out) and ``y y^T`` is never formed.

  Args:
    kernel_IxO: kernel ``K`` of shape ``(fan_in, fan_out)``.
    trace: activity around ``K``; leading axes of ``pre``/``post`` are batch.

  Returns:
    An array shaped like ``kernel_IxO`` (without the learning rate).

  >>> import jax.numpy as jnp, ojax
  >>> k = jnp.eye(2)
  >>> ojax.oja_term(k, ojax.Trace(jnp.array([[1.0, 0.0]]),
  ...                             jnp.array([[1.0, 0.0]])))
  Array([[0., 0.],
         [0., 0.]], dtype=float32)
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


def oja(
  learning_rate: _common.ScalarOrSchedule,
  *,
  mask: Optional[Any] = None,
  layout: str = "in_out",
) -> _common.PlasticityRule:
  r"""Oja's subspace rule: adds ``eta * mean_b outer(x - K y, y)`` to updates.

  For a kernel ``K`` of shape ``(fan_in, fan_out)``, pre-synaptic activity
  ``x`` (the layer's input) and post-synaptic activity ``y`` (its output
  after the nonlinearity),

      dK = eta * mean_b (x y^T - K y y^T) = eta * mean_b outer(x - K y, y).

  With ``y = K^T x`` (a linear layer) and this rule alone, the columns of
  ``K`` converge to an orthonormal basis of the top-``fan_out`` principal
  subspace of ``x`` (Oja 1982 for one unit; Oja 1989 for the subspace
  rule). The reference formulation adds this term to the backprop step from
  the same forward pass (Shervani-Tabar & Rosenbaum 2023; Shervani-Tabar,
  Mirhoseini & Rosenbaum 2024): use ``ojax.with_rule(optax.sgd(lr),
  ojax.oja(eta))`` or :func:`ojax.sgd_oja`.

  ``update(updates, state, params, *, activations, **extra_args)``: for each
  kernel of ``params`` with an :class:`ojax.Trace` at the same path of
  ``activations``, the term (computed from ``params``, the weights of the
  forward pass) is added to that kernel's update; other leaves pass through.
  Other keyword arguments are ignored. Cost O(batch * fan_in * fan_out):
  ``K y`` is computed first and ``y y^T`` is never formed. Conv kernels
  ``(kh, kw, cin, cout)`` take ``pre`` = patches flattened in the kernel's
  order ``(kh, kw, cin)`` (see :mod:`ojax.traces`).

  The term is *added to the incoming updates*: any transform placed after the
  rule rescales it (``optax.chain(ojax.oja(eta), optax.sgd(lr))`` applies
  ``-lr * (g + eta * term)``, anti-Oja). Put rules after the optimizer with
  :func:`ojax.with_rule`.

  Args:
    learning_rate: the rate ``eta``: a finite float >= 0 or an optax
      schedule. A schedule's value, or a rate injected as an array, that is
      negative or not finite at run time makes the term NaN (visible in the
      updates) rather than silently applying anti-Oja.
    mask: like ``optax.add_decayed_weights``: a tree of booleans shaped like
      (a prefix of) params, or a callable returning one; the rule touches
      only leaves marked True.
    layout: ``"in_out"`` (Flax, Haiku) or ``"out_in"`` for weights stored
      ``(fan_out, fan_in)`` (Equinox, PyTorch).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` (an
    :class:`ojax.PlasticityRule`).

  References:
    Oja, "A simplified neuron model as a principal component analyzer",
    J. Math. Biol. 15, 1982. Oja, "Neural networks, principal components, and
    subspaces", Int. J. Neural Syst. 1, 1989.

  >>> import jax.numpy as jnp, optax, ojax
  >>> params = {"w": jnp.array([[1.0], [0.0]])}           # (fan_in, fan_out)
  >>> acts = {"w": ojax.Trace(pre=jnp.array([[0.0, 1.0]]),
  ...                         post=jnp.array([[1.0]]))}
  >>> tx = ojax.oja(0.5)
  >>> updates, _ = tx.update(optax.tree.zeros_like(params), tx.init(params),
  ...                        params, activations=acts)
  >>> updates["w"]            # 0.5 * outer(x - K y, y)
  Array([[-0.5],
         [ 0.5]], dtype=float32)
  """
  return _common.term_rule(
    "ojax.oja",
    oja_term,
    learning_rate,
    mask=mask,
    layout=layout,
    state_cls=OjaState,
  )

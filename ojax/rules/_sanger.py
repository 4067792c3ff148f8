"""Sanger's generalized Hebbian algorithm."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from ojax.rules import _common
from ojax.rules._common import Trace


def sanger_term(kernel_IxO: jax.Array, trace: Trace) -> jax.Array:
  """Sanger's term ``mean_b (x y^T - K UT(y y^T))`` for one kernel.

  ``UT`` keeps the upper triangle including the diagonal, so column ``j``
  is ``mean_b y_j (x - sum_{k<=j} K[:, k] y_k)``: the input minus its
  reconstruction by units ``0..j``. The reconstructions are a cumulative sum
  over the columns of ``K * y``, so the cost is O(batch * fan_in * fan_out)
  and ``y y^T`` is never formed.

  Args:
    kernel_IxO: kernel ``K`` of shape ``(fan_in, fan_out)``.
    trace: activity around it; leading axes are averaged.

  Returns:
    An array shaped like ``kernel_IxO`` (without the learning rate).

  >>> import jax.numpy as jnp, ojax
  >>> k = jnp.eye(2)
  >>> t = ojax.Trace(jnp.array([[1.0, 1.0]]), jnp.array([[1.0, 1.0]]))
  >>> ojax.sanger_term(k, t)  # column 0: x - K0 y0; column 1: x - K0 y0 - K1 y1
  Array([[0., 0.],
         [1., 0.]], dtype=float32)
  """
  fan_in, fan_out = kernel_IxO.shape
  x_BxI = jnp.reshape(trace.pre, (-1, fan_in))
  y_BxO = jnp.reshape(trace.post, (-1, fan_out))
  # Reconstruction of x by units 0..j, for every sample and j: (B, I, O).
  recon_BxIxO = jnp.cumsum(kernel_IxO[None] * y_BxO[:, None, :], axis=-1)
  residual_BxIxO = x_BxI[:, :, None] - recon_BxIxO
  return jnp.einsum("bio,bo->io", residual_BxIxO, y_BxO) / x_BxI.shape[0]


def sanger(
  learning_rate: _common.ScalarOrSchedule,
  *,
  mask: Optional[Any] = None,
  layout: str = "in_out",
) -> _common.PlasticityRule:
  """Sanger's rule (generalized Hebbian algorithm, GHA).

  For a kernel ``K`` of shape ``(fan_in, fan_out)``,

      dK = eta * mean_b (x y^T - K UT(y y^T)),

  ``UT`` the upper triangle including the diagonal: unit ``j`` learns Oja's
  rule on the input minus the reconstruction by units ``0..j``. With
  ``y = K^T x`` and this rule alone, column ``j`` of ``K`` converges to the
  ``j``-th principal component of ``x`` (unit norm, sign free, in order of
  decreasing variance), where Oja's subspace rule only finds their span.
  (In the ``(fan_out, fan_in)`` layout of the paper, ``dW = eta (y x^T -
  LT(y y^T) W)``.) Computed with a cumulative sum over units: cost
  O(batch * fan_in * fan_out), ``y y^T`` never formed.

  ``update(updates, state, params, *, activations, **extra_args)`` follows
  the contract of :func:`ojax.oja`, with the same ``mask=`` and ``layout=``
  arguments and the same run-time guard on the rate.

  Args:
    learning_rate: the rate ``eta``: a finite float >= 0 or an optax schedule.
    mask: booleans shaped like (a prefix of) params, or a callable returning
      them; only True leaves are touched.
    layout: ``"in_out"`` (Flax) or ``"out_in"`` (Equinox, PyTorch); units are
      the columns of the ``(fan_in, fan_out)`` view either way.

  Returns:
    An :class:`ojax.PlasticityRule`.

  References:
    Sanger, "Optimal unsupervised learning in a single-layer linear
    feedforward neural network", Neural Networks 2, 1989.

  >>> import jax.numpy as jnp, optax, ojax
  >>> params = {"w": jnp.eye(2)}
  >>> acts = {"w": ojax.Trace(jnp.array([[1.0, 1.0]]), jnp.array([[1.0, 1.0]]))}
  >>> tx = ojax.sanger(0.5)
  >>> updates, _ = tx.update(optax.tree.zeros_like(params), tx.init(params),
  ...                        params, activations=acts)
  >>> updates["w"]
  Array([[0. , 0. ],
         [0.5, 0. ]], dtype=float32)
  """
  return _common.term_rule(
    "ojax.sanger",
    sanger_term,
    learning_rate,
    mask=mask,
    layout=layout,
    state_cls=_common.RuleState,
  )

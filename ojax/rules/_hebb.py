"""Plain Hebbian rule."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from ojax.rules import _common
from ojax.rules._common import Trace


def hebb_term(kernel_IxO: jax.Array, trace: Trace) -> jax.Array:
  """Hebb's term ``mean_b outer(x_b, y_b)`` for one kernel.

  Args:
    kernel_IxO: kernel of shape ``(fan_in, fan_out)`` (only its shape is used).
    trace: activity around it; leading axes are averaged.

  Returns:
    An array shaped like ``kernel_IxO`` (without the learning rate).

  >>> import jax.numpy as jnp, ojax
  >>> ojax.hebb_term(jnp.zeros((2, 1)), ojax.Trace(jnp.array([[1.0, 2.0]]),
  ...                                              jnp.array([[3.0]])))
  Array([[3.],
         [6.]], dtype=float32)
  """
  fan_in, fan_out = kernel_IxO.shape
  x_BxI = jnp.reshape(trace.pre, (-1, fan_in))
  y_BxO = jnp.reshape(trace.post, (-1, fan_out))
  return _common.mean_outer(x_BxI, y_BxO)


def hebb(
  learning_rate: _common.ScalarOrSchedule,
  *,
  mask: Optional[Any] = None,
  layout: str = "in_out",
) -> _common.PlasticityRule:
  """Plain Hebbian rule: adds ``eta * mean_b outer(x, y)`` to updates.

  For a kernel ``K`` of shape ``(fan_in, fan_out)`` with pre-synaptic
  activity ``x`` and post-synaptic activity ``y``,

      dK = eta * mean_b x y^T.

  Alone it is unstable: with ``y = K^T x`` the weights grow exponentially
  along the top principal component of ``x`` (their norm is unbounded). It
  is a baseline and a building block (:func:`ojax.plasticity` term
  ``"hebb"``); an anti-Hebbian rule is ``ojax.plasticity({"hebb": -c})``.

  ``update(updates, state, params, *, activations, **extra_args)`` follows
  the contract of :func:`ojax.oja` (Trace at each kernel of ``params``,
  ``None`` or absent elsewhere, the term added to the incoming update,
  placement after the optimizer with :func:`ojax.with_rule`, ``mask=`` and
  ``layout=`` as there, a run-time NaN for a negative or non-finite dynamic
  rate). Cost O(batch * fan_in * fan_out).

  Args:
    learning_rate: the rate ``eta``: a finite float >= 0 or an optax schedule.
    mask: booleans shaped like (a prefix of) params, or a callable returning
      them; only True leaves are touched (as in ``optax.add_decayed_weights``).
    layout: ``"in_out"`` (Flax) or ``"out_in"`` (Equinox, PyTorch).

  Returns:
    An :class:`ojax.PlasticityRule`.

  References:
    Hebb, "The Organization of Behavior", Wiley, 1949. Dayan & Abbott,
    "Theoretical Neuroscience", MIT Press, 2001, section 8.2.

  >>> import jax.numpy as jnp, optax, ojax
  >>> params = {"w": jnp.zeros((2, 1))}
  >>> acts = {"w": ojax.Trace(jnp.array([[1.0, 2.0]]), jnp.array([[3.0]]))}
  >>> tx = ojax.hebb(0.5)
  >>> updates, _ = tx.update(params, tx.init(params), params, activations=acts)
  >>> updates["w"]            # 0 + 0.5 * x y^T
  Array([[1.5],
         [3. ]], dtype=float32)
  """
  return _common.term_rule(
    "ojax.hebb",
    hebb_term,
    learning_rate,
    mask=mask,
    layout=layout,
    state_cls=_common.RuleState,
  )

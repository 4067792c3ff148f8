"""The Bienenstock-Cooper-Munro rule with a sliding threshold."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from ojax.rules import _common
from ojax.rules._common import Trace


class BCMState(NamedTuple):
  """State of :func:`bcm`.

  Attributes:
    count: the step count, for rate schedules.
    theta: a tree shaped like params: at every parameter with 2 or more axes
      (a possible kernel) the sliding threshold of each post-synaptic unit,
      shape ``(fan_out,)``, in float32 or wider; ``None`` elsewhere.

  >>> import jax.numpy as jnp, ojax
  >>> state = ojax.bcm(0.01).init({"w": jnp.ones((3, 2)), "b": jnp.ones(2)})
  >>> state.theta
  {'b': None, 'w': Array([0., 0.], dtype=float32)}
  """

  # The field shadows tuple.count, as the count of optax's states does.
  count: jax.Array  # type: ignore[assignment]
  theta: Any


def bcm_term(
  kernel_IxO: jax.Array, trace: Trace, theta_O: jax.Array
) -> jax.Array:
  """BCM's term ``mean_b outer(x, y * (y - theta))`` for one kernel.

  Args:
    kernel_IxO: kernel of shape ``(fan_in, fan_out)`` (only its shape is used).
    trace: activity around it; leading axes are averaged.
    theta_O: the threshold of each post-synaptic unit, shape ``(fan_out,)``.

  Returns:
    An array shaped like ``kernel_IxO`` (without the learning rate).

  >>> import jax.numpy as jnp, ojax
  >>> t = ojax.Trace(jnp.array([[1.0]]), jnp.array([[2.0, 0.5]]))
  >>> ojax.bcm_term(jnp.zeros((1, 2)), t, jnp.array([1.0, 1.0]))
  Array([[ 2.  , -0.25]], dtype=float32)
  """
  fan_in, fan_out = kernel_IxO.shape
  x_BxI = jnp.reshape(trace.pre, (-1, fan_in))
  y_BxO = jnp.reshape(trace.post, (-1, fan_out))
  phi_BxO = y_BxO * (y_BxO - theta_O.astype(y_BxO.dtype))
  return _common.mean_outer(x_BxI, phi_BxO)


def bcm(
  learning_rate: _common.ScalarOrSchedule,
  *,
  theta_decay: float = 0.9,
  theta_init: float = 0.0,
  mask: Optional[Any] = None,
  layout: str = "in_out",
) -> _common.PlasticityRule:
  """BCM rule with a sliding threshold per post-synaptic unit.

  For a kernel ``K`` of shape ``(fan_in, fan_out)``,

      dK = eta * mean_b x (y * (y - theta))^T,
      theta <- theta_decay * theta + (1 - theta_decay) * mean_b y^2,

  ``theta`` (one per post-synaptic unit, kept in the state) a running mean
  of ``y^2`` over about ``1 / (1 - theta_decay)`` steps: the explicit Euler
  step of ``tau dtheta/dt = y^2 - theta``. The term of a step uses the
  threshold from before that step's update. A unit whose activity exceeds
  its threshold potentiates its active synapses, below it depresses them;
  since the threshold grows faster than linearly with the activity, each
  unit becomes selective: it responds strongly to some inputs and not to
  others (Bienenstock, Cooper & Munro 1982; in this form with ``theta =
  E[y^2]``, Intrator & Cooper 1992). The threshold must move faster than the
  weights (``1 - theta_decay`` well above ``eta`` times the input power).

  ``update(updates, state, params, *, activations, **extra_args)`` follows
  the contract of :func:`ojax.oja`, with the same ``mask=`` and ``layout=``
  arguments and run-time guard on the rate (and on an injected theta_decay,
  which must be in [0, 1)). Thresholds are kept for every
  parameter with 2 or more axes and change only for kernels with a Trace.
  For a conv kernel all positions of a unit share its threshold.

  Args:
    learning_rate: the rate ``eta``: a finite float >= 0 or an optax schedule.
    theta_decay: the threshold's decay per step, in [0, 1).
    theta_init: the initial threshold of every unit, >= 0.
    mask: booleans shaped like (a prefix of) params, or a callable returning
      them; only True leaves are touched.
    layout: ``"in_out"`` (Flax) or ``"out_in"`` (Equinox, PyTorch).

  Returns:
    An :class:`ojax.PlasticityRule` whose state is a :class:`ojax.BCMState`.

  References:
    Bienenstock, Cooper & Munro, "Theory for the development of neuron
    selectivity", J. Neurosci. 2, 1982. Intrator & Cooper, "Objective
    function formulation of the BCM theory of visual cortical plasticity",
    Neural Networks 5, 1992.

  >>> import jax.numpy as jnp, optax, ojax
  >>> params = {"w": jnp.zeros((1, 2))}
  >>> acts = {"w": ojax.Trace(jnp.array([[1.0]]), jnp.array([[2.0, 0.5]]))}
  >>> tx = ojax.bcm(0.5, theta_decay=0.5, theta_init=1.0)
  >>> updates, state = tx.update(params, tx.init(params), params,
  ...                            activations=acts)
  >>> updates["w"]            # 0.5 * x * y * (y - 1)
  Array([[ 1.   , -0.125]], dtype=float32)
  >>> state.theta["w"]        # 0.5 * 1 + 0.5 * y^2
  Array([2.5  , 0.625], dtype=float32)
  """
  fn = "ojax.bcm"
  _common.check_rate(learning_rate, fn=fn, arg="learning_rate")
  _common.check_rate(theta_init, fn=fn, arg="theta_init", allow_schedule=False)
  _common.check_rate(
    theta_decay, fn=fn, arg="theta_decay", allow_schedule=False
  )
  if _common.is_static_number(theta_decay) and not float(theta_decay) < 1.0:
    raise ValueError(
      f"{fn}: theta_decay={theta_decay!r}; it must be in "
      "[0, 1) (the threshold averages over 1 / (1 - "
      "theta_decay) steps)."
    )
  _common.check_layout(layout, fn=fn)

  def init_fn(params: Any) -> BCMState:
    def one(p):
      if _common.is_masked(p):
        return p
      shape = getattr(p, "shape", ())
      if len(shape) < 2:
        return None
      dtype = jnp.promote_types(p.dtype, jnp.float32)
      _, fan_out = _common.fans(tuple(shape), layout)
      return jnp.full((fan_out,), theta_init, dtype)

    theta = jax.tree.map(one, params, is_leaf=_common.is_masked)
    return BCMState(count=jnp.zeros([], jnp.int32), theta=theta)

  def update_fn(updates, state, params=None, *, activations=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(_common.NO_PARAMS_MSG)
    eta = _common.rate_at(learning_rate, state.count)
    decay = (
      theta_decay
      if _common.is_static_number(theta_decay)
      else _common.guard_rate(theta_decay, below=1.0)
    )

    def kernel_fn(where, kernel_IxO, trace, theta_O):
      if theta_O is None:
        raise ValueError(
          f"{fn}: no threshold for the kernel at {where}; "
          "the state was made by init() for other params."
        )
      term = eta * bcm_term(kernel_IxO, trace, theta_O)
      power_O = jnp.mean(jnp.square(trace.post.astype(theta_O.dtype)), axis=0)
      new_theta = decay * theta_O + (1 - decay) * power_O
      return term, new_theta.astype(theta_O.dtype)

    new_updates, theta = _common.add_terms(
      fn,
      updates,
      params,
      activations,
      layout=layout,
      needs=("pre", "post"),
      kernel_fn=kernel_fn,
      leaf_states=state.theta,
    )
    return new_updates, BCMState(
      # optax.safe_increment is annotated ArrayLike; it returns a jax.Array.
      count=optax.safe_increment(state.count),  # type: ignore[arg-type]
      theta=theta,
    )

  return _common.finish(
    optax.GradientTransformationExtraArgs(init_fn, update_fn), mask, fn=fn
  )

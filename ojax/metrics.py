"""Per-layer diagnostics of a network, computed inside the compiled loop.

For each kernel ``K_l`` (fan_in, fan_out) and its post-synaptic activity
``y_l`` on held-out inputs:

- ``orthonormality_error``: ``||K^T K - I||_F / sqrt(fan_out)``; Oja's
  subspace rule drives ``K`` towards orthonormal columns, where this is 0.
- ``participation_ratio``: ``tr(C)^2 / tr(C^2)`` of the covariance ``C`` of
  ``y_l``: the effective dimension of the activation subspace (1 to fan_out).
- ``activation_norm``: mean over inputs of ``||y_l||_2`` (exploding or
  vanishing signals).
- ``weight_norm``: ``||K_l||_F``.
- ``feedback_cosine`` (feedback-alignment models only): the cosine between
  the kernel update direction the model's backward pass computes (errors sent
  down through fixed random ``B``) and the true gradient (errors through
  ``K^T``), ``<g_FA, g_BP> / (||g_FA|| ||g_BP||)``, both of the mean
  cross-entropy on the held-out batch. 1 at the output layer, whose update
  does not depend on feedback; the angle is ``arccos`` of it.

Each is an array of shape ``(num_layers,)`` per seed, in layer order.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ojax import models
from ojax import train

__all__ = [
  "cosine",
  "DIAGNOSTICS",
  "feedback_cosines",
  "FEEDBACK_DIAGNOSTICS",
  "layer_diagnostics",
  "orthonormality_error",
  "participation_ratio",
]

DIAGNOSTICS = (
  "orthonormality_error",
  "participation_ratio",
  "activation_norm",
  "weight_norm",
)
FEEDBACK_DIAGNOSTICS = ("feedback_cosine",)


def orthonormality_error(kernel_IxO: jax.Array) -> jax.Array:
  """``||K^T K - I||_F / sqrt(fan_out)``."""
  n = kernel_IxO.shape[1]
  gram_OxO = kernel_IxO.T @ kernel_IxO
  return jnp.linalg.norm(gram_OxO - jnp.eye(n)) / jnp.sqrt(n)


def participation_ratio(y_NxO: jax.Array) -> jax.Array:
  """``tr(C)^2 / tr(C^2)`` for the covariance ``C`` of the rows of ``y``."""
  centered = y_NxO - y_NxO.mean(axis=0)
  cov_OxO = centered.T @ centered / y_NxO.shape[0]
  return jnp.trace(cov_OxO) ** 2 / jnp.maximum(jnp.sum(cov_OxO**2), 1e-30)


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  """``<a, b> / (||a|| ||b||)`` over all entries; 0 if either is zero."""
  a, b = jnp.ravel(a), jnp.ravel(b)
  norms = jnp.linalg.norm(a) * jnp.linalg.norm(b)
  return jnp.where(norms > 0, jnp.dot(a, b) / jnp.maximum(norms, 1e-30), 0.0)


def feedback_cosines(
  model: nn.Module,
  params: Any,
  model_state: Any,
  x_MxD: jax.Array,
  y_M: jax.Array,
) -> jax.Array:
  """Per-layer cosine between ``model``'s update and the true gradient.

  Both are gradients of the mean cross-entropy ``L`` on ``(x, y)`` with the
  same parameters: once through ``model`` (e.g. ``feedback="random"``, whose
  backward pass uses ``B``), once through the same model with
  ``feedback="backprop"``.

  Returns:
    Array ``(num_layers,)`` of ``cos(g_model, dL/dK)`` per kernel.
  """
  true_model = model.clone(feedback="backprop")

  def grads(m):
    def loss(p):
      logits, _ = m.apply({"params": p, **model_state}, x_MxD)
      return train.cross_entropy(logits, y_M)

    return jax.grad(loss)(params)

  g_model, g_true = grads(model), grads(true_model)
  return jnp.stack(
    [
      cosine(g_model[n]["kernel"], g_true[n]["kernel"])
      for n in models.layer_names(params)
    ]
  )


def layer_diagnostics(
  model: nn.Module, num_inputs: int = 512
) -> Callable[..., dict[str, Any]]:
  """A ``diagnostics`` function for :func:`ojax.train.run`.

  Args:
    model: a model whose ``apply`` returns ``(logits, activations)`` with an
      ``ojax.Trace`` at ``activations['layer_i']['kernel']``.
    num_inputs: how many held-out inputs to measure activity on.

  Returns:
    ``f(params, model_state, x_MxD, y_M) -> {name: array (num_layers,)}``,
    with ``feedback_cosine`` too when ``model.feedback`` is not backprop.
  """

  def diagnostics(params, model_state, x_MxD, y_M):
    _, acts = model.apply({"params": params, **model_state}, x_MxD[:num_inputs])
    names = models.layer_names(params)
    kernels = [params[n]["kernel"] for n in names]
    posts = [acts[n]["kernel"].post for n in names]
    out = {
      "orthonormality_error": jnp.stack(
        [orthonormality_error(k) for k in kernels]
      ),
      "participation_ratio": jnp.stack([participation_ratio(y) for y in posts]),
      "activation_norm": jnp.stack(
        [jnp.linalg.norm(y, axis=-1).mean() for y in posts]
      ),
      "weight_norm": jnp.stack([jnp.linalg.norm(k) for k in kernels]),
    }
    if getattr(model, "feedback", "backprop") != "backprop":
      out["feedback_cosine"] = feedback_cosines(
        model, params, model_state, x_MxD[:num_inputs], y_M[:num_inputs]
      )
    return out

  return diagnostics

"""Flax Linen models that return their activity as an ``ojax.Trace`` tree.

``MLP.apply(variables, x_BxD)`` returns ``(logits_BxC, activations)`` where
``activations`` has the structure of ``variables['params']``: at each kernel an
``ojax.Trace(pre, post)`` (``pre`` the layer input, ``post`` its output after
the nonlinearity; for the output layer ``softmax(logits)`` by default, as in
the reference formulation), ``None`` at biases and norm parameters. The tree
feeds straight into ``ojax.oja``'s ``activations=`` argument.

``RNN.apply(variables, x_BxTxD)`` returns ``(o_BxTxO, activations)`` with
``Trace(x_t, h_t)`` at ``W_in`` and ``Trace(h_{t-1}, h_t)`` at ``W_rec`` (per
time step; the rule averages over batch and time) and ``None`` at the readout.

Linen is used (not NNX) because its modules are pure functions of explicit
variables, which is what ``jit(vmap(scan(...)))`` over seeds wants.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ojax.rules import Trace

__all__ = [
  "activation_fn",
  "ACTIVATIONS",
  "Dense",
  "feedback_matmul",
  "FEEDBACKS",
  "hidden_mask",
  "kernel_init",
  "KERNEL_INITS",
  "layer_names",
  "MLP",
  "orthogonal_init",
  "OUTPUT_POSTS",
  "RNN",
  "RNN_ACTIVATIONS",
]

ACTIVATIONS = ("softplus", "relu", "tanh", "identity")
KERNEL_INITS = ("xavier_uniform", "xavier_normal", "he", "lecun", "orthogonal")
OUTPUT_POSTS = ("softmax", "logits")
FEEDBACKS = ("backprop", "random")


def orthogonal_init() -> Callable[..., jax.Array]:
  """Haar-random orthonormal columns (or rows, for wide kernels).

  The polar factor ``U = A (A^T A)^{-1/2}`` of a Gaussian matrix ``A`` is
  Haar-distributed, like the sign-corrected QR factor that
  ``nn.initializers.orthogonal`` computes. We compute it with the Newton-Schulz
  iteration ``X <- 1.5 X - 0.5 X X^T X`` (matrix products only): on XLA:CPU,
  programs with several LAPACK QR calls (one per layer, under ``jit(vmap)``)
  were seen to deadlock.
  """

  def init(key, shape, dtype=jnp.float32):
    rows, cols = shape
    a = jax.random.normal(key, (max(rows, cols), min(rows, cols)), jnp.float32)
    x = a / jnp.linalg.norm(a)  # Every singular value now lies in (0, 1].

    def step(x, _):
      return 1.5 * x - 0.5 * x @ (x.T @ x), None

    x, _ = jax.lax.scan(step, x, None, length=80)
    return (x if rows >= cols else x.T).astype(dtype)

  return init


_INITS: dict[str, Callable[..., Any]] = {
  "xavier_uniform": nn.initializers.xavier_uniform,
  "xavier_normal": nn.initializers.xavier_normal,
  "he": nn.initializers.he_normal,
  "lecun": nn.initializers.lecun_normal,
  "orthogonal": orthogonal_init,
}


def _choice(field: str, value: str, allowed: Sequence[str]) -> str:
  if value not in allowed:
    raise ValueError(
      f"{field}={value!r} is not known; choose one of {', '.join(allowed)}."
    )
  return value


def activation_fn(
  name: str, beta: float = 10.0
) -> Callable[[jax.Array], jax.Array]:
  """The nonlinearity ``name``; softplus is ``log(1 + exp(beta z)) / beta``."""
  _choice("activation", name, ACTIVATIONS)
  if name == "softplus":
    return lambda z: jax.nn.softplus(beta * z) / beta
  if name == "relu":
    return jax.nn.relu
  if name == "tanh":
    return jnp.tanh
  return lambda z: z


def kernel_init(name: str, gain: float = 1.0) -> Callable[..., jax.Array]:
  """Initializer ``name`` (see ``KERNEL_INITS``) scaled by ``gain``."""
  base = _INITS[_choice("kernel_init", name, KERNEL_INITS)]()

  def init(key, shape, dtype=jnp.float32):
    return gain * base(key, shape, dtype)

  return init


@jax.custom_vjp
def feedback_matmul(
  x_BxI: jax.Array, k_IxO: jax.Array, b_IxO: jax.Array
) -> jax.Array:
  """``x @ K`` whose backward pass sends errors through ``B``, not ``K``.

  This is feedback alignment (Lillicrap et al., 2016): the error reaching the
  layer below is ``e @ B^T``; the kernel's own gradient is the usual
  ``x^T e``. ``B`` gets no gradient.
  """
  return x_BxI @ k_IxO


def _feedback_fwd(x_BxI, k_IxO, b_IxO):
  return x_BxI @ k_IxO, (x_BxI, b_IxO)


def _feedback_bwd(res, e_BxO):
  x_BxI, b_IxO = res
  return e_BxO @ b_IxO.T, x_BxI.T @ e_BxO, jnp.zeros_like(b_IxO)


feedback_matmul.defvjp(_feedback_fwd, _feedback_bwd)


class Dense(nn.Module):
  """A dense layer with optional fixed random feedback (feedback alignment)."""

  features: int
  use_bias: bool = False
  # A field named like Module.init, which it shadows on instances (public).
  init: str = "xavier_uniform"  # type: ignore[assignment]
  gain: float = 1.0
  feedback: str = "backprop"

  @nn.compact
  def __call__(self, x_BxI: jax.Array) -> jax.Array:
    shape = (x_BxI.shape[-1], self.features)
    init = kernel_init(self.init, self.gain)
    k_IxO = self.param("kernel", init, shape)
    if _choice("feedback", self.feedback, FEEDBACKS) == "random":
      b_IxO = self.variable(
        "feedback", "kernel", lambda: init(self.make_rng("params"), shape)
      ).value
      z_BxO = feedback_matmul(x_BxI, k_IxO, b_IxO)
    else:
      z_BxO = x_BxI @ k_IxO
    if self.use_bias:
      z_BxO = z_BxO + self.param(
        "bias", nn.initializers.zeros, (self.features,)
      )
    return z_BxO


def layer_names(tree: Any) -> list[str]:
  """The :class:`MLP`'s layers ``layer_0, layer_1, ...`` in ``tree``, in order.

  ``tree`` is anything keyed like the MLP's params (params, gradients, a
  Trace tree); other keys (``norm_i``) are left out. The one definition of
  the MLP's layer order (``layer_10`` comes after ``layer_9``).

  >>> layer_names({"layer_10": 0, "layer_9": 0, "norm_0": 0})
  ['layer_9', 'layer_10']
  """
  names = [k for k in tree if k.startswith("layer_")]
  return sorted(names, key=lambda k: int(k.split("_")[1]))


def hidden_mask(params: Any) -> Any:
  """A ``mask=`` that selects all but the :class:`MLP`'s output layer.

  True at every leaf of ``params`` except those of the last ``layer_*``,
  for a rule's ``mask=`` (Oja on the hidden layers only):
  ``ojax.sgd_oja(lr, eta, mask=ojax.models.hidden_mask)``.

  >>> hidden_mask({"layer_0": {"kernel": 0}, "layer_1": {"kernel": 0}})
  {'layer_0': {'kernel': True}, 'layer_1': {'kernel': False}}
  """
  last = layer_names(params)[-1]
  return {
    k: jax.tree.map(lambda _, keep=(k != last): keep, v)
    for k, v in params.items()
  }


class MLP(nn.Module):
  """A multilayer perceptron that returns its activity for plasticity rules.

  Attributes:
    features: widths of the hidden layers followed by the output size.
    activation: hidden nonlinearity, one of ``ACTIVATIONS``.
    beta: softplus sharpness (10 in the reference formulation).
    use_bias: add biases (the reference network has none).
    kernel_init: initializer name, one of ``KERNEL_INITS``.
    gain: factor on the initial kernels (1.0 = the scheme as published).
    output_post: post-synaptic activity recorded for the output layer:
      ``"softmax"`` (reference formulation) or ``"logits"``.
    layer_norm: LayerNorm before each hidden nonlinearity (a "trick").
    feedback: ``"backprop"`` or ``"random"`` (feedback alignment).
  """

  features: Sequence[int]
  activation: str = "softplus"
  beta: float = 10.0
  use_bias: bool = False
  kernel_init: str = "xavier_uniform"
  gain: float = 1.0
  output_post: str = "softmax"
  layer_norm: bool = False
  feedback: str = "backprop"

  @nn.compact
  def __call__(self, x_BxD: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """Returns ``(logits_BxC, activations)``; see the module docstring."""
    _choice("output_post", self.output_post, OUTPUT_POSTS)
    act = activation_fn(self.activation, self.beta)
    activations: dict[str, Any] = {}
    y = x_BxD
    last = len(self.features) - 1
    for i, width in enumerate(self.features):
      name = f"layer_{i}"
      z = Dense(
        width,
        self.use_bias,
        self.kernel_init,
        self.gain,
        self.feedback,
        name=name,
      )(y)
      trace: dict[str, Optional[Trace]] = (
        {"kernel": None, "bias": None} if self.use_bias else {"kernel": None}
      )
      if i == last:
        post = jax.nn.softmax(z) if self.output_post == "softmax" else z
      else:
        if self.layer_norm:
          z = nn.LayerNorm(name=f"norm_{i}")(z)
          activations[f"norm_{i}"] = {"scale": None, "bias": None}
        post = act(z)
      trace["kernel"] = Trace(pre=y, post=post)
      activations[name] = trace
      y = post if i != last else z
    return y, activations


RNN_ACTIVATIONS = ("tanh", "softplus")


class RNN(nn.Module):
  """Vanilla RNN with a linear readout that returns its traces.

  Attributes:
    hidden: number of recurrent units H.
    outputs: readout size O (one unit per delay in the memory task).
    activation: ``tanh`` or ``softplus`` (sharpness ``beta``).
    beta: softplus sharpness.
    input_scale: std of ``W_in`` entries.
    radius: ``W_rec ~ N(0, radius^2 / H)``, whose spectral radius is close to
      ``radius`` for large H (circular law).
  """

  hidden: int = 64
  outputs: int = 10
  activation: str = "tanh"
  beta: float = 10.0
  input_scale: float = 1.0
  radius: float = 1.0

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
    """Returns ``(o_BxTxO, activations)``; see the module docstring."""
    if self.activation not in RNN_ACTIVATIONS:
      raise ValueError(
        f"activation={self.activation!r} is not known; choose "
        f"one of {', '.join(RNN_ACTIVATIONS)}."
      )
    f = activation_fn(self.activation, self.beta)
    d, h = x_BxTxD.shape[-1], self.hidden
    w_in_DxH = self.param(
      "W_in", nn.initializers.normal(self.input_scale), (d, h)
    )
    w_rec_HxH = self.param(
      "W_rec", nn.initializers.normal(self.radius / h**0.5), (h, h)
    )
    w_out_HxO = self.param(
      "W_out", nn.initializers.lecun_normal(), (h, self.outputs)
    )
    b_out_O = self.param("b_out", nn.initializers.zeros, (self.outputs,))
    drive_BxTxH = x_BxTxD @ w_in_DxH

    def step(h_BxH, drive_t_BxH):
      h_new = f(drive_t_BxH + h_BxH @ w_rec_HxH)
      return h_new, (h_BxH, h_new)

    h0_BxH = jnp.zeros(x_BxTxD.shape[:-2] + (h,), x_BxTxD.dtype)
    _, (prev_TxBxH, h_TxBxH) = jax.lax.scan(
      step, h0_BxH, jnp.swapaxes(drive_BxTxH, 0, -2)
    )
    prev_BxTxH = jnp.swapaxes(prev_TxBxH, 0, -2)
    h_BxTxH = jnp.swapaxes(h_TxBxH, 0, -2)
    o_BxTxO = h_BxTxH @ w_out_HxO + b_out_O
    activations = {
      "W_in": Trace(pre=x_BxTxD, post=h_BxTxH),
      "W_rec": Trace(pre=prev_BxTxH, post=h_BxTxH),
      "W_out": None,
      "b_out": None,
    }
    return o_BxTxO, activations

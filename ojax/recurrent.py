"""A vanilla RNN that returns its traces, a memory task, and BPTT training.

Model (Flax kernels, shape ``(fan_in, fan_out)``)::

    h_t = f(x_t W_in + h_{t-1} W_rec),   h_0 = 0,
    o_t = h_t W_out + b_out,

with ``f`` = tanh or softplus. ``RNN.apply`` returns ``(o_BxTxO, activations)``
where ``activations`` is shaped like ``params`` and holds, per time step,

    W_in:  Trace(pre = x_t,     post = h_t)
    W_rec: Trace(pre = h_{t-1}, post = h_t)

(``None`` at the readout), so ``ojax.oja`` applied to the recurrent matrix is
``dW_rec = eta * mean_{b,t} outer(h_{t-1} - W_rec h_t, h_t)``.

Task (short-term memory of a random stream): ``u_t ~ U(-1, 1)``; the readout
has one unit per delay ``k = 1..K`` with target ``u_{t-k}`` (defined for
``t >= k``). Memory capacity on a held-out stream is

    MC = sum_k r_k^2,   r_k = corr(u_{t-k}, o_{t,k}),

and ``R^2_k = 1 - MSE_k / Var(u)``. Training: BPTT on fresh random sequences,
plain SGD, optionally plus Oja on ``W_rec`` and/or ``W_in`` (``optax.sgd``
chained with ``ojax.oja`` per kernel), one compiled ``jit(vmap over
runs(scan over steps))`` per evaluation chunk.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ojax import metrics as metrics_lib
from ojax import models
from ojax import rules

RNN_ACTIVATIONS = ("tanh", "softplus")
OJA_KERNELS = ("W_rec", "W_in")


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
      raise ValueError(f"activation={self.activation!r} is not known; choose "
                       f"one of {', '.join(RNN_ACTIVATIONS)}.")
    f = models.activation_fn(self.activation, self.beta)
    d, h = x_BxTxD.shape[-1], self.hidden
    w_in_DxH = self.param("W_in", nn.initializers.normal(self.input_scale),
                          (d, h))
    w_rec_HxH = self.param(
        "W_rec", nn.initializers.normal(self.radius / np.sqrt(h)), (h, h))
    w_out_HxO = self.param("W_out", nn.initializers.lecun_normal(),
                           (h, self.outputs))
    b_out_O = self.param("b_out", nn.initializers.zeros, (self.outputs,))
    drive_BxTxH = x_BxTxD @ w_in_DxH

    def step(h_BxH, drive_t_BxH):
      h_new = f(drive_t_BxH + h_BxH @ w_rec_HxH)
      return h_new, (h_BxH, h_new)

    h0_BxH = jnp.zeros(x_BxTxD.shape[:-2] + (h,), x_BxTxD.dtype)
    _, (prev_TxBxH, h_TxBxH) = jax.lax.scan(
        step, h0_BxH, jnp.swapaxes(drive_BxTxH, 0, -2))
    prev_BxTxH = jnp.swapaxes(prev_TxBxH, 0, -2)
    h_BxTxH = jnp.swapaxes(h_TxBxH, 0, -2)
    o_BxTxO = h_BxTxH @ w_out_HxO + b_out_O
    activations = {
        "W_in": rules.Trace(pre=x_BxTxD, post=h_BxTxH),
        "W_rec": rules.Trace(pre=prev_BxTxH, post=h_BxTxH),
        "W_out": None,
        "b_out": None,
    }
    return o_BxTxO, activations


def oja_activations(activations: dict[str, Any],
                    kernels: Sequence[str]) -> dict[str, Any]:
  """Keeps the traces of ``kernels`` (subset of ``OJA_KERNELS``), else None."""
  return {k: (v if k in kernels else None) for k, v in activations.items()}


class MemoryBatch(NamedTuple):
  """Inputs, delayed targets and the mask of defined targets."""

  u_BxTx1: jax.Array
  target_BxTxK: jax.Array
  mask_TxK: jax.Array  # 1 where t >= k (target u_{t-k} exists).


def memory_batch(key: jax.Array, batch: int, length: int,
                 delays: int) -> MemoryBatch:
  """A batch of random streams ``u ~ U(-1, 1)`` and targets ``u_{t-k}``."""
  u_BxT = jax.random.uniform(key, (batch, length), minval=-1.0, maxval=1.0)
  k_K = jnp.arange(1, delays + 1)
  t_T = jnp.arange(length)
  src_TxK = jnp.clip(t_T[:, None] - k_K[None, :], 0, length - 1)
  mask_TxK = (t_T[:, None] >= k_K[None, :]).astype(u_BxT.dtype)
  target_BxTxK = u_BxT[:, src_TxK] * mask_TxK
  return MemoryBatch(u_BxT[..., None], target_BxTxK, mask_TxK)


def memory_loss(out_BxTxK: jax.Array, batch: MemoryBatch) -> jax.Array:
  """Mean squared recall error over defined (t, k) pairs and the batch."""
  err = (out_BxTxK - batch.target_BxTxK) ** 2 * batch.mask_TxK
  return jnp.sum(err) / (out_BxTxK.shape[0] * jnp.sum(batch.mask_TxK))


def memory_scores(out_BxTxK: jax.Array, batch: MemoryBatch,
                  washout: int) -> dict[str, jax.Array]:
  """Per-delay squared correlation ``r_k^2``, ``R^2_k`` and ``MC``.

  Time steps ``t < washout`` (>= K) are skipped so every target is defined.
  """
  o_NxK = out_BxTxK[:, washout:].reshape(-1, out_BxTxK.shape[-1])
  y_NxK = batch.target_BxTxK[:, washout:].reshape(o_NxK.shape)
  oc, yc = o_NxK - o_NxK.mean(0), y_NxK - y_NxK.mean(0)
  cov_K = jnp.mean(oc * yc, 0)
  r2_K = cov_K ** 2 / jnp.maximum(jnp.mean(oc ** 2, 0) * jnp.mean(yc ** 2, 0),
                                  1e-12)
  rsq_K = 1.0 - jnp.mean((o_NxK - y_NxK) ** 2, 0) / jnp.mean(yc ** 2, 0)
  r2_K = jnp.where(jnp.isfinite(r2_K), r2_K, 0.0)
  return {"r2_per_delay": r2_K, "R2_per_delay": rsq_K,
          "memory_capacity": jnp.sum(r2_K)}


def spectral_diagnostics(w_rec_HxH: jax.Array,
                         h_NxH: jax.Array) -> dict[str, jax.Array]:
  """Spectrum of ``W_rec`` and the dimension of the hidden activity.

  Returns the spectral radius ``max |lambda(W_rec)|``, the singular values of
  ``W_rec`` (descending), ``||W^T W - I||_F / sqrt(H)`` and the participation
  ratio ``tr(C)^2 / tr(C^2)`` of the hidden-state covariance ``C``.
  """
  eig = jnp.linalg.eigvals(w_rec_HxH)
  return {
      "spectral_radius": jnp.max(jnp.abs(eig)),
      "singular_values": jnp.linalg.svd(w_rec_HxH, compute_uv=False),
      "orthonormality_error": metrics_lib.orthonormality_error(w_rec_HxH),
      "participation_ratio": metrics_lib.participation_ratio(h_NxH),
      "hidden_norm": jnp.mean(jnp.linalg.norm(h_NxH, axis=-1)),
  }


class Setting(NamedTuple):
  """Per-run scalars that can be vmapped: rates and the initial radius."""

  lr: jax.Array  # SGD rate.
  oja_rec: jax.Array  # Oja rate on W_rec (0: none).
  oja_in: jax.Array  # Oja rate on W_in (0: none).
  radius: jax.Array


class RunState(NamedTuple):
  params: Any
  opt_state: Any
  key: jax.Array
  diverged_at: jax.Array  # First step with a non-finite loss, or -1.


def _routed(kernel: str, tx: optax.GradientTransformationExtraArgs
            ) -> optax.GradientTransformationExtraArgs:
  """``tx`` that sees only ``kernel``'s trace in ``activations``."""
  def update(updates, state, params=None, *, activations=None, **extra):
    return tx.update(updates, state, params,
                     activations=oja_activations(activations, (kernel,)),
                     **extra)
  return optax.GradientTransformationExtraArgs(tx.init, update)


def make_tx(setting: Setting) -> optax.GradientTransformation:
  """Plain SGD plus Oja, one forward pass, a rate per recurrent kernel.

  ``dW_rec = -lr dL/dW_rec + oja_rec * oja_term(W_rec; h_{t-1}, h_t)`` and
  ``dW_in = -lr dL/dW_in + oja_in * oja_term(W_in; x_t, h_t)``; the readout
  follows SGD only.
  """
  return optax.chain(optax.sgd(setting.lr),
                     _routed("W_rec", rules.oja(setting.oja_rec)),
                     _routed("W_in", rules.oja(setting.oja_in)))


def init_run(model: RNN, setting: Setting, key: jax.Array) -> RunState:
  """Initializes one run; ``W_rec`` is drawn at radius 1 and rescaled."""
  init_key, data_key = jax.random.split(key)
  params = model.clone(radius=1.0).init(
      init_key, jnp.zeros((1, 1, 1), jnp.float32))["params"]
  params = dict(params, W_rec=params["W_rec"] * setting.radius)
  return RunState(params, make_tx(setting).init(params), data_key,
                  jnp.array(-1, jnp.int32))


def train_chunk(model: RNN, setting: Setting, state: RunState,
                start: jax.Array, *, num_steps: int, batch: int,
                length: int) -> tuple[RunState, jax.Array]:
  """``num_steps`` BPTT steps on fresh sequences; returns the mean loss."""
  tx = make_tx(setting)
  delays = model.outputs

  def loss_fn(params, data):
    out, acts = model.apply({"params": params}, data.u_BxTx1)
    return memory_loss(out, data), acts

  def step(carry, t):
    params, opt_state, diverged_at = carry
    data = memory_batch(jax.random.fold_in(state.key, t), batch, length,
                        delays)
    (loss, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params,
                                                                    data)
    updates, opt_state = tx.update(grads, opt_state, params,
                                   activations=acts)
    params = optax.apply_updates(params, updates)
    diverged_at = jnp.where((diverged_at < 0) & ~jnp.isfinite(loss), t,
                            diverged_at)
    return (params, opt_state, diverged_at), loss

  (params, opt_state, diverged_at), losses = jax.lax.scan(
      step, (state.params, state.opt_state, state.diverged_at),
      start + jnp.arange(num_steps))
  return state._replace(params=params, opt_state=opt_state,
                        diverged_at=diverged_at), jnp.mean(losses)


def evaluate(model: RNN, params: Any, data: MemoryBatch) -> dict[str, Any]:
  """Memory scores and spectral diagnostics on a held-out batch."""
  out, acts = model.apply({"params": params}, data.u_BxTx1)
  washout = model.outputs
  scores = memory_scores(out, data, washout)
  h_NxH = acts["W_rec"].post[:, washout:].reshape(-1, model.hidden)
  scores.update(spectral_diagnostics(params["W_rec"], h_NxH))
  scores["test_loss"] = memory_loss(out, data)
  return scores


def run(model: RNN, settings: Setting, keys_G: jax.Array, *, num_steps: int,
        eval_every: int, batch: int, length: int, eval_batch: int,
        eval_length: int, eval_key: jax.Array,
        on_chunk: Optional[Callable[[int, dict[str, np.ndarray]], None]] = None
        ) -> dict[str, np.ndarray]:
  """Trains G runs (settings x seeds) in lock-step; evaluates every chunk.

  Args:
    model: the RNN (its ``radius`` is ignored; ``settings.radius`` is used).
    settings: a :class:`Setting` of arrays shaped ``(G,)``.
    keys_G: one PRNG key per run (paired across settings by the caller).
    num_steps: SGD steps per run; ``eval_every`` steps per compiled chunk.
    batch, length: sequences per step and their length (BPTT horizon).
    eval_batch, eval_length: the held-out streams, drawn from ``eval_key``,
      the same for every run.
    on_chunk: host callback ``(steps_done, history)`` after each chunk.

  Returns:
    ``history``: ``steps`` (E,) and per-run metrics shaped ``(E, G, ...)``.
  """
  eval_data = memory_batch(eval_key, eval_batch, eval_length, model.outputs)
  states = jax.jit(jax.vmap(functools.partial(init_run, model)))(settings,
                                                                  keys_G)
  eval_all = jax.jit(jax.vmap(lambda s: dict(
      evaluate(model, s.params, eval_data), diverged_at=s.diverged_at)))

  @functools.partial(jax.jit, static_argnames="n")
  def chunk(states, start, *, n):
    def one(setting, state):
      return train_chunk(model, setting, state, start, num_steps=n,
                         batch=batch, length=length)
    states, loss = jax.vmap(one)(settings, states)
    return states, loss

  first = jax.device_get(eval_all(states))
  rows = [{"steps": 0, "train_loss": np.full(len(keys_G), np.nan), **first}]
  done = 0
  while done < num_steps:
    n = min(eval_every, num_steps - done)
    states, loss = chunk(states, jnp.asarray(done, jnp.int32), n=n)
    done += n
    rows.append({"steps": done, "train_loss": np.asarray(loss),
                 **jax.device_get(eval_all(states))})
    history = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
    if on_chunk is not None:
      on_chunk(done, history)
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}

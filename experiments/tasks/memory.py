"""The short-term memory task for ``ojax.models.RNN``, as an ``ojax.train.Task``.

Task: ``u_t ~ U(-1, 1)``; the readout has one unit per delay ``k = 1..K``
with target ``u_{t-k}`` (defined for ``t >= k``). Memory capacity on held-out
streams is

    MC = sum_k r_k^2,   r_k = corr(u_{t-k}, o_{t,k}),

and ``R^2_k = 1 - MSE_k / Var(u)``. Training: BPTT on fresh random sequences
(drawn from the seed's key and the step index), any optax transform; with
``ojax.oja`` masked to ``W_rec`` the recurrent matrix changes by
``eta * mean_{b,t} outer(h_{t-1} - W_rec h_t, h_t)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ojax import metrics as metrics_lib
from ojax import models
from ojax import train


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


def example_input() -> jax.Array:
  """What ``ojax.train.init_state`` initializes the RNN on."""
  return jnp.zeros((1, 1, 1), jnp.float32)


def memory_task(model: models.RNN, tx: optax.GradientTransformation, *,
                batch_size: int, length: int, diagnostics: bool = True
                ) -> train.Task:
  """BPTT on ``batch_size`` fresh sequences of ``length`` steps per update.

  The evaluation data (``MemoryBatch`` of held-out streams, the same for
  every run) is the ``data`` argument of ``ojax.train.run``. The step's
  ``train_loss`` is the batch's recall MSE.
  """
  delays = model.outputs

  def loss_fn(params, batch):
    out, acts = model.apply({"params": params}, batch.u_BxTx1)
    return memory_loss(out, batch), acts

  def step(state: train.TrainState, t: jax.Array, data: Any):
    del data
    batch = memory_batch(jax.random.fold_in(state.data_key, t), batch_size,
                         length, delays)
    (loss, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   activations=acts)
    params = optax.apply_updates(state.params, updates)
    return state._replace(params=params, opt_state=opt_state), {
        "train_loss": loss}

  def evaluate(state: train.TrainState, data: MemoryBatch):
    out, acts = model.apply({"params": state.params}, data.u_BxTx1)
    scores = memory_scores(out, data, delays)
    scores["test_loss"] = memory_loss(out, data)
    if diagnostics:
      h_NxH = acts["W_rec"].post[:, delays:].reshape(-1, model.hidden)
      scores.update(spectral_diagnostics(state.params["W_rec"], h_NxH))
    return scores

  return train.Task(step, evaluate, None, batch_size)

"""A fused BP + Oja online step for :class:`ojax.models.MLP` (the fast path).

:func:`ojax.train.generic_classifier_step` runs any model with any optax
transform: autodiff, then ``tx.update`` walks the parameter tree, then
``optax.apply_updates``. For the paper's case, an MLP trained by SGD plus
Oja's rule, that costs several passes over every kernel per sample (forward,
backprop, the Oja residual, the gradient and the Oja term as separate updates)
and XLA:CPU emits slow code for some of them. :func:`select_step` returns a
step that computes the same update in fewer passes:

* **One update per kernel.** For a kernel ``W`` (stored ``(fan_out, fan_in)``
  inside a chunk, see below) with input ``x``, output ``y`` and output error
  ``d = dL/dz`` (``d`` carries the ``1/B`` of the batch mean),

      W <- W - lr * d^T x + (eta / B) * y^T (x - y W)

  is one elementwise pass (a rank-2 update for batch 1) that reads and writes
  ``W`` once; the gradient and the Oja term are never materialized.
* **One read for backprop and the residual.** ``[d; y] @ W`` gives both the
  error sent to the layer below (``d @ W``) and ``y @ W`` for the Oja residual
  ``x - y W`` in one pass over ``W``. The input layer needs no backprop, so
  its residual is the only extra read. A step is then: one read per kernel
  (forward), one read (backprop + residual), one read-write (update).
* **A layout that suits XLA:CPU.** Inside a chunk the kernels are stored
  transposed, ``(fan_out, fan_in)`` row-major: the forward pass is a plain
  matrix-vector product, the backward pass a vector-matrix product, and the
  update walks rows of length ``fan_in``. :class:`FusedStep` has ``enter`` /
  ``exit`` hooks that :func:`ojax.train.classifier_task` wires into the loop:
  they transpose the kernels once per chunk, so outside a chunk (evaluation,
  checkpoints, ``Progress``) the state has the usual Flax layout and is
  interchangeable with the generic path's.
* **Every vector the update reads is materialized.** XLA fuses cheap
  elementwise producers into their consumers; into a kernel-sized update loop
  that means recomputing the activation (or re-gathering the input sample) for
  every weight, which also stops vectorization (measured: 10-30x slower update
  loops). Dividing each such vector by a runtime ``1.0`` (an "expensive" op
  XLA will not duplicate; exact in IEEE arithmetic) keeps it a buffer.
* **Single-threaded friendly.** Nothing in the step benefits from XLA's
  intra-op threads; run one worker per core for sweeps (see
  docs/performance.md).

Math (checked against the generic path by tests/test_fused.py to float
tolerance): per kernel ``K`` (Flax ``(fan_in, fan_out)``), with ``x`` the
layer input and ``y`` its post-synaptic activity (softmax for the output layer
by default), ``K <- K - lr * dL/dK + eta * mean_b outer(x - K y, y)``, both
terms from the forward pass with the old weights, cross-entropy loss.

What it accepts (anything else: :func:`select_step` returns ``None`` and the
generic path runs):

* model: :class:`ojax.models.MLP` with any ``activation`` of
  ``ACTIVATIONS`` (softplus with any beta, relu, tanh, identity), any
  ``kernel_init``/``gain``, ``output_post`` ``"softmax"`` or ``"logits"``,
  ``use_bias=False``, ``layer_norm=False``, ``feedback="backprop"``;
* optimizer: ``optax.inject_hyperparams`` of SGD, or of SGD chained with
  ``ojax.oja`` on every layer or (through ``optax.masked``) on the hidden
  layers only, with hyperparameters named ``learning_rate`` and
  ``oja_learning_rate`` (what ``experiments/config.py`` builds and
  :func:`sgd_oja` here returns). Rates are read from the optimizer state at
  every step, so vmapped sweeps over them and schedules work;
* any batch size.

The optimizer state is advanced by the transform's own ``update`` (its
update values are dead code XLA removes), so counters and hyperparameters
after a fused step are exactly what the generic path leaves.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ojax import models
from ojax import rules
from ojax import train

OJA_LAYERS = ("all", "hidden", "none")
_log = logging.getLogger("ojax")
# Batch sizes up to this update each kernel with one elementwise pass of
# 2 * batch rank-1 terms; larger batches use a matrix product.
_MAX_ELEMENTWISE_BATCH = 4


def sgd_oja(learning_rate: float, oja_learning_rate: float, *,
            oja_layers: str = "all") -> optax.GradientTransformation:
  """SGD + Oja as the fused step recognizes it (rates in the state).

  ``optax.inject_hyperparams`` of ``chain(sgd(learning_rate),
  ojax.oja(oja_learning_rate))``, the Oja term masked to the hidden layers if
  ``oja_layers="hidden"``. Numerically the same as ``ojax.sgd_oja``.
  """
  if oja_layers not in ("all", "hidden"):
    raise ValueError(f"oja_layers={oja_layers!r}; choose all or hidden.")

  def make(learning_rate, oja_learning_rate):
    oja = rules.oja(oja_learning_rate)
    if oja_layers == "hidden":
      oja = optax.masked(oja, hidden_mask)
    return optax.chain(optax.sgd(learning_rate), oja)

  return optax.inject_hyperparams(make)(
      learning_rate=learning_rate, oja_learning_rate=oja_learning_rate)


def hidden_mask(params: Any) -> Any:
  """True for every parameter except those of the last ``layer_*``."""
  layers = [k for k in params if k.startswith("layer_")]
  last = max(layers, key=lambda k: int(k.split("_")[1]))
  return {k: jax.tree.map(lambda _, keep=(k != last): keep, v)
          for k, v in params.items()}


# --- What the fast path accepts ------------------------------------------


def model_unsupported(model: Any) -> Optional[str]:
  """Why ``model`` cannot take the fused step, or ``None`` if it can."""
  if type(model) is not models.MLP:  # pylint: disable=unidiomatic-typecheck
    return f"model is a {type(model).__name__}, not ojax.models.MLP"
  checks = (
      (model.activation in models.ACTIVATIONS, "activation"),
      (not model.use_bias, "use_bias"),
      (not model.layer_norm, "layer_norm"),
      (model.feedback == "backprop", "feedback"),
      (model.output_post in ("softmax", "logits"), "output_post"),
      (len(model.features) >= 1, "features"),
  )
  for ok, field in checks:
    if not ok:
      return f"MLP.{field}={getattr(model, field)!r} is not supported"
  return None


def _layer_names(params: Any) -> list[str]:
  return sorted(params, key=lambda s: int(s.split("_")[1]))


def _probe(model: nn.Module, tx: optax.GradientTransformation,
           input_dim: int) -> Optional[str]:
  """Which Oja layers ``tx`` applies ("all", "hidden", "none"), or None.

  Runs two updates of ``tx`` from ``tx.init`` on random parameters, gradients
  and traces (kernel shapes of ``model``) and checks each against
  ``-lr * g + eta * oja_term`` with the rates the transform reports in its
  state. ``None`` if it matches none of them (Adam, momentum, weight decay,
  other hyperparameters, rates not in the state, ...).
  """
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0),
                         jnp.zeros((1, input_dim), jnp.float32)))["params"]
  names = _layer_names(shapes)
  rng = np.random.default_rng(0)

  def rand(shape, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)

  params = {n: {"kernel": rand(shapes[n]["kernel"].shape, 0.3)} for n in names}
  state = tx.init(params)
  hyper = getattr(state, "hyperparams", None)
  if not isinstance(hyper, dict) or "learning_rate" not in hyper or (
      set(hyper) - {"learning_rate", "oja_learning_rate"}):
    return None
  # Rates the probe can tell apart from each other and from zero.
  probe = {"learning_rate": 0.375, "oja_learning_rate": 0.625}
  state = state._replace(hyperparams={
      k: jnp.asarray(probe[k], jnp.asarray(v).dtype) for k, v in hyper.items()})
  found = None
  for _ in range(2):
    grads = {n: {"kernel": rand(params[n]["kernel"].shape)} for n in names}
    traces = {}
    for n in names:
      fan_in, fan_out = params[n]["kernel"].shape
      traces[n] = {"kernel": rules.Trace(rand((3, fan_in)),
                                         rand((3, fan_out)))}
    try:
      updates, state = tx.update(grads, state, params, activations=traces)
    except Exception:  # pylint: disable=broad-except
      return None
    lr = float(state.hyperparams["learning_rate"])
    eta = float(state.hyperparams.get("oja_learning_rate", 0.0))
    if lr == 0.0:
      return None
    matches = []
    for layers in OJA_LAYERS:
      if layers != "none" and eta == 0.0:
        continue
      if layers == "none" and "oja_learning_rate" in state.hyperparams and (
          eta != 0.0):
        continue
      with_oja = {"all": names, "hidden": names[:-1], "none": []}[layers]
      ok = True
      for n in names:
        want = -lr * grads[n]["kernel"]
        if n in with_oja:
          want = want + eta * rules.oja_term(params[n]["kernel"],
                                             traces[n]["kernel"])
        got = updates[n]["kernel"]
        if got.shape != want.shape or not np.allclose(
            np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5):
          ok = False
          break
      if ok:
        matches.append(layers)
    if len(matches) != 1 or (found is not None and matches[0] != found):
      return None
    found = matches[0]
    params = jax.tree.map(lambda p, u: p + 0.1 * u, params, updates)
  return found


def select_step(model: nn.Module, tx: optax.GradientTransformation, *,
                input_dim: Optional[int] = None, batch_size: int = 1,
                optimizer: Optional[str] = None,
                oja_layers: Optional[str] = None) -> Optional["FusedStep"]:
  """The fused step for ``(model, tx)``, or ``None`` if it does not apply.

  Args:
    model: the network (see the module docstring for what is accepted).
    tx: the optimizer. It is checked numerically (two probe updates from
      ``tx.init``) against SGD + Oja on all layers, on the hidden layers,
      and plain SGD, reading the rates from its state.
    input_dim: the model's input size (kernels' shapes for the probe);
      default: 1 (any works for the probe's purpose except that hidden
      kernels' shapes must follow; the input layer's fan-in is free).
    batch_size: samples per step (any).
    optimizer: the description the caller built ``tx`` from, if known
      (``"sgd"``; anything else returns ``None`` without probing).
    oja_layers: ``"all"``, ``"hidden"`` or ``"none"`` if known; the probe
      must agree, else ``None``.

  Returns:
    A :class:`FusedStep` to pass as ``ojax.train.classifier_task(...,
    step=...)``, or ``None`` (use the generic step).
  """
  if optimizer is not None and optimizer != "sgd":
    return None
  if oja_layers is not None and oja_layers not in OJA_LAYERS:
    raise ValueError(f"oja_layers={oja_layers!r}; choose one of "
                     f"{', '.join(OJA_LAYERS)}.")
  why = model_unsupported(model)
  if why is not None:
    _log.debug("fused step not used: %s", why)
    return None
  found = _probe(model, tx, input_dim or 1)
  if found is None or (oja_layers is not None and found != oja_layers):
    _log.debug("fused step not used: the optimizer is not SGD + Oja "
               "(%s) with rates in its state", oja_layers or "any layers")
    return None
  return FusedStep(model, tx, found, batch_size)


# --- The step ------------------------------------------------------------


def _transpose_kernels(params: Any) -> Any:
  return {k: {**v, "kernel": jnp.swapaxes(v["kernel"], -1, -2)}
          for k, v in params.items()}


_ONES = "fused_ones"  # Key of the step's scratch in model_state (in a chunk).


def _mat(v: jax.Array, ones: Optional[jax.Array] = None) -> jax.Array:
  """``v`` as a buffer of its own: ``v / ones`` with runtime ones.

  XLA does not duplicate a divide into its consumers, so a kernel-sized
  update loop reads ``v`` instead of recomputing its producers for every
  weight (measured: 10-30x slower update loops otherwise, as the recomputed
  activations or sample gathers also stop vectorization). ``ones`` must be a
  runtime array of ones shaped like ``v``, made by :meth:`FusedStep.enter`
  (a constant, scalar or broadcast denominator would be folded or rewritten
  as a multiply and fused again). Without it, ``1 + 0 * v`` serves (one more
  op per call). Exact: ``v / 1 == v``.
  """
  if ones is None or ones.shape != v.shape:
    ones = 1.0 + 0.0 * v
  return v / ones


class FusedStep:
  """``step(state, idx_B, data)`` of the fused path, plus layout hooks.

  ``enter``/``exit`` turn a :class:`ojax.train.TrainState` into the chunk
  layout (kernels ``(fan_out, fan_in)``) and back; the step itself works on
  the chunk layout. :func:`ojax.train.classifier_task` wires all three.
  """

  def __init__(self, model: models.MLP, tx: optax.GradientTransformation,
               oja_layers: str, batch_size: int = 1):
    self.model = model
    self.tx = tx
    self.oja_layers = oja_layers
    self.batch_size = batch_size
    self.activation = models.activation_fn(model.activation, model.beta)

  def _oja_on(self, num_layers: int) -> range:
    return {"all": range(num_layers), "hidden": range(num_layers - 1),
            "none": range(0)}[self.oja_layers]

  def __repr__(self) -> str:
    return (f"FusedStep(features={tuple(self.model.features)}, "
            f"activation={self.model.activation!r}, "
            f"oja_layers={self.oja_layers!r})")

  def enter(self, state: train.TrainState) -> train.TrainState:
    """Flax layout -> chunk layout: kernels transposed, plus scratch."""
    params = _transpose_kernels(state.params)
    names = _layer_names(params)
    # Runtime ones (see _mat): derived from the weights so XLA cannot fold
    # them; nan_to_num keeps them finite whatever the weights hold.
    w0 = params[names[0]]["kernel"]
    one = 1.0 + 0.0 * jnp.nan_to_num(w0[0, 0])
    oja_on = self._oja_on(len(names))
    ones = {}
    for l, n in enumerate(names):
      fan_out, fan_in = params[n]["kernel"].shape
      k = (2 if l in oja_on else 1) * self.batch_size
      ones[n] = {"rows": jnp.full((k, fan_out), one, w0.dtype),
                 "cols": jnp.full((k, fan_in), one, w0.dtype)}
    return state._replace(params=params,
                          model_state={**state.model_state, _ONES: ones})

  def exit(self, state: train.TrainState) -> train.TrainState:
    """Chunk layout -> Flax layout."""
    model_state = {k: v for k, v in state.model_state.items() if k != _ONES}
    return state._replace(params=_transpose_kernels(state.params),
                          model_state=model_state)

  def __call__(self, state: train.TrainState, idx_B: jax.Array,
               data: train.ClassifierData
               ) -> tuple[train.TrainState, train.Metrics]:
    names = _layer_names(state.params)
    ws = [state.params[n]["kernel"] for n in names]  # (O, I) each.
    last = len(ws) - 1
    x_BxD = data.train_x[idx_B]
    label_B = data.train_y[idx_B]
    batch = x_BxD.shape[0]

    # The optimizer state, advanced by the transform itself; only the state
    # is used (the update values are dead code). The rates of this step are
    # what it reports in the new state, as the generic path's update used.
    flax_params = {n: {"kernel": w.T} for n, w in zip(names, ws)}
    zero_traces = {n: {"kernel": rules.Trace(
        jnp.zeros((1, w.shape[1]), w.dtype), jnp.zeros((1, w.shape[0]),
                                                      w.dtype))}
                   for n, w in zip(names, ws)}
    _, opt_state = self.tx.update(flax_params, state.opt_state, flax_params,
                                  activations=zero_traces)
    lr = opt_state.hyperparams["learning_rate"]
    eta = opt_state.hyperparams.get("oja_learning_rate",
                                    jnp.zeros_like(lr))
    oja_on = self._oja_on(len(ws))
    ones = state.model_state.get(_ONES, {})

    # Forward: z = x W^T, a matrix-vector product for batch 1.
    pre = [x_BxD.astype(ws[0].dtype)]
    zs, posts = [], []
    for l, w in enumerate(ws):
      z = (w @ pre[l].T).T
      zs.append(z)
      if l < last:
        pre.append(self.activation(z))
        posts.append(pre[-1])
    logits = zs[last]
    # Softmax cross-entropy and its gradient from one exponential.
    shifted = logits - jnp.max(logits, -1, keepdims=True)
    exp = jnp.exp(shifted)
    total = jnp.sum(exp, -1, keepdims=True)
    probs = exp / total
    picked = jnp.take_along_axis(shifted, label_B[:, None], -1)
    loss = jnp.mean(jnp.log(total) - picked)
    onehot = jax.nn.one_hot(label_B, logits.shape[-1], dtype=logits.dtype)
    d = (probs - onehot) / batch  # dL/dz of the output layer.
    posts.append(probs if self.model.output_post == "softmax" else logits)

    # Backward, top layer first: per kernel one read for backprop and the
    # Oja residual together, then one update pass.
    new_ws = [None] * len(ws)
    for l in range(last, -1, -1):
      w = ws[l]
      oja = l in oja_on
      scratch = ones.get(names[l], {})
      rows_KxO = _mat(jnp.concatenate([d] + ([posts[l]] if oja else []), 0),
                      scratch.get("rows"))
      cols = [-lr * pre[l]]
      if l > 0 or oja:
        # [d; y] @ W: the error for the layer below and y W for the residual
        # (the input layer needs only y W).
        back = (rows_KxO if l > 0 else rows_KxO[batch:]) @ w
      if oja:
        cols.append((eta / batch) * (pre[l] - back[-batch:]))
      new_ws[l] = _update(w, rows_KxO,
                          _mat(jnp.concatenate(cols, 0), scratch.get("cols")))
      if l > 0:
        _, act_vjp = jax.vjp(self.activation, zs[l - 1])
        (d,) = act_vjp(back[:batch])

    params = {n: {**state.params[n], "kernel": w}
              for n, w in zip(names, new_ws)}
    correct = jnp.mean(jnp.argmax(logits, -1) == label_B)
    return state._replace(params=params, opt_state=opt_state), {
        "train_loss": loss, "online_accuracy": correct}


def _update(w_OxI: jax.Array, rows_KxO: jax.Array, cols_KxI: jax.Array
            ) -> jax.Array:
  """``w + rows^T @ cols``: one elementwise pass for a small rank."""
  if rows_KxO.shape[0] > 2 * _MAX_ELEMENTWISE_BATCH:
    return w_OxI + rows_KxO.T @ cols_KxI
  out = w_OxI
  for k in range(rows_KxO.shape[0]):
    out = out + rows_KxO[k][:, None] * cols_KxI[k][None, :]
  return out

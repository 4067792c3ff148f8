"""A fused BP + Oja online step for :class:`ojax.models.MLP` (the fast path).

:func:`ojax.train.generic_classifier_step` runs any model with any optax
transform: autodiff, then ``tx.update`` walks the parameter tree, then
``optax.apply_updates``. For the paper's case, an MLP trained by SGD plus
Oja's rule, that costs extra passes over every kernel per sample (the Oja
residual, the gradient and the Oja term as separate updates) and XLA:CPU
emits slow code for some of them. :func:`select_step` returns a step that
computes the same update in fewer, faster passes (measured in BENCHMARKS.md;
how and why in docs/performance.md):

* **One update per kernel.** For a kernel ``W`` stored ``(fan_out, fan_in)``
  (inside a chunk, see below) with input ``x`` (B, fan_in), post-synaptic
  activity ``y`` and output error ``d = dL/dz`` (which carries the ``1/B`` of
  the batch mean), both (B, fan_out),

      W <- W + [d; y]^T @ [-lr x; (eta / B) (x - y W)]

  is one elementwise pass over ``W`` (a rank-2 update for batch 1; batches
  above 4 use a matrix product). The gradient and the Oja term are never
  materialized.
* **One read for backprop and the residual.** ``[d; y] @ W`` gives the error
  for the layer below (``d W``) and ``y W`` for the Oja residual in one pass.
  The input layer needs no backprop: ``y W`` is its only extra read. A step
  is one read of each kernel (forward), one read (backward) and one
  read-write (update); plain SGD skips the input layer's backward read.
* **A layout that suits XLA:CPU.** Inside a chunk the kernels are stored
  transposed, ``(fan_out, fan_in)`` row-major: the forward pass is a plain
  matrix-vector product, the backward pass a vector-matrix product and the
  update walks rows of length ``fan_in``. :class:`FusedStep`'s ``enter`` and
  ``exit`` hooks, which :func:`ojax.train.classifier_task` wires into the
  loop, transpose the kernels once per chunk; outside a chunk (evaluation,
  checkpoints, ``Progress``) the state has the Flax layout and the same
  structure as the generic path's, so the two are interchangeable.
* **Every vector the update reads is a buffer.** XLA fuses cheap elementwise
  producers into their consumers; in a kernel-sized update loop that means
  recomputing the activation (or re-gathering the input sample) for every
  weight, which also stops vectorization (10-30x slower update loops,
  measured). Each layer boundary's vectors are one fusion whose result is
  divided by runtime ones (exact; XLA will not duplicate a divide), so they
  are computed once per step.
* **Single-threaded.** Nothing in the step gains from XLA's intra-op threads;
  unpinned, with XLA's default threads, it runs at about half speed
  (BENCHMARKS.md). Call :func:`ojax.train.single_threaded_cpu` before JAX
  starts (it sets ``--xla_cpu_multi_thread_eigen=false``) and run one
  process per core.

Math (checked against the generic path by tests/test_fused.py to float
tolerance, and against PyTorch by tests/test_bench_equivalence.py): per
Flax kernel ``K`` (fan_in, fan_out), with ``x`` the layer input and ``y`` its
post-synaptic activity (softmax for the output layer by default),
``K <- K - lr * dL/dK + eta * mean_b outer(x - K y, y)``, both terms from
the forward pass with the old weights, cross-entropy loss. Only the order of
floating-point sums differs from the generic path.

With ``ojax.sgd_oja(..., unit_norm=True)`` each unit's incoming weights (a
column of ``K``, a row of the chunk layout's ``W``) are then divided by their
L2 norm (a row of norm 0 is left as it is), on the layers where the mask is
True, as the generic path does. The division is deferred: the chunk holds
``W`` and a row scale ``1 / norm`` (in ``model_state``), the kernel being
``diag(scale) @ W``; the forward pass scales ``W x``, the backward product
takes ``[d; y] @ diag(scale)`` (made in the same fusion as ``[d; y]``), the
update pass is ``diag(scale) @ W + rows^T @ cols`` and the new norms are one
read of the result; ``exit`` applies the scale. The step then costs one read
of each such kernel more (~0.7x the samples/s of a 784-100x10-10 MLP at
batch 1); without ``unit_norm`` nothing of it is traced.

What it accepts (anything else: :func:`select_step` logs one info line
saying why and returns ``None``, and the generic path runs):

* model: :class:`ojax.models.MLP` with any ``activation`` (softplus with any
  beta, relu, tanh, identity), any ``kernel_init``/``gain``, ``output_post``
  ``"softmax"`` or ``"logits"``, ``use_bias=False``, ``layer_norm=False``,
  ``feedback="backprop"``;
* optimizer: :func:`ojax.sgd_oja` itself (an :class:`ojax.SgdOja`, known by
  its type, never probed), with any ``mask`` (Oja on every layer, on the
  hidden layers with ``ojax.models.hidden_mask``, on any subset) or
  ``oja_learning_rate=None`` (plain SGD), with or without ``unit_norm``
  (the projection on the layers of the mask). Its rates live in its state
  and are read from it at every step, so vmapped sweeps over them
  (:func:`ojax.rules.with_rates`) and schedules work. Wrapped in anything
  (``optax.chain``, ``optax.MultiSteps``, ...) it is an ordinary transform;
* any batch size.

The optimizer state is advanced by the transform's own ``update`` (its
update values are dead code that XLA removes), so counters and
hyperparameters after a fused step are exactly the generic path's.
"""

from __future__ import annotations

import logging
from typing import Any, cast, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ojax import models
from ojax import rules
from ojax.state import ClassifierData
from ojax.state import Metrics
from ojax.state import TrainState

__all__ = ["FusedStep", "model_unsupported", "select_step", "unsupported"]

_log = logging.getLogger("ojax")
# Batch sizes up to this update each kernel with one elementwise pass of
# 2 * batch rank-1 terms; larger batches use a matrix product.
_MAX_ELEMENTWISE_BATCH = 4


# --- What the fast path accepts ------------------------------------------


def model_unsupported(model: Any) -> Optional[str]:
  """Why ``model`` cannot take the fused step, or ``None`` if it can."""
  if type(model) is not models.MLP:  # pylint: disable=unidiomatic-typecheck
    return f"the model is a {type(model).__name__}, not ojax.models.MLP"
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


def _made_by(tx: Any) -> str:
  """What built ``tx``, from its update function (``optax.chain``, ...)."""
  update = getattr(tx, "update", None)
  owner = getattr(update, "__self__", None)
  if owner is not None:  # A bound method: optax.MultiSteps(...).update.
    update = type(owner)
  name = getattr(update, "__qualname__", type(tx).__name__)
  module = getattr(update, "__module__", None) or ""
  name = name.split(".<locals>")[0]
  return f"{module.split('.')[0]}.{name}" if module else name


def unsupported(model: Any, tx: Any) -> Optional[str]:
  """Why ``(model, tx)`` cannot take the fused step, or ``None`` if it can.

  Decided by structure only: the model's type and fields, and the
  transform's type (:class:`ojax.SgdOja`, what :func:`ojax.sgd_oja`
  returns).
  """
  why = model_unsupported(model)
  if why is not None:
    return why
  if isinstance(tx, rules.PlasticityRule):
    return "the optimizer is a plasticity rule alone, not ojax.sgd_oja"
  if not isinstance(tx, rules.SgdOja):
    return (
      f"the optimizer (made by {_made_by(tx)}) is not ojax.sgd_oja, the "
      "fused step's transform"
    )
  return None


def select_step(
  model: nn.Module,
  tx: optax.GradientTransformationExtraArgs,
  *,
  batch_size: int = 1,
) -> Optional[FusedStep]:
  """The fused step for ``(model, tx)``, or ``None`` if it does not apply.

  Decided by structure, never by running ``tx``: ``model`` must be an
  :class:`ojax.models.MLP` with the options the module docstring lists and
  ``tx`` the transform :func:`ojax.sgd_oja` returns (any mask, or
  ``oja_learning_rate=None`` for plain SGD). Otherwise one info line on the
  ``"ojax"`` logger says why, e.g. ``ojax: generic step (the fused step
  does not apply): the optimizer (made by optax.chain) is not
  ojax.sgd_oja, the fused step's transform``.

  Args:
    model: the network.
    tx: the optimizer.
    batch_size: samples per step (any).

  Returns:
    A :class:`FusedStep` to pass as ``ojax.train.classifier_task(...,
    step=...)``, or ``None`` (use the generic step).
  """
  why = unsupported(model, tx)
  if why is not None:
    _log.info("ojax: generic step (the fused step does not apply): %s.", why)
    return None
  # unsupported() checked both types.
  return FusedStep(cast(models.MLP, model), cast(rules.SgdOja, tx), batch_size)


# --- The step ------------------------------------------------------------


def _transpose_kernels(params: Any) -> Any:
  return {
    k: {**v, "kernel": jnp.swapaxes(v["kernel"], -1, -2)}
    for k, v in params.items()
  }


_ONES = "fused_ones"  # Key of the step's scratch in model_state (in a chunk).
# Key of the unit-norm layers' row scales in model_state (in a chunk).
_SCALES = "fused_unit_scales"


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

  ``enter``/``exit`` turn a :class:`ojax.TrainState` into the chunk
  layout (kernels ``(fan_out, fan_in)``; with ``unit_norm``, a unit-norm
  layer's kernel is ``diag(scale) @ W`` with its scale in ``model_state``)
  and back; the step itself works on the chunk layout.
  :func:`ojax.train.classifier_task` wires all three.
  """

  def __init__(
    self,
    model: models.MLP,
    tx: rules.SgdOja,
    batch_size: int = 1,
  ):
    self.model = model
    self.tx = tx
    self.batch_size = batch_size
    self.activation = models.activation_fn(model.activation, model.beta)

  def oja_layers(self, params: Any) -> tuple[bool, ...]:
    """Per layer (in order), whether the Oja term acts on its kernel.

    ``params`` in the Flax layout (or anything keyed and shaped like it):
    the transform's mask is evaluated where ``optax.masked`` evaluates it.
    """
    where = self.tx.oja_where(params)
    return tuple(bool(where[n]["kernel"]) for n in models.layer_names(params))

  def norm_layers(self, params: Any) -> tuple[bool, ...]:
    """Per layer (in order), whether its units are projected to unit norm
    (``ojax.sgd_oja(..., unit_norm=True)``, where its mask is True)."""
    where = self.tx.norm_where(params)
    return tuple(bool(where[n]["kernel"]) for n in models.layer_names(params))

  def __repr__(self) -> str:
    return (
      f"FusedStep(features={tuple(self.model.features)}, "
      f"activation={self.model.activation!r}, tx={self.tx!r})"
    )

  def _scratch_shapes(
    self,
    widths: list[int],
    oja_layers: tuple[bool, ...],
    norm_layers: tuple[bool, ...],
  ) -> set[tuple[int, int]]:
    """Shapes of the vectors the step materializes (see ``__call__``)."""
    b, last = self.batch_size, len(widths) - 2
    oja = [int(on) for on in oja_layers]
    # A unit-norm layer's rows come twice: as they are and scaled.
    twice = [1 + int(on) for on in norm_layers]
    shapes = {
      ((1 + oja[0]) * b, widths[0]),
      ((1 + oja[last]) * b * twice[last], widths[last + 1]),
    }
    for l in range(last):
      shapes.add((b, widths[l + 1]))
      shapes.add(
        (((1 + oja[l]) * twice[l] + 1 + oja[l + 1]) * b, widths[l + 1])
      )
    return shapes

  def enter(self, state: TrainState) -> TrainState:
    """Flax layout -> chunk layout: kernels transposed, plus scratch."""
    oja_layers = self.oja_layers(state.params)
    norm_layers = self.norm_layers(state.params)
    params = _transpose_kernels(state.params)
    names = models.layer_names(params)
    ws = [params[n]["kernel"] for n in names]
    widths = [ws[0].shape[1]] + [w.shape[0] for w in ws]
    # Runtime ones (see _mat): derived from the weights so that XLA cannot
    # fold them; nan_to_num keeps them finite whatever the weights hold.
    one = 1.0 + 0.0 * jnp.nan_to_num(ws[0][0, 0])
    ones = {
      f"{k}x{n}": jnp.full((k, n), one, ws[0].dtype)
      for k, n in self._scratch_shapes(widths, oja_layers, norm_layers)
    }
    model_state = {**state.model_state, _ONES: ones}
    if any(norm_layers):  # unit_norm: kernel = diag(scale) @ stored rows.
      model_state[_SCALES] = {
        n: jnp.ones(w.shape[0], w.dtype) * one
        for n, w, on in zip(names, ws, norm_layers, strict=True)
        if on
      }
    return state._replace(params=params, model_state=model_state)

  def exit(self, state: TrainState) -> TrainState:
    """Chunk layout -> Flax layout."""
    model_state = {
      k: v for k, v in state.model_state.items() if k not in (_ONES, _SCALES)
    }
    params = state.params
    scales = state.model_state.get(_SCALES)
    if scales:
      params = {
        n: (
          {**v, "kernel": v["kernel"] * scales[n][:, None]}
          if n in scales
          else v
        )
        for n, v in params.items()
      }
    return state._replace(
      params=_transpose_kernels(params), model_state=model_state
    )

  def __call__(
    self, state: TrainState, idx_B: jax.Array, data: ClassifierData
  ) -> tuple[TrainState, Metrics]:
    names = models.layer_names(state.params)
    ws = [state.params[n]["kernel"] for n in names]  # (O, I) each.
    last = len(ws) - 1
    x_BxD = data.train_x[idx_B].astype(ws[0].dtype)
    label_B = data.train_y[idx_B]
    batch = x_BxD.shape[0]
    scratch = state.model_state.get(_ONES, {})

    def mat(parts):
      v = jnp.concatenate(parts, 0) if len(parts) > 1 else parts[0]
      return _mat(v, scratch.get(f"{v.shape[0]}x{v.shape[1]}"))

    # The optimizer state, advanced by the transform itself; only the state
    # is used (the update values are dead code XLA removes). The rates of
    # this step are those it reports in the new state, which the generic
    # path's update used.
    flax_params = {n: {"kernel": w.T} for n, w in zip(names, ws, strict=True)}
    zero_traces = {
      n: {
        "kernel": rules.Trace(
          jnp.zeros((1, w.shape[1]), w.dtype),
          jnp.zeros((1, w.shape[0]), w.dtype),
        )
      }
      for n, w in zip(names, ws, strict=True)
    }
    _, opt_state = self.tx.update(
      flax_params, state.opt_state, flax_params, activations=zero_traces
    )
    lr, eta = self.tx.rates(opt_state)
    if eta is None:  # Plain SGD: no Oja term anywhere.
      eta = jnp.zeros_like(lr)
    # ojax.oja's run-time guard: a negative or non-finite rate is NaN.
    eta = jnp.where(jnp.isfinite(eta) & (eta >= 0), eta, jnp.nan)
    oja = list(self.oja_layers(flax_params))

    # Forward: z = x W^T (a matrix-vector product for batch 1); each hidden
    # activity is one fusion and one buffer.
    # unit_norm: a layer's kernel is diag(scale) @ w, its stored rows scaled
    # lazily (see _SCALES below); each use of w takes the scale along.
    scales = state.model_state.get(_SCALES, {})
    scale = [scales.get(n) for n in names]
    zs, ys = [], [x_BxD]
    for l, w in enumerate(ws):
      zs.append((w @ ys[l].T).T)
      if scale[l] is not None:
        zs[l] = zs[l] * scale[l]
      if l < last:
        ys.append(mat([self.activation(zs[l])]))
    logits = zs[last]
    # Softmax cross-entropy and its gradient from one exponential.
    shifted = logits - jnp.max(logits, -1, keepdims=True)
    exp = jnp.exp(shifted)
    total = jnp.sum(exp, -1, keepdims=True)
    probs = exp / total
    picked = jnp.take_along_axis(shifted, label_B[:, None], -1)[:, 0]
    loss_B = jnp.log(total[:, 0]) - picked
    loss = loss_B[0] if batch == 1 else jnp.mean(loss_B)
    onehot = jax.nn.one_hot(label_B, logits.shape[-1], dtype=logits.dtype)
    d = (probs - onehot) / batch  # dL/dz of the output layer.
    post = probs if self.model.output_post == "softmax" else logits

    # Backward, top layer first. Layer l's update is
    #   W_l + rows_l^T @ cols_l,  rows_l = [d_l; y_l],
    #   cols_l = [-lr x_l; (eta / B) (x_l - y_l W_l)]
    # (the Oja halves only where the rule applies). One matrix product
    # [d_l; y_l] @ W_l gives the error for the layer below and y_l W_l for
    # the residual; each layer boundary's vectors are one fusion (one
    # buffer) sliced into rows of the layer below and cols of the one above.
    # With unit_norm the kernel is diag(scale) @ W: the backward product
    # takes rows @ diag(scale), made in the same fusion as the rows.
    rows: list[Any] = [None] * len(ws)  # Filled in below.
    cols: list[Any] = [None] * len(ws)
    scaled: list[Any] = [None] * len(ws)  # rows @ diag(scale), or rows.

    def with_scaled(parts, l):
      """``parts`` then, for a unit-norm layer, ``parts`` scaled."""
      return parts + (
        [p * scale[l] for p in parts] if scale[l] is not None else []
      )

    top = [d] + ([post] if oja[last] else [])
    pack = mat(with_scaled(top, last))
    rows[last] = pack[: len(top) * batch]
    scaled[last] = pack[-len(top) * batch :]
    for l in range(last, 0, -1):
      back = scaled[l] @ ws[l]  # (k B, fan_in): [d_l W_l; y_l W_l].
      _, act_vjp = jax.vjp(self.activation, zs[l - 1])
      (d,) = act_vjp(back[:batch])
      y = ys[l]
      below = [d] + ([y] if oja[l - 1] else [])
      above = [-lr * y] + (
        [(eta / batch) * (y - back[-batch:])] if oja[l] else []
      )
      below = with_scaled(below, l - 1)
      pack = mat(below + above)
      n = (1 + oja[l - 1]) * batch
      rows[l - 1] = pack[:n]
      scaled[l - 1] = pack[len(below) * batch - n : len(below) * batch]
      cols[l] = pack[len(below) * batch :]
    x = ys[0]
    if oja[0]:
      # y_0 W_0, the input layer's residual.
      back = scaled[0][batch:] @ ws[0]
      cols[0] = mat([-lr * x, (eta / batch) * (x - back)])
    else:
      cols[0] = mat([-lr * x])
    new_ws = [
      _update(w, r, c, s)
      for w, r, c, s in zip(ws, rows, cols, scale, strict=True)
    ]
    # unit_norm: each unit's incoming weights (a row here) to norm 1. The
    # new kernel is diag(1 / norm) @ new_w: the rows' norms are one read of
    # new_w; their scaling waits for the next step's uses (one pass over
    # the kernel fewer) and exit().
    model_state = state.model_state
    if scales:
      model_state = {
        **model_state,
        _SCALES: {
          n: _unit_scale(new_ws[l])
          for l, n in enumerate(names)
          if scale[l] is not None
        },
      }

    params = {
      n: {**state.params[n], "kernel": w}
      for n, w in zip(names, new_ws, strict=True)
    }
    correct = jnp.mean(jnp.argmax(logits, -1) == label_B)
    return state._replace(
      params=params, opt_state=opt_state, model_state=model_state
    ), {
      "train_loss": loss,
      "online_accuracy": correct,
    }


def _unit_scale(w_OxI: jax.Array) -> jax.Array:
  """``1 / ||w[j]||`` for every row ``j``; 1 for a row of norm 0."""
  norm = jnp.sqrt(jnp.sum(jnp.square(w_OxI), axis=-1))
  return 1.0 / jnp.where(norm > 0, norm, jnp.ones_like(norm))


def _update(
  w_OxI: jax.Array,
  rows_KxO: jax.Array,
  cols_KxI: jax.Array,
  scale_O: Optional[jax.Array] = None,
) -> jax.Array:
  """``diag(scale) @ w + rows^T @ cols``: one elementwise pass for a small
  rank (``w + ...`` without a scale)."""
  if scale_O is not None:
    w_OxI = w_OxI * scale_O[:, None]
  if rows_KxO.shape[0] > 2 * _MAX_ELEMENTWISE_BATCH:
    return w_OxI + rows_KxO.T @ cols_KxI
  out = w_OxI
  for k in range(rows_KxO.shape[0]):
    out = out + rows_KxO[k][:, None] * cols_KxI[k][None, :]
  return out

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
  use ``--xla_cpu_multi_thread_eigen=false`` and one process per core.

Math (checked against the generic path by tests/test_fused.py to float
tolerance, and against PyTorch by tests/test_bench_equivalence.py): per
Flax kernel ``K`` (fan_in, fan_out), with ``x`` the layer input and ``y`` its
post-synaptic activity (softmax for the output layer by default),
``K <- K - lr * dL/dK + eta * mean_b outer(x - K y, y)``, both terms from
the forward pass with the old weights, cross-entropy loss. Only the order of
floating-point sums differs from the generic path.

What it accepts (anything else: :func:`select_step` returns ``None`` and the
generic path runs):

* model: :class:`ojax.models.MLP` with any ``activation`` (softplus with any
  beta, relu, tanh, identity), any ``kernel_init``/``gain``, ``output_post``
  ``"softmax"`` or ``"logits"``, ``use_bias=False``, ``layer_norm=False``,
  ``feedback="backprop"``;
* optimizer: ``optax.inject_hyperparams`` of SGD, or of SGD chained with
  ``ojax.oja`` on every layer or (through ``optax.masked``) on the hidden
  layers only, with hyperparameters named ``learning_rate`` (and
  ``oja_learning_rate``): what ``experiments/config.py`` builds and
  :func:`sgd_oja` here returns. :func:`select_step` checks this numerically
  (two probe updates), not by name. Rates are read from the optimizer state
  at every step, so vmapped sweeps over them and schedules work;
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


def sgd_oja(
  learning_rate: float, oja_learning_rate: float, *, oja_layers: str = "all"
) -> optax.GradientTransformation:
  """SGD + Oja as the fused step recognizes it (rates in the state).

  ``optax.inject_hyperparams`` of ``ojax.with_rule(sgd(learning_rate),
  ojax.oja(oja_learning_rate))``, the Oja term masked to the hidden layers
  (``optax.masked``) if ``oja_layers="hidden"``. Numerically the same as
  ``ojax.sgd_oja``, which keeps its rates out of the state and so takes the
  generic step.
  """
  if oja_layers not in ("all", "hidden"):
    raise ValueError(f"oja_layers={oja_layers!r}; choose all or hidden.")

  def make(learning_rate, oja_learning_rate):
    oja: optax.GradientTransformationExtraArgs = rules.oja(oja_learning_rate)
    if oja_layers == "hidden":
      oja = optax.masked(oja, hidden_mask)
    return rules.with_rule(optax.sgd(learning_rate), oja)

  return optax.inject_hyperparams(make)(
    learning_rate=learning_rate, oja_learning_rate=oja_learning_rate
  )


def hidden_mask(params: Any) -> Any:
  """True for every parameter except those of the last ``layer_*``."""
  layers = [k for k in params if k.startswith("layer_")]
  last = max(layers, key=lambda k: int(k.split("_")[1]))
  return {
    k: jax.tree.map(lambda _, keep=(k != last): keep, v)
    for k, v in params.items()
  }


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


def _np_oja_term(
  kernel_IxO: np.ndarray, pre_BxI: np.ndarray, post_BxO: np.ndarray
) -> np.ndarray:
  residual = pre_BxI - post_BxO @ kernel_IxO.T
  return residual.T @ post_BxO / pre_BxI.shape[0]


def _probe(
  model: nn.Module, tx: optax.GradientTransformationExtraArgs, input_dim: int
) -> Optional[str]:
  """Which Oja layers ``tx`` applies ("all", "hidden", "none"), or None.

  Runs two updates of ``tx`` from ``tx.init`` on random
  parameters, gradients and traces (kernel shapes of ``model``) and checks
  each against ``-lr * g + eta * oja_term`` with the rates the transform
  reports in its state, and checks that the new state does not depend on
  the gradients. ``None`` if it matches none of them (Adam, momentum, weight
  decay, ``apply_if_finite``, other hyperparameters, rates not in the state,
  ...).
  """
  shapes = jax.eval_shape(
    lambda: model.init(
      jax.random.key(0), jnp.zeros((1, input_dim), jnp.float32)
    )
  )["params"]
  names = _layer_names(shapes)
  rng = np.random.default_rng(0)

  def rand(shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)

  params = {n: {"kernel": rand(shapes[n]["kernel"].shape, 0.3)} for n in names}
  try:
    hyper = getattr(jax.eval_shape(tx.init, params), "hyperparams", None)
  except Exception:  # pylint: disable=broad-except
    return None
  if (
    not isinstance(hyper, dict)
    or "learning_rate" not in hyper
    or (set(hyper) - {"learning_rate", "oja_learning_rate"})
  ):
    return None
  # Rates the probe can tell apart from each other and from zero.
  rates = {"learning_rate": 0.375, "oja_learning_rate": 0.625}
  steps = []
  for _ in range(2):
    grads = {n: {"kernel": rand(params[n]["kernel"].shape)} for n in names}
    traces = {
      n: {
        "kernel": rules.Trace(
          rand((3, params[n]["kernel"].shape[0])),
          rand((3, params[n]["kernel"].shape[1])),
        )
      }
      for n in names
    }
    steps.append((grads, traces))

  def two_updates(params, steps):  # Eager: op caches amortize across calls.
    state: Any = tx.init(params)  # Whatever tx's state is.
    state = state._replace(
      hyperparams={
        k: jnp.asarray(rates[k], v.dtype) for k, v in state.hyperparams.items()
      }
    )
    out = []
    for grads, traces in steps:
      # The fused step advances the state with stand-in gradients, so the
      # new state must not depend on them (e.g. optax.apply_if_finite's
      # counter does): compare with non-finite ones.
      _, other = tx.update(
        jax.tree.map(lambda g: g * jnp.nan, grads),
        state,
        params,
        activations=traces,
      )
      updates, state = tx.update(grads, state, params, activations=traces)
      out.append(
        (
          params,
          updates,
          state.hyperparams,
          all(
            jax.tree.leaves(
              jax.tree.map(
                lambda a, b: bool(jnp.array_equal(a, b)), state, other
              )
            )
          ),
        )
      )
      params = jax.tree.map(lambda p, u: p + 0.1 * u, params, updates)
    return out

  try:
    results = jax.device_get(two_updates(params, steps))
  except Exception:  # pylint: disable=broad-except
    return None
  if not all(r[-1] for r in results):
    return None
  found = None
  for (grads, traces), (before, updates, hyper, _) in zip(
    steps, results, strict=True
  ):
    lr = float(hyper["learning_rate"])
    eta = float(hyper.get("oja_learning_rate", 0.0))
    if lr == 0.0 or ("oja_learning_rate" in hyper and eta == 0.0):
      return None  # Cannot tell the terms apart.
    candidates = (
      ("all", "hidden") if "oja_learning_rate" in hyper else ("none",)
    )
    matches = []
    for layers in candidates:
      with_oja = {"all": names, "hidden": names[:-1], "none": []}[layers]
      ok = True
      for n in names:
        want = -lr * grads[n]["kernel"]
        if n in with_oja:
          trace = traces[n]["kernel"]
          want = want + eta * _np_oja_term(
            before[n]["kernel"], trace.pre, trace.post
          )
        got = np.asarray(updates[n]["kernel"])
        if got.shape != want.shape or not np.allclose(
          got, want, rtol=1e-4, atol=1e-5
        ):
          ok = False
          break
      if ok:
        matches.append(layers)
    if len(matches) != 1 or found not in (None, matches[0]):
      return None
    found = matches[0]
  return found


def select_step(
  model: nn.Module,
  tx: optax.GradientTransformationExtraArgs,
  *,
  input_dim: Optional[int] = None,
  batch_size: int = 1,
  optimizer: Optional[str] = None,
  oja_layers: Optional[str] = None,
) -> Optional[FusedStep]:
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
    raise ValueError(
      f"oja_layers={oja_layers!r}; choose one of {', '.join(OJA_LAYERS)}."
    )
  why = model_unsupported(model)
  if why is not None:
    _log.debug("fused step not used: %s", why)
    return None
  found = _probe(model, tx, input_dim or 1)
  if found is None or (oja_layers is not None and found != oja_layers):
    _log.debug(
      "fused step not used: the optimizer is not SGD + Oja "
      "(%s) with rates in its state",
      oja_layers or "any layers",
    )
    return None
  # model_unsupported checked that model is an MLP.
  return FusedStep(cast(models.MLP, model), tx, found, batch_size)


# --- The step ------------------------------------------------------------


def _transpose_kernels(params: Any) -> Any:
  return {
    k: {**v, "kernel": jnp.swapaxes(v["kernel"], -1, -2)}
    for k, v in params.items()
  }


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

  def __init__(
    self,
    model: models.MLP,
    tx: optax.GradientTransformationExtraArgs,
    oja_layers: str,
    batch_size: int = 1,
  ):
    self.model = model
    self.tx = tx
    self.oja_layers = oja_layers
    self.batch_size = batch_size
    self.activation = models.activation_fn(model.activation, model.beta)

  def _oja_on(self, num_layers: int) -> range:
    return {
      "all": range(num_layers),
      "hidden": range(num_layers - 1),
      "none": range(0),
    }[self.oja_layers]

  def __repr__(self) -> str:
    return (
      f"FusedStep(features={tuple(self.model.features)}, "
      f"activation={self.model.activation!r}, "
      f"oja_layers={self.oja_layers!r})"
    )

  def _scratch_shapes(self, widths: list[int]) -> set[tuple[int, int]]:
    """Shapes of the vectors the step materializes (see ``__call__``)."""
    b, last = self.batch_size, len(widths) - 2
    oja = [int(l in self._oja_on(last + 1)) for l in range(last + 1)]
    shapes = {
      ((1 + oja[0]) * b, widths[0]),
      ((1 + oja[last]) * b, widths[last + 1]),
    }
    for l in range(last):
      shapes.add((b, widths[l + 1]))
      shapes.add(((2 + oja[l] + oja[l + 1]) * b, widths[l + 1]))
    return shapes

  def enter(self, state: train.TrainState) -> train.TrainState:
    """Flax layout -> chunk layout: kernels transposed, plus scratch."""
    params = _transpose_kernels(state.params)
    ws = [params[n]["kernel"] for n in _layer_names(params)]
    widths = [ws[0].shape[1]] + [w.shape[0] for w in ws]
    # Runtime ones (see _mat): derived from the weights so that XLA cannot
    # fold them; nan_to_num keeps them finite whatever the weights hold.
    one = 1.0 + 0.0 * jnp.nan_to_num(ws[0][0, 0])
    ones = {
      f"{k}x{n}": jnp.full((k, n), one, ws[0].dtype)
      for k, n in self._scratch_shapes(widths)
    }
    return state._replace(
      params=params, model_state={**state.model_state, _ONES: ones}
    )

  def exit(self, state: train.TrainState) -> train.TrainState:
    """Chunk layout -> Flax layout."""
    model_state = {k: v for k, v in state.model_state.items() if k != _ONES}
    return state._replace(
      params=_transpose_kernels(state.params), model_state=model_state
    )

  def __call__(
    self, state: train.TrainState, idx_B: jax.Array, data: train.ClassifierData
  ) -> tuple[train.TrainState, train.Metrics]:
    names = _layer_names(state.params)
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
    opt_state: Any  # Has .hyperparams: the probe checked it.
    _, opt_state = self.tx.update(
      flax_params, state.opt_state, flax_params, activations=zero_traces
    )
    lr = opt_state.hyperparams["learning_rate"]
    eta = opt_state.hyperparams.get("oja_learning_rate", jnp.zeros_like(lr))
    # ojax.oja's run-time guard: a negative or non-finite rate is NaN.
    eta = jnp.where(jnp.isfinite(eta) & (eta >= 0), eta, jnp.nan)
    oja = [l in self._oja_on(len(ws)) for l in range(len(ws))]

    # Forward: z = x W^T (a matrix-vector product for batch 1); each hidden
    # activity is one fusion and one buffer.
    zs, ys = [], [x_BxD]
    for l, w in enumerate(ws):
      zs.append((w @ ys[l].T).T)
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
    rows: list[Any] = [None] * len(ws)  # Filled in below.
    cols: list[Any] = [None] * len(ws)
    rows[last] = mat([d] + ([post] if oja[last] else []))
    for l in range(last, 0, -1):
      back = rows[l] @ ws[l]  # (k B, fan_in): [d_l W_l; y_l W_l].
      _, act_vjp = jax.vjp(self.activation, zs[l - 1])
      (d,) = act_vjp(back[:batch])
      y = ys[l]
      below = [d] + ([y] if oja[l - 1] else [])
      above = [-lr * y] + (
        [(eta / batch) * (y - back[-batch:])] if oja[l] else []
      )
      pack = mat(below + above)
      rows[l - 1] = pack[: len(below) * batch]
      cols[l] = pack[len(below) * batch :]
    x = ys[0]
    if oja[0]:
      back = rows[0][batch:] @ ws[0]  # y_0 W_0, the input layer's residual.
      cols[0] = mat([-lr * x, (eta / batch) * (x - back)])
    else:
      cols[0] = mat([-lr * x])
    new_ws = [_update(w, r, c) for w, r, c in zip(ws, rows, cols, strict=True)]

    params = {
      n: {**state.params[n], "kernel": w}
      for n, w in zip(names, new_ws, strict=True)
    }
    correct = jnp.mean(jnp.argmax(logits, -1) == label_B)
    return state._replace(params=params, opt_state=opt_state), {
      "train_loss": loss,
      "online_accuracy": correct,
    }


def _update(
  w_OxI: jax.Array, rows_KxO: jax.Array, cols_KxI: jax.Array
) -> jax.Array:
  """``w + rows^T @ cols``: one elementwise pass for a small rank."""
  if rows_KxO.shape[0] > 2 * _MAX_ELEMENTWISE_BATCH:
    return w_OxI + rows_KxO.T @ cols_KxI
  out = w_OxI
  for k in range(rows_KxO.shape[0]):
    out = out + rows_KxO[k][:, None] * cols_KxI[k][None, :]
  return out

"""Meta-learned local plasticity rules (Shervani-Tabar & Rosenbaum, 2023).

Inner loop: a network (``ojax.models.MLP``, weights re-initialized for every
episode) learns an episode's training stream one sample at a time. Each
kernel ``K_l`` (fan_in, fan_out) with pre-synaptic ``x`` and post-synaptic
``y`` (softmax output at the last layer) changes by the local rule
``ojax.plasticity(theta)``: a weighted sum of terms from the pool
``ojax.TERMS``, e.g.

    dK_l = -theta_error * x e_l^T                  (error term)
           + theta_oja  * outer(x - K_l y, y)       (Oja's subspace term)
           + theta_hebb * x y^T + ...               (other local terms)

where ``e_l`` is the error at layer l: ``softmax(z_L) - onehot`` at the top,
``(e_{l+1} B_{l+1}^T) * sigma'(z_l)`` below, with ``B = K`` (backprop) or a
fixed random ``B`` (feedback alignment, ``MLP(feedback="random")``). The
errors are propagated explicitly (``error_traces``: ``post_error = e_l``,
``pre_error = e_{l-1}``, zero at the input, which has no error) so that the
meta-gradient stays exact under random feedback too. With backprop the error
term is the gradient of the cross-entropy. The whole online stream is one
``lax.scan``.

Outer loop: the coefficients ``theta`` minimize the query cross-entropy after
the inner loop, averaged over a batch of episodes (``vmap``), by Adam on
``jax.grad`` taken through the inner ``lax.scan``.

Plain backprop (``theta = {error: lr, oja: 0}``) and backprop + Oja are
points of the same coefficient space, so one evaluation function scores them
all on identical episodes (same images, order and initialization).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.tasks import episodes as episodes_lib
import ojax
from ojax import metrics
from ojax import models
from ojax import train

RULE_TERMS = tuple(ojax.TERMS)
Theta = dict[str, jax.Array]


def check_terms(terms: Sequence[str]) -> None:
  """Raises ValueError unless ``terms`` names terms of ``ojax.TERMS``."""
  if "error" not in terms:
    raise ValueError(f"rule terms {tuple(terms)} must include 'error'.")
  for t in terms:
    if t not in RULE_TERMS:
      raise ValueError(f"rule term {t!r} is not known; choose from "
                       f"{', '.join(RULE_TERMS)}.")


def local_update(params: Any, traces: Any, theta: Theta) -> Any:
  """The change ``dK`` of every kernel under ``ojax.plasticity(theta)``.

  Args:
    params: ``{layer_i: {kernel: K}}`` of the MLP.
    traces: the ``ojax.Trace`` tree of the forward pass with its errors
      (:func:`error_traces`).
    theta: coefficients by term name (``ojax.TERMS``).

  Returns:
    A tree like ``params`` to be added to it.
  """
  rule = ojax.plasticity(theta)
  updates, _ = rule.update(jax.tree.map(jnp.zeros_like, params),
                           rule.init(params), params, activations=traces)
  return updates


def _activation_slope(name: str, beta: float) -> Callable[[jax.Array],
                                                           jax.Array]:
  """``sigma'(z)`` written in terms of ``y = sigma(z)``."""
  slopes = {
      "softplus": lambda y: 1.0 - jnp.exp(-beta * y),  # sigmoid(beta z)
      "tanh": lambda y: 1.0 - y ** 2,
      "relu": lambda y: (y > 0).astype(y.dtype),
      "identity": jnp.ones_like,
  }
  if name not in slopes:
    raise ValueError(f"activation={name!r} is not known; choose one of "
                     f"{', '.join(slopes)}.")
  return slopes[name]


def error_traces(model: models.MLP, params: Any, feedback: Optional[Any],
                 activations: Any, onehot_BxC: jax.Array) -> Any:
  """The forward pass's traces with each layer's errors filled in.

  ``e_L = softmax(z_L) - onehot``; ``e_l = (e_{l+1} B_{l+1}^T) *
  sigma'(z_l)`` with ``sigma'`` computed from the activity ``y_l`` (``1 -
  exp(-beta y)`` for softplus), ``B = K`` when ``feedback`` is None
  (backprop: ``mean x e^T`` is then ``jax.grad`` of the mean cross-entropy)
  or the fixed random matrices of ``feedback`` (feedback alignment). Written
  out rather than taken from the model's ``custom_vjp``, so that a
  meta-gradient through this function is the true derivative.

  Args:
    model: the MLP (``output_post="softmax"``, no biases, no norms).
    params: its kernels ``{layer_i: {kernel: K}}``.
    feedback: ``{layer_i: {kernel: B}}`` or None.
    activations: the ``ojax.Trace`` tree of the forward pass.
    onehot_BxC: one-hot labels.

  Returns:
    The tree with ``Trace(pre, post, pre_error=e_{l-1}, post_error=e_l)``
    per kernel; ``pre_error`` of the first layer is zero.
  """
  slope = _activation_slope(model.activation, model.beta)
  names = metrics.layer_names(params)
  e_BxO = activations[names[-1]]["kernel"].post - onehot_BxC
  errors = {}
  for i in reversed(range(len(names))):
    trace = activations[names[i]]["kernel"]
    errors[names[i]] = e_BxO
    if i:
      b_IxO = (feedback or params)[names[i]]["kernel"]
      e_BxO = (e_BxO @ b_IxO.T) * slope(trace.pre)
  out = {}
  for i, name in enumerate(names):
    trace = activations[name]["kernel"]
    pre_error = errors[names[i - 1]] if i else jnp.zeros_like(trace.pre)
    out[name] = {"kernel": trace._replace(pre_error=pre_error,
                                          post_error=errors[name])}
  return out


def check_model(model: models.MLP) -> None:
  """Raises ValueError unless ``error_traces`` covers ``model``."""
  if model.use_bias or model.layer_norm or model.output_post != "softmax":
    raise ValueError("the meta-learning MLP must have no biases, no layer "
                     "norm and output_post='softmax' (reference network).")
  _activation_slope(model.activation, model.beta)


def inner_loop(model: models.MLP, theta: Theta, variables: Any,
               x_TxD: jax.Array, y_T: jax.Array) -> tuple[Any, jax.Array]:
  """Learns the stream online (batch 1); returns final params and losses.

  ``variables`` holds ``params`` and, for feedback alignment, ``feedback``.
  """
  check_model(model)
  forward = model.clone(feedback="backprop")
  feedback = variables.get("feedback")
  num_classes = model.features[-1]

  def step(p, xy):
    x_D, y = xy
    logits, acts = forward.apply({"params": p}, x_D[None])
    loss = train.cross_entropy(logits, y[None])
    traces = error_traces(model, p, feedback, acts,
                          jax.nn.one_hot(y[None], num_classes,
                                         dtype=x_D.dtype))
    p = jax.tree.map(jnp.add, p, local_update(p, traces, theta))
    return p, loss

  params, losses = jax.lax.scan(step, variables["params"], (x_TxD, y_T))
  return dict(variables, params=params), losses


class EpisodeResult(NamedTuple):
  query_loss: jax.Array
  query_accuracy: jax.Array
  online_loss: jax.Array  # Mean loss over the training stream.


def run_episode(model: models.MLP, theta: Theta, key: jax.Array,
                pool_CxMxD: jax.Array, *, n_way: int, k_shot: int,
                q_query: int) -> EpisodeResult:
  """Samples an episode from ``key``, learns it, scores the query set.

  ``key`` fixes the episode's images, order and the network's initialization,
  so two rules given the same key face the identical problem.
  """
  data_key, init_key = jax.random.split(key)
  ep = episodes_lib.sample_episode(data_key, pool_CxMxD, n_way, k_shot,
                                   q_query)
  variables = model.init(init_key, ep.train_x[:1])
  # Weights take the data's dtype (float64 under jax.enable_x64, for tests).
  variables = jax.tree.map(lambda a: a.astype(ep.train_x.dtype), variables)
  variables, losses = inner_loop(model, theta, variables, ep.train_x,
                                 ep.train_y)
  logits, _ = model.clone(feedback="backprop").apply(
      {"params": variables["params"]}, ep.query_x)
  loss = train.cross_entropy(logits, ep.query_y)
  acc = jnp.mean(jnp.argmax(logits, -1) == ep.query_y)
  return EpisodeResult(loss, acc, jnp.mean(losses))


def meta_loss(theta: Theta, model: models.MLP, keys_E: jax.Array,
              pool_CxMxD: jax.Array, **episode_kw) -> tuple[jax.Array, Any]:
  """Mean query cross-entropy over E episodes (vmapped), with results."""
  res = jax.vmap(lambda k: run_episode(model, theta, k, pool_CxMxD,
                                       **episode_kw))(keys_E)
  return jnp.mean(res.query_loss), res


class MetaHistory(NamedTuple):
  theta: dict[str, np.ndarray]  # (steps + 1,) per term.
  meta_loss: np.ndarray  # (steps,) query loss of each meta-batch.
  query_accuracy: np.ndarray  # (steps,)
  skipped: int  # meta-steps with a non-finite gradient (theta kept).


def meta_train(model: models.MLP, theta0: Theta, pool_CxMxD: jax.Array,
               key: jax.Array, *, steps: int, episodes_per_step: int,
               meta_lr: float, n_way: int, k_shot: int, q_query: int,
               on_step: Optional[Callable[[int, Theta, float], None]] = None
               ) -> tuple[Theta, MetaHistory]:
  """Adam on ``theta`` through the inner ``lax.scan`` (``jax.grad``).

  Each meta-step draws ``episodes_per_step`` fresh episodes from the pool.
  A step whose meta-gradient is not finite leaves ``theta`` unchanged.
  """
  opt = optax.adam(meta_lr)
  kw = dict(n_way=n_way, k_shot=k_shot, q_query=q_query)

  @jax.jit
  def step(theta, opt_state, step_key):
    keys = jax.random.split(step_key, episodes_per_step)
    (loss, res), grads = jax.value_and_grad(meta_loss, has_aux=True)(
        theta, model, keys, pool_CxMxD, **kw)
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g))
                            for g in jax.tree.leaves(grads)]))
    ok = ok & jnp.isfinite(loss)
    grads = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grads)
    updates, new_state = opt.update(grads, opt_state, theta)
    new_theta = optax.apply_updates(theta, updates)
    theta = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_theta, theta)
    opt_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state,
                             opt_state)
    return theta, opt_state, loss, jnp.mean(res.query_accuracy), ok

  theta = {k: jnp.asarray(v, jnp.float32) for k, v in theta0.items()}
  opt_state = opt.init(theta)
  thetas = [jax.device_get(theta)]
  losses, accs, skipped = [], [], 0
  for i in range(steps):
    theta, opt_state, loss, acc, ok = step(theta, opt_state,
                                           jax.random.fold_in(key, i))
    loss, acc, ok = float(loss), float(acc), bool(ok)
    skipped += not ok
    thetas.append(jax.device_get(theta))
    losses.append(loss)
    accs.append(acc)
    if on_step is not None:
      on_step(i + 1, theta, loss)
  history = MetaHistory({k: np.array([float(t[k]) for t in thetas])
                         for k in theta}, np.array(losses), np.array(accs),
                        skipped)
  return theta, history


@functools.partial(jax.jit, static_argnames=("model", "n_way", "k_shot",
                                             "q_query"))
def evaluate(model: models.MLP, theta_G: Theta, keys_E: jax.Array,
             pool_CxMxD: jax.Array, *, n_way: int, k_shot: int,
             q_query: int) -> EpisodeResult:
  """Scores G rules on the same E episodes; fields shaped ``(G, E)``."""
  def one_rule(theta):
    return jax.vmap(lambda k: run_episode(
        model, theta, k, pool_CxMxD, n_way=n_way, k_shot=k_shot,
        q_query=q_query))(keys_E)

  return jax.lax.map(one_rule, theta_G)

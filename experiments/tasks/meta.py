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
``lax.scan``. :data:`POOL_TERMS` are the terms of ``ojax.TERMS`` that the
Shervani-Tabar & Rosenbaum pool has (those with a ``paper`` formula).

Outer loop (:func:`meta_train`): the coefficients ``theta`` minimize the
query cross-entropy after the inner loop, averaged over a batch of episodes
(``vmap``), plus ``l1 * sum |theta|``, by Adam on ``jax.grad`` taken through
the inner ``lax.scan``. Meta-training stops at a maximum number of steps or
when the loss on fixed meta-validation episodes plateaus (:func:`plateaued`),
and checkpoints itself to JSON so that a killed run resumes where it stopped
with the same numbers.

Plain backprop (``theta = {error: lr}``) and backprop + Oja are points of the
same coefficient space, so one evaluation function scores them all on
identical episodes (same images, order and initialization).

Cost: the meta-gradient rematerializes each inner step
(``jax.checkpoint``), and the terms that vanish when the pre-synaptic error
is zero are not computed at the input layer (:func:`local_update`); together
these make a meta-step ~5x faster at the reference size (784-170-130-100-70-5,
9 terms) without changing any number.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import rundir
from experiments.tasks import episodes as episodes_lib
import ojax
from ojax import models
from ojax import train

RULE_TERMS = tuple(ojax.TERMS)
# The terms of the Shervani-Tabar & Rosenbaum (2023) pool that ojax offers.
POOL_TERMS = tuple(n for n, t in ojax.TERMS.items() if t.paper)
Theta = dict[str, jax.Array]


def check_terms(terms: Sequence[str]) -> None:
  """Raises ValueError unless ``terms`` names terms of ``ojax.TERMS``."""
  if "error" not in terms:
    raise ValueError(f"rule terms {tuple(terms)} must include 'error'.")
  for t in terms:
    if t not in RULE_TERMS:
      raise ValueError(f"rule term {t!r} is not known; choose from "
                       f"{', '.join(RULE_TERMS)}.")
  if len(set(terms)) != len(terms):
    raise ValueError(f"rule terms {tuple(terms)} repeat a term.")


@functools.lru_cache(maxsize=None)
def zero_without_pre_error(terms: tuple[str, ...]) -> tuple[str, ...]:
  """The terms of ``terms`` that are identically 0 when ``pre_error = 0``.

  Found by evaluating each term on random values with ``pre_error = 0`` (e.g.
  ``error_hebb = a e^T``; not ``error_oja = (a - K e) e^T``).
  """
  rng = np.random.default_rng(0)
  normal = lambda *s: rng.normal(size=s).astype(np.float32)  # pylint: disable=unnecessary-lambda-assignment
  trace = ojax.Trace(pre=normal(2, 4), post=normal(2, 3),
                     pre_error=np.zeros((2, 4), np.float32),
                     post_error=normal(2, 3))
  kernel = normal(4, 3)
  with jax.ensure_compile_time_eval():
    return tuple(t for t in terms if "pre_error" in ojax.TERMS[t].needs and
                 not np.any(np.asarray(ojax.TERMS[t].fn(kernel, trace))))


def local_update(params: Any, traces: Any, theta: Theta,
                 zero_input_error: bool = False) -> Any:
  """The change ``dK`` of every kernel under ``ojax.plasticity(theta)``.

  Args:
    params: ``{layer_i: {kernel: K}}`` of the MLP.
    traces: the ``ojax.Trace`` tree of the forward pass with its errors
      (:func:`error_traces`).
    theta: coefficients by term name (``ojax.TERMS``).
    zero_input_error: the first layer's ``pre_error`` is zero (as
      :func:`error_traces` makes it); the terms that vanish then
      (:func:`zero_without_pre_error`) are skipped there. Same result, less
      work.

  Returns:
    A tree like ``params`` to be added to it.
  """
  updates = jax.tree.map(jnp.zeros_like, params)
  names = models.layer_names(params)
  skip = zero_without_pre_error(tuple(theta)) if zero_input_error else ()
  if not skip:
    rule = ojax.plasticity(theta)
    return rule.update(updates, rule.init(params), params,
                       activations=traces)[0]
  parts = [({t: c for t, c in theta.items() if t not in skip}, names[:1]),
           (theta, names[1:])]
  for coefficients, layers in parts:
    if not layers or not coefficients:  # Nothing to add there.
      continue
    mask = {n: jax.tree.map(lambda _, n=n: n in layers, v)
            for n, v in params.items()}
    rule = ojax.plasticity(coefficients, mask=mask)
    updates, _ = rule.update(updates, rule.init(params), params,
                             activations=traces)
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
  names = models.layer_names(params)
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
  Each step is rematerialized under differentiation (``jax.checkpoint``):
  the backward pass keeps only the weights of each step, not every term.
  """
  check_model(model)
  forward = model.clone(feedback="backprop")
  feedback = variables.get("feedback")
  num_classes = model.features[-1]

  @jax.checkpoint
  def step(p, xy):
    x_D, y = xy
    logits, acts = forward.apply({"params": p}, x_D[None])
    loss = train.cross_entropy(logits, y[None])
    traces = error_traces(model, p, feedback, acts,
                          jax.nn.one_hot(y[None], num_classes,
                                         dtype=x_D.dtype))
    p = jax.tree.map(jnp.add, p, local_update(p, traces, theta,
                                              zero_input_error=True))
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

  ``key`` fixes the episode's images, order and the network's initialization
  (the forward weights do not depend on ``model.feedback``), so two rules
  given the same key face the identical problem.
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


# --- Meta-training ----------------------------------------------------------


class MetaHistory(NamedTuple):
  theta: dict[str, np.ndarray]  # (steps + 1,) per term.
  meta_loss: np.ndarray  # (steps,) query loss of each meta-batch.
  query_accuracy: np.ndarray  # (steps,)
  skipped: int  # meta-steps with a non-finite gradient (theta kept).
  val_step: np.ndarray = np.zeros(0, np.int64)  # Steps validated at.
  val_loss: np.ndarray = np.zeros(0)  # Meta-validation query loss there.
  val_accuracy: np.ndarray = np.zeros(0)
  best_step: int = 0  # Step of the lowest meta-validation loss.
  stopped: str = "max_steps"  # "plateau" or "max_steps".
  seconds: float = 0.0  # Wall time of the timed meta-steps.
  timed_steps: int = 0  # Meta-steps timed: all but each session's first
  #                       (which compiles).


def plateaued(val_loss: Sequence[float], window: int, tol: float) -> bool:
  """True when the last ``window`` validations did not improve enough.

  Plateau: the lowest loss of the last ``window`` validations is not below
  ``(1 - tol)`` times the lowest loss before them (a non-finite loss counts
  as +inf). Needs more than ``window`` validations.
  """
  v = np.where(np.isfinite(np.asarray(val_loss, np.float64)),
               np.asarray(val_loss, np.float64), np.inf)
  if v.size <= window:
    return False
  before, recent = v[:-window].min(), v[-window:].min()
  return bool(not recent < before * (1.0 - tol))


@functools.lru_cache(maxsize=None)
def _meta_step(model: models.MLP, n_way: int, k_shot: int, q_query: int,
               episodes: int):
  """``(init, grad, apply)``: a meta-step's jitted halves, compiled once per
  model and episode shape and shared by every seed and call.

  ``grad(theta, key, pool, l1) -> (grads, query loss, query accuracy,
  ok)``: the objective is the mean query cross-entropy of ``episodes``
  episodes drawn from ``key`` plus ``l1 * sum |theta|``; ``ok`` says it and
  its gradient are finite. ``apply(theta, opt_state, grads, ok, scales, lr)
  -> (theta, opt_state)``: Adam's (``optax.adam(lr)``) update of each
  coefficient times its ``scales`` entry; a step that is not ``ok`` leaves
  theta and Adam unchanged. ``init(theta)`` is Adam's initial state.
  """
  kw = dict(n_way=n_way, k_shot=k_shot, q_query=q_query)

  def objective(theta, keys, pool, l1):
    loss, res = meta_loss(theta, model, keys, pool, **kw)
    # |v| with gradient sign(v): 0 at v = 0 (as torch's abs), so the L1 term
    # does not push the coefficients that start at 0 below it.
    penalty = sum(jnp.sign(jax.lax.stop_gradient(v)) * v
                  for v in theta.values())
    return loss + l1 * penalty, (loss, jnp.mean(res.query_accuracy))

  @jax.jit
  def grad(theta, key, pool, l1):
    keys = jax.random.split(key, episodes)
    (obj, (loss, acc)), grads = jax.value_and_grad(
        objective, has_aux=True)(theta, keys, pool, l1)
    ok = jnp.isfinite(obj) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    return grads, loss, acc, ok

  @jax.jit
  def apply(theta, opt_state, grads, ok, scales, lr):
    grads = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grads)
    updates, new_state = optax.adam(lr).update(grads, opt_state, theta)
    updates = jax.tree.map(jnp.multiply, updates, scales)
    new_theta = optax.apply_updates(theta, updates)
    theta = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_theta, theta)
    opt_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state,
                             opt_state)
    return theta, opt_state

  return optax.adam(1.0).init, grad, apply


def term_norms(model: models.MLP, terms: Sequence[str], key: jax.Array,
               pool_CxMxD: jax.Array, *, n_way: int, k_shot: int,
               q_query: int, episodes: int = 8) -> dict[str, float]:
  """Typical size of each term at initialization: RMS over samples of
  ``||term(K, trace of one sample)||`` (Frobenius, all layers together).

  Samples: the training streams of ``episodes`` episodes drawn from ``key``,
  each seen by its episode's freshly initialized network (errors as in the
  inner loop, through the model's feedback).
  """
  check_model(model)
  forward = model.clone(feedback="backprop")
  num_classes = model.features[-1]

  def one_episode(k):
    data_key, init_key = jax.random.split(k)
    ep = episodes_lib.sample_episode(data_key, pool_CxMxD, n_way, k_shot,
                                     q_query)
    variables = model.init(init_key, ep.train_x[:1])
    params = variables["params"]

    def one_sample(x_D, y):
      _, acts = forward.apply({"params": params}, x_D[None])
      traces = error_traces(model, params, variables.get("feedback"), acts,
                            jax.nn.one_hot(y[None], num_classes,
                                           dtype=x_D.dtype))
      out = []
      for t in terms:
        sq = 0.0
        for name in models.layer_names(params):
          dk = ojax.TERMS[t].fn(params[name]["kernel"],
                                traces[name]["kernel"])
          sq = sq + jnp.sum(dk ** 2)
        out.append(sq)
      return jnp.stack(out)

    return jax.vmap(one_sample)(ep.train_x, ep.train_y)

  sq = jax.jit(jax.vmap(one_episode))(jax.random.split(key, episodes))
  rms = np.sqrt(np.asarray(sq, np.float64).reshape(-1, len(terms)).mean(0))
  return {t: float(v) for t, v in zip(terms, rms)}


def step_scales(norms: dict[str, float]) -> dict[str, float]:
  """Adam step multipliers ``min(1, |error term| / |term|)`` per term.

  Adam moves every coefficient by about its learning rate per step, whatever
  the size of its term; at the reference size the Hebb, Oja and decay terms
  are 7-12x larger per sample than the error term (the errors below the top
  are small) and Hebb's adds up over an episode, so a step that suits the
  error coefficient wrecks learning when taken by theirs. Scaling each
  term's step by the inverse ratio of the term sizes (:func:`term_norms`,
  at initialization) makes a step change every term's contribution by about
  as much (a fixed diagonal preconditioner); no coefficient moves faster
  than the error term's.
  """
  ref = norms["error"]
  return {t: 1.0 if t == "error" or not (v > 0 and ref > 0) else
          min(1.0, ref / v) for t, v in norms.items()}


def _floats(tree: Any) -> list[Any]:
  return [np.asarray(v).tolist() for v in jax.tree.leaves(tree)]


def _continues(saved: dict[str, Any], setup: dict[str, Any],
               val_every: int) -> bool:
  """Whether a checkpoint's state is a state of the run ``setup`` describes.

  The same arguments, or the same but for a larger ``steps``: up to the
  smaller budget both runs take the same meta-steps (step ``i`` draws from
  ``fold_in(key, i)``), and a run the smaller one stopped on a plateau stops
  there too. It did validate at its last step, which the longer run does
  only if that step is a multiple of ``val_every``.
  """
  old = saved.get("setup")
  if not isinstance(old, dict) or {**old, "steps": setup["steps"]} != setup:
    return False
  state = saved.get("state", {})
  return old["steps"] == setup["steps"] or (
      old["steps"] < setup["steps"] and state.get("step", 0) <= old["steps"]
      and (state.get("stopped") != "max_steps" or setup["val"] is None or
           old["steps"] % val_every == 0))


def meta_train(model: models.MLP, theta0: dict[str, float],
               pool_CxMxD: jax.Array, key: jax.Array, *, steps: int,
               episodes_per_step: int, meta_lr: float, n_way: int,
               k_shot: int, q_query: int, l1: float = 0.0,
               scales: Optional[dict[str, float]] = None,
               val_keys: Optional[jax.Array] = None, val_every: int = 10,
               plateau_window: int = 4, plateau_tol: float = 0.01,
               checkpoint_path: Optional[str] = None,
               checkpoint_every: int = 10,
               on_step: Optional[Callable[[int, Theta, float], None]] = None
               ) -> tuple[dict[str, float], MetaHistory]:
  """Adam on ``theta`` through the inner ``lax.scan`` (``jax.grad``).

  The objective is the mean query cross-entropy of the meta-batch plus
  ``l1 * sum |theta|``; each coefficient's Adam step is multiplied by its
  entry of ``scales`` (default 1; :func:`step_scales`). Meta-step ``i``
  draws ``episodes_per_step`` fresh episodes from ``fold_in(key, i)``.

  With ``val_keys``, theta is scored on those fixed meta-validation
  episodes (query cross-entropy, no penalty) before steps 0, ``val_every``,
  ... and at the end; training stops early when
  :func:`plateaued` (``plateau_window`` validations, relative
  ``plateau_tol``), and the theta returned is the one with the lowest
  validation loss (else the last one).

  With ``checkpoint_path``, the whole state (theta, Adam's state, history)
  is written there as JSON every ``checkpoint_every`` steps and at the end,
  atomically; a later call with the same path and arguments resumes from it
  and gives the numbers an uninterrupted call would (a checkpoint of other
  arguments is ignored and overwritten). A call with a larger ``steps``
  goes on from a run that stopped at its ``steps`` (:func:`_continues`).

  Returns:
    ``(theta, history)``; theta maps term -> float.
  """
  theta0 = {t: float(v) for t, v in theta0.items()}
  init, grad, apply = _meta_step(model, n_way, k_shot, q_query,
                                 episodes_per_step)
  setup = {"theta0": theta0, "steps": steps, "episodes": episodes_per_step,
           "meta_lr": float(meta_lr), "l1": float(l1),
           "scales": None if scales is None else {
               t: float(v) for t, v in scales.items()}, "n_way": n_way,
           "k_shot": k_shot, "q_query": q_query,
           "key": np.asarray(jax.random.key_data(key) if jnp.issubdtype(
               key.dtype, jax.dtypes.prng_key) else key).tolist(),
           "val": None if val_keys is None else [
               val_every, plateau_window, float(plateau_tol),
               np.asarray(jax.random.key_data(val_keys) if jnp.issubdtype(
                   val_keys.dtype, jax.dtypes.prng_key) else val_keys
                          ).tolist()],
           "model": repr(model)}
  theta = {t: jnp.asarray(v, jnp.float32) for t, v in theta0.items()}
  opt_state = init(theta)
  s = {"step": 0, "theta": [{t: float(v) for t, v in theta.items()}],
       "meta_loss": [], "accuracy": [], "skipped": 0, "val_step": [],
       "val_loss": [], "val_accuracy": [],
       "best": None, "stopped": "", "seconds": 0.0, "timed_steps": 0}
  saved = (rundir.read_json(checkpoint_path)
           if checkpoint_path and os.path.exists(checkpoint_path) else None)
  if isinstance(saved, dict) and _continues(saved, setup, val_every):
    s = saved["state"]
    if s["stopped"] == "max_steps":  # ``steps`` grew: go on from there.
      s["stopped"] = ""
    theta = {t: jnp.asarray(v, jnp.float32) for t, v in s["theta"][-1].items()}
    leaves, treedef = jax.tree.flatten(opt_state)
    opt_state = jax.tree.unflatten(treedef, [
        jnp.asarray(v, l.dtype) for v, l in zip(saved["opt_state"], leaves)])

  def save():
    if checkpoint_path:
      whole = {"setup": setup, "state": s, "opt_state": _floats(opt_state)}
      rundir.write_json(checkpoint_path, whole, indent=None)

  pool = jnp.asarray(pool_CxMxD)
  step_scale = {t: jnp.float32(1.0 if scales is None else scales[t])
                for t in theta}

  def validate(i):
    res = evaluate(model, {t: v[None] for t, v in theta.items()}, val_keys,
                   pool, n_way=n_way, k_shot=k_shot, q_query=q_query)
    loss = float(np.mean(np.asarray(res.query_loss)))
    s["val_step"].append(i)
    s["val_loss"].append(loss if np.isfinite(loss) else None)
    s["val_accuracy"].append(float(np.mean(np.asarray(res.query_accuracy))))
    best = s["best"]
    if np.isfinite(loss) and (best is None or loss < best["loss"]):
      s["best"] = {"step": i, "loss": loss,
                   "theta": {t: float(v) for t, v in theta.items()}}
    return plateaued([np.nan if v is None else v for v in s["val_loss"]],
                     plateau_window, plateau_tol)

  first = True  # This session's first meta-step compiles: not timed.
  while not s["stopped"]:
    i = s["step"]
    if val_keys is not None and (i % val_every == 0 or i == steps) and (
        not s["val_step"] or s["val_step"][-1] != i):
      if validate(i):
        s["stopped"] = "plateau"
        break
    if i >= steps:
      s["stopped"] = "max_steps"
      break
    tic = time.perf_counter()
    grads, loss, acc, ok = grad(theta, jax.random.fold_in(key, i), pool,
                                jnp.float32(l1))
    theta, opt_state = apply(theta, opt_state, grads, ok, step_scale,
                             jnp.float32(meta_lr))
    loss, acc, ok = float(loss), float(acc), bool(ok)
    if not first:
      s["seconds"] += time.perf_counter() - tic
      s["timed_steps"] += 1
    first = False
    s["step"] = i + 1
    s["skipped"] += not ok
    s["theta"].append({t: float(v) for t, v in theta.items()})
    s["meta_loss"].append(loss if np.isfinite(loss) else None)
    s["accuracy"].append(acc)
    if s["step"] % checkpoint_every == 0:
      save()
    if on_step is not None:
      on_step(i + 1, theta, loss)
  save()
  nan = lambda v: np.nan if v is None else v  # pylint: disable=unnecessary-lambda-assignment
  history = MetaHistory(
      {t: np.array([th[t] for th in s["theta"]]) for t in theta0},
      np.array([nan(v) for v in s["meta_loss"]], np.float64),
      np.array(s["accuracy"], np.float64), int(s["skipped"]),
      np.array(s["val_step"], np.int64),
      np.array([nan(v) for v in s["val_loss"]], np.float64),
      np.array(s["val_accuracy"], np.float64),
      s["best"]["step"] if s["best"] else s["step"], s["stopped"],
      float(s["seconds"]), int(s["timed_steps"]))
  final = (s["best"]["theta"] if s["best"] else s["theta"][-1])
  return dict(final), history

"""The fused BP + Oja step (ojax.fused) equals the generic path.

Every model option the fused step accepts, Oja on all, hidden or some layers
and plain SGD, batch 1 and > 1, with the rates of a vmapped sweep in the
optimizer state; which transforms take it (ojax.sgd_oja, recognized by type)
and the one info line that says why others do not.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax
from ojax import fused
from ojax import models
from ojax import train

D, C = 12, 4
FEATURES = (9, 7, C)
LRS = (0.3, 0.1, 0.05)  # One grid point per vmapped state.
# The last is negative: ojax.oja turns it into NaN (a diverged point), and so
# must the fused step.
OJA_LRS = (0.2, 0.05, -0.01)


@functools.lru_cache(maxsize=None)
def _data():
  rng = np.random.default_rng(0)
  return train.ClassifierData(
      rng.random((40, D), np.float32), rng.integers(0, C, 40).astype(np.int32),
      rng.random((16, D), np.float32), rng.integers(0, C, 16).astype(np.int32))


def _only_layer_1(params):
  return {k: jax.tree.map(lambda _, k=k: k == "layer_1", v)
          for k, v in params.items()}


# Oja on which layers (of 3), by the mask ojax.sgd_oja is given.
OJA_LAYERS = {"all": (True, True, True), "hidden": (True, True, False),
              "none": (False, False, False), "layer_1": (False, True, False)}


def _tx(oja_layers):
  if oja_layers == "none":
    return ojax.sgd_oja(0.1, None)
  mask = {"all": None, "hidden": models.hidden_mask,
          "layer_1": _only_layer_1}[oja_layers]
  return ojax.sgd_oja(0.1, 0.05, mask=mask)


@functools.lru_cache(maxsize=None)
def _params():
  """Initial params of 3 points (MLP init does not depend on the options)."""
  model = models.MLP(features=FEATURES)
  keys = jax.random.split(jax.random.key(1), 3)
  return jax.jit(jax.vmap(lambda k: model.init(
      k, jnp.zeros((1, D)))["params"]))(keys), keys


def _sweep_states(tx):
  """Three points with different rates, as a vmapped sweep sets them."""
  params, keys = _params()
  opt_state = jax.vmap(tx.init)(params)
  rates = {"learning_rate": np.asarray(LRS)}
  if tx.oja:
    rates["oja_learning_rate"] = np.asarray(OJA_LRS)
  opt_state = ojax.rules.with_rates(opt_state, **rates)
  return train.TrainState(params, opt_state, {}, keys,
                          jnp.full(3, -1, jnp.int32))


def _compiled(fn, *args):
  """``jit(fn)`` compiled without LLVM's optimizations (4x faster to
  compile; the same float semantics)."""
  return jax.jit(fn).lower(*args).compile(
      compiler_options={"xla_backend_optimization_level": 0})


def _train(task, states, num_steps):
  """``num_steps`` steps of ``task`` for every state, as the loop runs them
  (samples from ``task.sample``, ``enter``/``exit`` around the scan)."""
  data = jax.tree.map(jnp.asarray, _data())

  def one(state):
    inputs = task.sample(state, jnp.asarray(0), num_steps, data)
    if task.enter is not None:
      state = task.enter(state)
    state, metrics = jax.lax.scan(lambda s, i: task.step(s, i, data), state,
                                  inputs)
    if task.exit is not None:
      state = task.exit(state)
    return state, metrics

  return jax.vmap(one)(states)


def _assert_same(generic, fast, start):
  """Params to float tolerance, optimizer state exactly, same metrics."""
  (sa, ma), (sb, mb) = generic, fast
  for x, y, x0 in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params),
                      jax.tree.leaves(start.params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    # The comparison has teeth: training moved the weights far more.
    assert np.nanmax(np.abs(np.asarray(x) - np.asarray(x0))) > 1e-2
  assert jax.tree.structure(sa) == jax.tree.structure(sb)
  for x, y in zip(jax.tree.leaves(sa.opt_state),
                  jax.tree.leaves(sb.opt_state)):
    np.testing.assert_array_equal(x, y)
  assert ma.keys() == mb.keys()
  for k in ma:
    np.testing.assert_allclose(ma[k], mb[k], rtol=1e-5, atol=1e-6)


# Every option the fused step accepts appears at least once.
CASES = [("softplus", "softmax", "all", 1), ("softplus", "softmax", "hidden", 1),
         ("relu", "softmax", "none", 1), ("tanh", "logits", "all", 1),
         ("identity", "softmax", "hidden", 1), ("relu", "softmax", "all", 3),
         ("tanh", "softmax", "hidden", 3), ("softplus", "logits", "none", 3),
         ("softplus", "softmax", "layer_1", 1),
         ("softplus", "softmax", "all", 5)]  # Batch > 4: a matrix product.


@pytest.mark.parametrize("activation,output_post,oja_layers,batch", CASES)
def test_fused_step_equals_generic_step(activation, output_post, oja_layers,
                                        batch):
  model = models.MLP(features=FEATURES, activation=activation,
                     output_post=output_post)
  tx = _tx(oja_layers)
  generic = train.classifier_task(model, tx, batch_size=batch, fast=False)
  fast = train.classifier_task(model, tx, batch_size=batch)
  assert isinstance(fast.step, fused.FusedStep)
  assert fast.step.oja_layers(_params()[0]) == OJA_LAYERS[oja_layers]
  states = _sweep_states(tx)
  both = _compiled(lambda s: (_train(generic, s, 24), _train(fast, s, 24)),
                   states)
  _assert_same(*both(states), states)


def test_the_loop_leaves_the_generic_paths_state_after_each_chunk():
  """Checkpoints and resume are interchangeable between the two paths:
  after ``run`` (two chunks, each in and out of the fused layout) the state
  has the generic path's structure, layout and values."""
  model = models.MLP(features=FEATURES)
  tx = _tx("all")
  fast = train.classifier_task(model, tx)
  states = _sweep_states(tx)
  done = train.run(fast, states, _data(), num_samples=24, eval_every=12)
  assert [h["samples"] for h in done.history] == [0, 12, 24]
  generic = train.classifier_task(model, tx, fast=False)
  reference = _compiled(lambda s: _train(generic, s, 24), states)(states)
  assert jax.tree.map(jnp.shape, done.states) == jax.tree.map(
      jnp.shape, reference[0])
  _assert_same(reference, (done.states, reference[1]), states)


@pytest.mark.parametrize("tx", [
    # A schedule: read from the state each step.
    ojax.sgd_oja(optax.linear_schedule(0.3, 0.01, 20), 0.05),
    # Arrays, as optax.inject_hyperparams passes them: used as given.
    ojax.sgd_oja(jnp.asarray(0.1), jnp.asarray(0.05)),
], ids=["schedule", "arrays"])
def test_the_fused_step_reads_each_steps_rates_as_the_generic_one(tx):
  model = models.MLP(features=FEATURES)
  fast = train.classifier_task(model, tx)
  assert isinstance(fast.step, fused.FusedStep)
  generic = train.classifier_task(model, tx, fast=False)
  params, keys = _params()
  states = train.TrainState(params, jax.vmap(tx.init)(params), {}, keys,
                            jnp.full(3, -1, jnp.int32))
  both = _compiled(lambda s: (_train(generic, s, 24), _train(fast, s, 24)),
                   states)
  _assert_same(*both(states), states)


# --- Which transforms take the fused step ---------------------------------


@pytest.mark.parametrize("tx", [
    ojax.sgd_oja(0.01, 0.001),  # The README's form.
    ojax.sgd_oja(learning_rate=0.01, oja_learning_rate=0.001,
                 mask=models.hidden_mask),
    ojax.sgd_oja(0.01, 0.001, mask=_only_layer_1),
    ojax.sgd_oja(0.01, 0.0),
    ojax.sgd_oja(0.01, None),
], ids=["readme", "hidden", "one_layer", "oja_rate_0", "plain_sgd"])
def test_ojax_sgd_oja_takes_the_fused_step(tx, caplog):
  with caplog.at_level(logging.INFO, logger="ojax"):
    task = train.classifier_task(models.MLP(features=(128, 10)), tx)
  assert isinstance(task.step, fused.FusedStep)
  assert task.enter is not None and task.exit is not None
  assert not caplog.records


def test_the_readme_form_with_per_point_rates_is_fused_and_right():
  """A vmapped sweep (rates set per point by with_rates) runs fused, and
  each point's first update is that point's SGD + Oja step, computed here
  independently from the forward pass."""
  model = models.MLP(features=FEATURES)
  tx = ojax.sgd_oja(0.1, 0.05)
  task = train.classifier_task(model, tx)
  assert isinstance(task.step, fused.FusedStep)
  states = _sweep_states(tx)
  lrs, etas = np.asarray(LRS), np.asarray(OJA_LRS)
  (after, _) = _compiled(lambda s: _train(task, s, 1), states)(states)
  data = _data()
  idx = np.asarray(jax.vmap(lambda s: task.sample(
      s, jnp.asarray(0), 1, data))(states))[:, 0, 0]
  for p in range(2):  # The third point's Oja rate is negative: NaN.
    params = jax.tree.map(lambda a, p=p: np.asarray(a[p], np.float64),
                          states.params)
    x = data.train_x[idx[p]].astype(np.float64)
    ys, zs = [x], []
    for n in models.layer_names(params):
      zs.append(ys[-1] @ params[n]["kernel"])
      ys.append(np.log1p(np.exp(10 * zs[-1])) / 10)
    logits = zs[-1]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    ys[-1] = probs  # The output layer's post: softmax.
    d = probs - np.eye(C)[data.train_y[idx[p]]]
    names = models.layer_names(params)
    for l in range(len(names) - 1, -1, -1):
      k = params[names[l]]["kernel"]
      grad = np.outer(ys[l], d)
      oja = np.outer(ys[l] - k @ ys[l + 1], ys[l + 1])
      want = k - lrs[p] * grad + etas[p] * oja
      np.testing.assert_allclose(after.params[names[l]]["kernel"][p], want,
                                 rtol=2e-4, atol=2e-6)
      if l:
        sig = 1 / (1 + np.exp(-10 * zs[l - 1]))  # softplus' derivative.
        d = (d @ k.T) * sig
  assert np.all(np.isnan(after.params["layer_0"]["kernel"][2]))


GENERIC = [
    (optax.adam(0.1), "the optimizer (made by optax.chain) is not "
     "ojax.sgd_oja"),
    (optax.inject_hyperparams(optax.adam)(learning_rate=0.1),
     "the optimizer (made by optax.inject_hyperparams) is not ojax.sgd_oja"),
    (optax.sgd(0.1, momentum=0.9), "(made by optax.chain) is not"),
    (optax.chain(optax.clip(1.0), ojax.sgd_oja(0.1, 0.05)),
     "(made by optax.chain) is not ojax.sgd_oja"),
    (optax.chain(ojax.sgd_oja(0.1, 0.05), optax.add_decayed_weights(1e-3)),
     "(made by optax.chain) is not"),
    (optax.apply_if_finite(ojax.sgd_oja(0.1, 0.05), 3),
     "(made by optax.apply_if_finite) is not"),
    (ojax.with_rule(optax.sgd(0.1), ojax.oja(0.05)),
     "(made by ojax.with_rule) is not ojax.sgd_oja"),
    (ojax.oja(0.05), "the optimizer is a plasticity rule alone"),
]


@pytest.mark.parametrize("tx,why", GENERIC, ids=[
    "adam", "injected_adam", "momentum", "clip_chain", "weight_decay",
    "apply_if_finite", "with_rule", "rule_alone"])
def test_other_optimizers_take_the_generic_step_and_say_why(tx, why, caplog):
  model = models.MLP(features=FEATURES)
  with caplog.at_level(logging.INFO, logger="ojax"):
    task = train.classifier_task(model, tx)
  assert not isinstance(task.step, fused.FusedStep)
  assert task.enter is None and task.exit is None
  assert len(caplog.records) == 1
  line = caplog.records[0].getMessage()
  assert line.startswith("ojax: generic step (the fused step does not "
                         "apply): ")
  assert why in line and "\n" not in line


@pytest.mark.parametrize("field,value", [
    ("use_bias", True), ("layer_norm", True), ("feedback", "random")])
def test_other_models_take_the_generic_step_and_say_why(field, value, caplog):
  model = models.MLP(features=FEATURES, **{field: value})
  with caplog.at_level(logging.INFO, logger="ojax"):
    assert fused.select_step(model, _tx("all")) is None
  assert [r.getMessage() for r in caplog.records] == [
      "ojax: generic step (the fused step does not apply): "
      f"MLP.{field}={value!r} is not supported."]


def test_no_line_when_the_generic_step_is_asked_for(caplog):
  with caplog.at_level(logging.INFO, logger="ojax"):
    task = train.classifier_task(models.MLP(features=FEATURES),
                                 optax.adam(0.1), fast=False)
  assert not isinstance(task.step, fused.FusedStep)
  assert not caplog.records


# --- unit_norm: each unit's incoming weights projected to norm 1 ----------

# (activation, output_post, Oja on, unit norm on, batch): the projection
# with the Oja term on every layer at a batch that takes the matrix-product
# update, and alone (oja_learning_rate=None, the norm control) on the hidden
# layers at batch 1.
NORM_CASES = [("softplus", "softmax", "all", "all", 5),
              ("relu", "logits", "none", "hidden", 1)]


@pytest.mark.parametrize("activation,output_post,oja_on,norm_on,batch",
                         NORM_CASES)
def test_fused_step_with_unit_norm_equals_generic_step(
    activation, output_post, oja_on, norm_on, batch):
  model = models.MLP(features=FEATURES, activation=activation,
                     output_post=output_post)
  mask = {"all": None, "hidden": models.hidden_mask}[norm_on]
  assert oja_on in ("none", norm_on)  # One mask for both.
  tx = ojax.sgd_oja(0.1, None if oja_on == "none" else 0.05, mask=mask,
                    unit_norm=True)
  generic = train.classifier_task(model, tx, batch_size=batch, fast=False)
  fast = train.classifier_task(model, tx, batch_size=batch)
  assert isinstance(fast.step, fused.FusedStep)
  params = _params()[0]
  assert fast.step.oja_layers(params) == OJA_LAYERS[oja_on]
  assert fast.step.norm_layers(params) == OJA_LAYERS[norm_on]
  states = _sweep_states(tx)  # Per-point rates (with_rates).
  both = _compiled(lambda s: (_train(generic, s, 24), _train(fast, s, 24)),
                   states)
  generic_out, fast_out = both(states)
  _assert_same(generic_out, fast_out, states)
  # The projection acted: unit columns where it is on, not elsewhere.
  for name, on in zip(models.layer_names(params), OJA_LAYERS[norm_on]):
    for p in range(2):  # The third point's Oja rate is negative (NaN).
      norms = np.linalg.norm(
          np.asarray(fast_out[0].params[name]["kernel"][p], np.float64),
          axis=0)
      assert np.allclose(norms, 1.0, atol=1e-5) == on, (name, p, norms)

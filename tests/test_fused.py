"""The fused BP + Oja step (ojax.fused) equals the generic path.

Every model option the fused step accepts, both Oja layer sets and plain
SGD, batch 1 and > 1, with the rates of a vmapped sweep in the optimizer
state; and what it must refuse.
"""

import functools

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


def _tx(oja_layers):
  if oja_layers == "none":
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
  return fused.sgd_oja(0.1, 0.05, oja_layers=oja_layers)


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
  hyper = dict(opt_state.hyperparams)
  hyper["learning_rate"] = jnp.asarray(LRS, jnp.float32)
  if "oja_learning_rate" in hyper:
    hyper["oja_learning_rate"] = jnp.asarray(OJA_LRS, jnp.float32)
  return train.TrainState(params, opt_state._replace(hyperparams=hyper), {},
                          keys, jnp.full(3, -1, jnp.int32))


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
  assert fast.step.oja_layers == oja_layers
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


def test_a_schedule_is_read_from_the_state_each_step():
  model = models.MLP(features=FEATURES)
  tx = optax.inject_hyperparams(
      lambda learning_rate, oja_learning_rate: ojax.sgd_oja(
          learning_rate, oja_learning_rate))(
              learning_rate=optax.linear_schedule(0.3, 0.01, 20),
              oja_learning_rate=0.05)
  fast = train.classifier_task(model, tx)
  assert isinstance(fast.step, fused.FusedStep)
  generic = train.classifier_task(model, tx, fast=False)
  params, keys = _params()
  states = train.TrainState(params, jax.vmap(tx.init)(params), {}, keys,
                            jnp.full(3, -1, jnp.int32))
  both = _compiled(lambda s: (_train(generic, s, 24), _train(fast, s, 24)),
                   states)
  _assert_same(*both(states), states)


def _masked(inner):
  return optax.masked(inner, fused.hidden_mask)


@pytest.mark.parametrize("tx", [
    optax.inject_hyperparams(optax.adam)(learning_rate=0.1),
    optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9),
    optax.inject_hyperparams(
        lambda learning_rate, oja_learning_rate: optax.chain(
            optax.sgd(learning_rate), optax.add_decayed_weights(1e-3),
            ojax.oja(oja_learning_rate)))(learning_rate=0.1,
                                          oja_learning_rate=0.05),
    optax.inject_hyperparams(
        lambda learning_rate, oja_learning_rate: optax.chain(
            optax.sgd(learning_rate),
            optax.masked(ojax.oja(oja_learning_rate),
                         lambda p: {k: jax.tree.map(lambda _: k == "layer_1",
                                                    v)
                                    for k, v in p.items()})))(
                                        learning_rate=0.1,
                                        oja_learning_rate=0.05),
    optax.inject_hyperparams(
        lambda learning_rate, oja_learning_rate: optax.apply_if_finite(
            ojax.sgd_oja(learning_rate, oja_learning_rate), 3))(
                learning_rate=0.1, oja_learning_rate=0.05),
    ojax.sgd_oja(0.1, 0.05),  # Rates not in the state.
    optax.sgd(0.1),
], ids=["adam", "momentum", "weight_decay", "oja_on_one_layer",
        "apply_if_finite", "constant_rates", "plain_sgd"])
def test_other_optimizers_take_the_generic_step(tx):
  model = models.MLP(features=FEATURES)
  assert fused.select_step(model, tx) is None
  task = train.classifier_task(model, tx)
  assert not isinstance(task.step, fused.FusedStep)
  assert task.enter is None and task.exit is None


@pytest.mark.parametrize("field,value", [
    ("use_bias", True), ("layer_norm", True), ("feedback", "random")])
def test_other_models_take_the_generic_step(field, value):
  model = models.MLP(features=FEATURES, **{field: value})
  assert fused.select_step(model, _tx("all")) is None


def test_a_description_that_disagrees_with_the_optimizer_is_refused():
  model = models.MLP(features=FEATURES)
  assert fused.select_step(model, _tx("hidden"), oja_layers="all") is None
  assert fused.select_step(model, _tx("all"), optimizer="adam") is None
  step = fused.select_step(model, _tx("hidden"), optimizer="sgd",
                           oja_layers="hidden", batch_size=2)
  assert step is not None and step.oja_layers == "hidden"

"""Tests of the compiled online loop in ojax.train."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax
from ojax import data as data_lib
from ojax import models
from ojax import train


def _tiny_data(n=60, m=25, d=12, c=3, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, d))
  def draw(k):
    y = rng.integers(0, c, k).astype(np.int32)
    x = (centers[y] + 0.5 * rng.normal(size=(k, d))).astype(np.float32)
    return x, y
  (tx_, ty), (vx, vy) = draw(n), draw(m)
  return data_lib.Dataset(tx_, ty, vx, vy, c, "tiny")


MODEL = models.MLP(features=(8, 3))


def _run(keys, tx=None, **kwargs):
  tx = tx or ojax.sgd_oja(0.05, 0.01)
  data = _tiny_data()
  states = train.init_states(MODEL, tx, keys, data.input_dim)
  kwargs = {"num_samples": 120, "eval_every": 40, **kwargs}
  return train.run(MODEL, tx, data, states, **kwargs)


def test_same_config_and_seed_give_the_same_numbers():
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  a, b = _run(keys), _run(keys)
  for ha, hb in zip(a.history, b.history):
    for k in ha:
      np.testing.assert_array_equal(ha[k], hb[k])


def test_vmapped_seeds_equal_separate_runs():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  both = train.stack_history(_run(keys).history)
  alone = train.stack_history(_run(keys[1:2]).history)
  np.testing.assert_allclose(both["test_accuracy"][:, 1],
                             alone["test_accuracy"][:, 0])
  np.testing.assert_allclose(both["test_loss"][:, 1], alone["test_loss"][:, 0],
                             rtol=1e-5)


def test_history_has_an_evaluation_at_zero_and_every_chunk():
  progress = _run(jax.random.split(jax.random.PRNGKey(0), 2), num_samples=100,
                  eval_every=40)
  assert [h["samples"] for h in progress.history] == [0, 40, 80, 100]
  assert progress.history[-1]["test_accuracy"].shape == (2,)


def test_sample_stream_is_a_fresh_permutation_of_the_data_each_epoch():
  key = jax.random.PRNGKey(3)
  stream = np.asarray(train.sample_indices(key, jnp.asarray(0), 30, 10))
  epochs = stream.reshape(3, 10)
  for e in epochs:
    assert sorted(e) == list(range(10))
  assert not np.array_equal(epochs[0], epochs[1])
  part = np.asarray(train.sample_indices(key, jnp.asarray(7), 13, 10))
  np.testing.assert_array_equal(part, stream[7:20])


def test_compiled_loop_equals_a_python_loop_of_per_sample_updates():
  data = _tiny_data()
  tx = ojax.sgd_oja(0.05, 0.02)
  state = train.init_state(MODEL, tx, jax.random.PRNGKey(5), data.input_dim)
  new_state, _ = train.train_steps(MODEL, tx, state, jnp.asarray(0),
                                   data.train_x, data.train_y, num_steps=15)
  idx = np.asarray(train.sample_indices(state.data_key, jnp.asarray(0), 15,
                                        len(data.train_y)))
  params, opt_state = state.params, state.opt_state
  for i in idx:
    def loss(p, i=i):
      logits, acts = MODEL.apply({"params": p}, data.train_x[i:i + 1])
      return train.cross_entropy(logits, data.train_y[i:i + 1]), acts
    grads, acts = jax.grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params, activations=acts)
    params = optax.apply_updates(params, updates)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-6), new_state.params, params)


def test_online_accuracy_scores_each_sample_before_learning_it():
  data = _tiny_data()
  tx = optax.sgd(0.0)  # Nothing is learned: online accuracy = init accuracy.
  state = train.init_state(MODEL, tx, jax.random.PRNGKey(2), data.input_dim)
  _, metrics = train.train_steps(MODEL, tx, state, jnp.asarray(0),
                                 data.train_x, data.train_y, num_steps=60)
  logits, _ = MODEL.apply({"params": state.params}, data.train_x)
  expected = np.mean(np.argmax(logits, -1) == data.train_y)
  assert float(metrics["online_accuracy"]) == pytest.approx(expected)


def test_evaluate_in_padded_batches_matches_one_batch():
  data = _tiny_data(m=23)
  params = MODEL.init(jax.random.PRNGKey(0), data.test_x)["params"]
  a = train.evaluate(MODEL, params, {}, data.test_x, data.test_y, 5)
  b = train.evaluate(MODEL, params, {}, data.test_x, data.test_y, 1000)
  logits, _ = MODEL.apply({"params": params}, data.test_x)
  acc = np.mean(np.argmax(logits, -1) == data.test_y)
  assert float(a["test_accuracy"]) == pytest.approx(acc)
  assert float(a["test_loss"]) == pytest.approx(float(b["test_loss"]),
                                                rel=1e-5)


def test_mini_batches_consume_batch_size_samples_per_step():
  progress = _run(jax.random.split(jax.random.PRNGKey(0), 1), batch_size=4,
                  num_samples=80, eval_every=40)
  assert progress.samples_done == 80


def test_diverging_seed_is_marked_with_its_sample_index_and_others_go_on():
  tx = optax.inject_hyperparams(ojax.sgd_oja)(learning_rate=0.05,
                                              oja_learning_rate=0.01)
  data = _tiny_data()
  states = train.init_states(MODEL, tx, jax.random.split(
      jax.random.PRNGKey(0), 2), data.input_dim)
  hyper = dict(states.opt_state.hyperparams)
  hyper["learning_rate"] = jnp.asarray([0.05, 1e30])
  states = states._replace(opt_state=states.opt_state._replace(
      hyperparams=hyper))
  progress = train.run(MODEL, tx, data, states, num_samples=80, eval_every=40)
  diverged = progress.history[-1]["diverged_at"]
  assert diverged[0] == -1 and 0 <= diverged[1] < 80
  assert np.isfinite(progress.history[-1]["test_loss"][0])


@pytest.mark.parametrize("kwargs, message", [
    ({"num_samples": 0}, "num_samples=0 must be a positive integer"),
    ({"eval_every": 30, "batch_size": 4}, "eval_every=30 must be a multiple"),
    ({"batch_size": 1.5}, "batch_size=1.5 must be a positive integer"),
])
def test_bad_sample_counts_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _run(jax.random.split(jax.random.PRNGKey(0), 1), **kwargs)

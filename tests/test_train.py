"""Tests of the compiled online loop in ojax.train."""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax
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
  return train.ClassifierData(tx_, ty, vx, vy)


MODEL = models.MLP(features=(8, 3))
D = 12
# One transform and task for the module, so the loop compiles once per shape.
TX = ojax.sgd_oja(0.05, 0.01)
TASK = train.classifier_task(MODEL, TX)
DATA = jax.tree.map(jnp.asarray, _tiny_data())


def _run(keys, batch_size=1, **kwargs):
  states = train.init_states(MODEL, TX, keys, D)
  kwargs = {"num_samples": 120, "eval_every": 40, **kwargs}
  task = TASK if batch_size == 1 else train.classifier_task(
      MODEL, TX, batch_size=batch_size)
  return train.run(task, states, DATA, **kwargs)


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
  data, tx = DATA, TX
  state = train.init_state(MODEL, tx, jax.random.PRNGKey(5), D)
  new_state, _ = train._steps(TASK, state, jnp.asarray(0), 15, data)  # pylint: disable=protected-access
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
  data = DATA
  tx = optax.sgd(0.0)  # Nothing is learned: online accuracy = init accuracy.
  state = train.init_state(MODEL, tx, jax.random.PRNGKey(2), D)
  task = train.classifier_task(MODEL, tx)
  _, metrics = train._steps(task, state, jnp.asarray(0), 60, data)  # pylint: disable=protected-access
  logits, _ = MODEL.apply({"params": state.params}, data.train_x)
  expected = np.mean(np.argmax(logits, -1) == data.train_y)
  assert float(metrics["online_accuracy"]) == pytest.approx(expected)


def test_evaluate_in_padded_batches_matches_one_batch():
  data = jax.tree.map(jnp.asarray, _tiny_data(m=23))
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
  assert [h["samples"] for h in progress.history] == [0, 40, 80]


def test_diverging_seed_is_marked_with_its_sample_index_and_others_go_on():
  tx = optax.inject_hyperparams(ojax.sgd_oja)(learning_rate=0.05,
                                              oja_learning_rate=0.01)
  states = train.init_states(MODEL, tx, jax.random.split(
      jax.random.PRNGKey(0), 3), D)
  hyper = dict(states.opt_state.hyperparams)
  # Seed 1 blows up to NaN; seed 2 stays finite but its loss exceeds the
  # bound (a huge but finite loss is divergence too).
  hyper["learning_rate"] = jnp.asarray([0.05, 1e30, 0.05])
  states = states._replace(opt_state=states.opt_state._replace(
      hyperparams=hyper))
  params = jax.tree.map(lambda k: k.at[2].multiply(1e4), states.params)
  states = states._replace(params=params)
  task = train.classifier_task(MODEL, tx)
  progress = train.run(task, states, DATA, num_samples=80, eval_every=40)
  diverged = progress.history[-1]["diverged_at"]
  assert diverged[0] == -1 and 0 <= diverged[1] < 80
  assert diverged[2] == 0  # Already at the first evaluation, before training.
  assert progress.history[0]["diverged_at"][2] == 0
  assert np.isfinite(progress.history[-1]["test_loss"][0])


def test_a_diverged_seed_is_one_with_non_finite_parameters():
  state = train.init_state(MODEL, optax.sgd(0.1), jax.random.PRNGKey(0), D)
  assert bool(train.all_finite(state.params))
  bad = jax.tree.map(lambda k: k.at[0, 0].set(jnp.inf), state.params)
  assert not bool(train.all_finite(bad))
  assert bool(train.is_diverged(jnp.asarray(train.LOSS_BOUND * 2)))
  assert not bool(train.is_diverged(jnp.asarray(train.LOSS_BOUND / 2)))
  # A loss that is not a number is divergence too (NaN > bound is False).
  for loss in (jnp.nan, jnp.inf, -jnp.inf):
    assert bool(train.is_diverged(jnp.asarray(loss, jnp.float32))), loss
  np.testing.assert_array_equal(
      train.is_diverged(jnp.asarray([0.5, jnp.nan, 2e4, -1.0])),
      [False, True, True, False])


def test_resuming_mid_run_gives_the_uninterrupted_numbers():
  keys = jax.random.split(jax.random.PRNGKey(4), 2)
  whole = _run(keys, num_samples=120, eval_every=40)
  half = _run(keys, num_samples=40, eval_every=40)
  assert half.samples_done == 40
  rest = train.run(TASK, half, DATA, num_samples=120, eval_every=40)
  # The resumed run went on to the end: every evaluation of the whole run is
  # in its history (a run that returned at once would still hold the first
  # two), and none is missing or repeated.
  assert rest.samples_done == 120
  assert [h["samples"] for h in whole.history] == [0, 40, 80, 120]
  assert [h["samples"] for h in rest.history] == [0, 40, 80, 120]
  for a, b in zip(whole.history, rest.history, strict=True):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  np.testing.assert_array_equal(
      jax.tree.leaves(whole.states.params)[0],
      jax.tree.leaves(rest.states.params)[0])


def test_resume_off_the_evaluation_grid_is_refused():
  keys = jax.random.split(jax.random.PRNGKey(4), 1)
  half = _run(keys, num_samples=40, eval_every=40)
  with pytest.raises(ValueError, match="cannot resume at 40 samples"):
    train.run(TASK, half, DATA, num_samples=120, eval_every=30)


def test_pinned_one_step_regression():
  """One BP + Oja step on fixed inputs, against numbers pinned by hand.

  The expected kernels were computed once from the formula
  K <- K - lr dL/dK + eta outer(x - K y, y) written out in numpy below (not
  by the code under test). If this fails, a change altered the update: check
  the rule's sign and scale, the softmax post of the output layer, and that
  both terms use the weights of the same forward pass.
  """
  k0 = np.array([[0.5, -0.25], [0.125, 0.75], [-0.5, 0.25]], np.float32)
  k1 = np.array([[1.0, -0.5], [0.25, 0.5]], np.float32)
  x = np.array([[0.2, -0.4, 0.6]], np.float32)
  label = np.array([1])
  lr, eta = 0.1, 0.05
  model = models.MLP(features=(2, 2), activation="tanh")
  params = {"layer_0": {"kernel": jnp.asarray(k0)},
            "layer_1": {"kernel": jnp.asarray(k1)}}
  tx = ojax.sgd_oja(lr, eta)
  state = train.TrainState(params, tx.init(params), {}, jax.random.PRNGKey(0),
                           jnp.asarray(-1))
  data = train.ClassifierData(jnp.asarray(x), jnp.asarray(label), x, label)
  step = train.generic_classifier_step(model, tx)
  new, metrics = step(state, jnp.asarray([0]), data)
  # The same step written out in numpy.
  h = np.tanh(x @ k0)
  z = h @ k1
  p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
  e1 = p - np.eye(2)[label]
  e0 = (e1 @ k1.T) * (1 - h ** 2)
  want1 = k1 - lr * h.T @ e1 + eta * (h - p @ k1.T).T @ p
  want0 = k0 - lr * x.T @ e0 + eta * (x - h @ k0.T).T @ h
  np.testing.assert_allclose(new.params["layer_1"]["kernel"], want1,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new.params["layer_0"]["kernel"], want0,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["train_loss"]),
                             -np.log(p[0, 1]), rtol=1e-5)
  # Pinned values (the numpy lines above in float64, rounded to 1e-4).
  np.testing.assert_allclose(new.params["layer_1"]["kernel"],
                             [[1.0024, -0.5212], [0.2458, 0.4746]],
                             atol=1e-4)
  np.testing.assert_allclose(new.params["layer_0"]["kernel"],
                             [[0.4848, -0.2507], [0.1515, 0.7481],
                              [-0.5421, 0.2509]], atol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_samples": 0}, "num_samples=0 must be a positive integer"),
    ({"eval_every": 30, "batch_size": 4}, "eval_every=30 must be a multiple"),
    ({"batch_size": 1.5}, "batch_size=1.5 must be a positive integer"),
])
def test_bad_sample_counts_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _run(jax.random.split(jax.random.PRNGKey(0), 1), **kwargs)


_SINGLE_THREADED_SCRIPT = textwrap.dedent("""
    import os
    from ojax import train
    train.single_threaded_cpu()              # Before JAX starts: sets it.
    print(os.environ["XLA_FLAGS"])
    import jax
    jax.numpy.ones(2).block_until_ready()    # The backend starts here.
    env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false"}
    train.single_threaded_cpu(env)           # A mapping: no check.
    print(env["XLA_FLAGS"])
    del os.environ["XLA_FLAGS"]
    try:
      train.single_threaded_cpu()            # Too late for this process.
    except RuntimeError as err:
      print("RuntimeError:", err)
    print(os.environ.get("XLA_FLAGS"))
""")


def test_single_threaded_cpu_sets_the_flag_and_refuses_when_too_late():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", _SINGLE_THREADED_SCRIPT],
                       capture_output=True, text=True, check=True, env=env,
                       timeout=300).stdout.splitlines()
  assert out == [
      "--xla_cpu_multi_thread_eigen=false",
      "--xla_cpu_enable_fast_math=false --xla_cpu_multi_thread_eigen=false",
      "RuntimeError: ojax.train.single_threaded_cpu() was called after JAX "
      "started its backend, so XLA_FLAGS are no longer read; call it before "
      "the first JAX computation (or jax.devices()), e.g. at the top of the "
      "script, or set XLA_FLAGS=--xla_cpu_multi_thread_eigen=false in the "
      "environment.",
      "None",  # Nothing set when it would do nothing.
  ]


def test_single_threaded_cpu_leaves_a_users_setting_alone():
  env = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}
  train.single_threaded_cpu(env)
  assert env == {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"}

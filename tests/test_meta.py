"""Tests of the meta-learning task (episodes, inner loop, runner), tiny sizes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax
from experiments.configs import meta_plasticity as mp_config
from experiments.tasks import episodes
from experiments.tasks import meta
from experiments.tasks import meta_plasticity as runner
from ojax import models


def _pool(classes=6, per_class=12, dim=8, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(size=(classes, per_class, dim)), dtype)


def test_class_pool_makes_a_class_per_digit_and_rotation():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(30, 16)).astype(np.float32)
  y = np.repeat(np.arange(3), 10)
  pool = episodes.class_pool(x, y, digits=(0, 2), rotations=(0, 1), side=4)
  assert pool.shape == (4, 10, 16)
  first_digit2 = x[y == 2][0].reshape(4, 4)
  np.testing.assert_allclose(pool[2, 0], first_digit2.ravel())
  np.testing.assert_allclose(pool[3, 0], np.rot90(first_digit2).ravel())
  small = episodes.class_pool(x, y, (1,), (0,), side=4, downsample=2)
  np.testing.assert_allclose(small[0, 0, 0], x[y == 1][0].reshape(4, 4)[
      :2, :2].mean(), rtol=1e-6)


def test_episode_has_k_per_class_and_disjoint_query_images():
  pool = _pool()
  ep = episodes.sample_episode(jax.random.PRNGKey(2), pool, n_way=3,
                               k_shot=4, q_query=2)
  assert ep.train_x.shape == (12, 8) and ep.query_x.shape == (6, 8)
  assert np.bincount(np.asarray(ep.train_y)).tolist() == [4, 4, 4]
  assert np.bincount(np.asarray(ep.query_y)).tolist() == [2, 2, 2]
  flat = np.asarray(pool).reshape(-1, 8)
  owner = lambda img: np.flatnonzero(np.all(flat == img, axis=1))[0] // 12
  for label in range(3):  # every image of a label comes from one class
    cls = {owner(i) for i in np.asarray(ep.train_x)[np.asarray(ep.train_y)
                                                    == label]}
    cls |= {owner(i) for i in np.asarray(ep.query_x)[np.asarray(ep.query_y)
                                                     == label]}
    assert len(cls) == 1
  train_rows = {tuple(r) for r in np.asarray(ep.train_x)}
  assert not train_rows & {tuple(r) for r in np.asarray(ep.query_x)}


def test_error_plus_oja_rule_equals_ojax_sgd_oja():
  model = models.MLP(features=(5, 3))
  x = jax.random.uniform(jax.random.PRNGKey(3), (1, 4))
  variables = model.init(jax.random.PRNGKey(4), x)
  params = variables["params"]

  def loss(p):
    logits, acts = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.array([1])).mean(), acts

  grads, acts = jax.grad(loss, has_aux=True)(params)
  traces = meta.error_traces(model, params, None, acts,
                             jax.nn.one_hot(jnp.array([1]), 3))
  ours = meta.local_update(params, traces, {"error": 0.2, "oja": 0.05})
  tx = ojax.sgd_oja(0.2, 0.05)
  theirs, _ = tx.update(grads, tx.init(params), params, activations=acts)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7),
               ours, theirs)
  hebb = meta.local_update(params, traces, {"error": 0.0, "hebb": 1.0})
  trace = acts["layer_0"]["kernel"]
  np.testing.assert_allclose(hebb["layer_0"]["kernel"],
                             jnp.outer(trace.pre[0], trace.post[0]),
                             rtol=1e-6)


@pytest.mark.parametrize("feedback", ["backprop", "random"])
def test_explicit_errors_equal_autodiff_through_the_model(feedback):
  x = jax.random.uniform(jax.random.PRNGKey(5), (2, 4))
  y = jnp.array([0, 2])
  model = models.MLP(features=(5, 4, 3), feedback=feedback)
  variables = model.init(jax.random.PRNGKey(6), x)
  rest = {k: v for k, v in variables.items() if k != "params"}

  def loss(p):
    logits, acts = model.apply({"params": p, **rest}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(
    ), acts

  auto, acts = jax.grad(loss, has_aux=True)(variables["params"])

  def error_grads(feedback_weights):  # mean_b x e^T from the traced errors.
    traces = meta.error_traces(model, variables["params"], feedback_weights,
                               acts, jax.nn.one_hot(y, 3))
    return jax.tree.map(lambda t: t.pre.T @ t.post_error / t.pre.shape[0],
                        traces, is_leaf=lambda t: isinstance(t, ojax.Trace))

  ours = error_grads(variables.get("feedback"))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                       atol=1e-6), ours, auto)
  if feedback == "random":  # B, not K, carries the errors below the top.
    bp = error_grads(None)
    np.testing.assert_allclose(bp["layer_2"]["kernel"],
                               ours["layer_2"]["kernel"], rtol=1e-6)
    assert not np.allclose(bp["layer_0"]["kernel"], ours["layer_0"]["kernel"])


@pytest.mark.parametrize("feedback", ["backprop", "random"])
def test_meta_gradient_matches_finite_differences(feedback):
  with jax.enable_x64(True):
    pool = _pool(dtype=np.float64)
    model = models.MLP(features=(6, 3), feedback=feedback)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    kw = dict(n_way=3, k_shot=2, q_query=2)
    theta = {"error": jnp.float64(0.5), "oja": jnp.float64(0.2),
             "hebb": jnp.float64(0.05)}
    # One compiled function gives the value (for the differences) and grad.
    f = jax.jit(jax.value_and_grad(
        lambda th: meta.meta_loss(th, model, keys, pool, **kw)[0]))
    _, grad = f(theta)
    eps = 1e-6
    for name in theta:
      up = dict(theta, **{name: theta[name] + eps})
      down = dict(theta, **{name: theta[name] - eps})
      fd = (f(up)[0] - f(down)[0]) / (2 * eps)
      np.testing.assert_allclose(grad[name], fd, rtol=1e-5, atol=1e-9)
      assert abs(float(fd)) > 1e-6  # the test would be vacuous otherwise


@pytest.mark.slow
def test_meta_training_lowers_the_query_loss_from_a_poor_rate():
  rng = np.random.default_rng(8)  # separable classes: centers plus noise
  pool = jnp.asarray(rng.uniform(size=(4, 1, 6)) + 0.2 * rng.normal(
      size=(4, 20, 6)), jnp.float32)
  model = models.MLP(features=(8, 2))
  kw = dict(n_way=2, k_shot=4, q_query=4)
  theta, hist = meta.meta_train(model, {"error": 0.01, "oja": 0.0}, pool,
                                jax.random.PRNGKey(9), steps=10,
                                episodes_per_step=8, meta_lr=0.01, **kw)
  assert hist.theta["error"].shape == (11,)
  assert hist.skipped == 0
  keys = jax.random.split(jax.random.PRNGKey(10), 32)
  loss = jax.jit(lambda th: meta.meta_loss(th, model, keys, pool, **kw)[0])
  before, after = loss({"error": 0.01, "oja": 0.0}), loss(theta)
  assert after < before
  assert float(theta["error"]) > 0.01


def _tiny_config():
  c = mp_config.get_config()
  c.n_way, c.q_query, c.ks, c.meta_ks = 2, 2, (2,), (2,)
  c.hidden, c.lr_grid, c.oja_grid = (8,), (0.1,), (0.01,)
  c.tune_episodes, c.test_episodes, c.meta_steps, c.meta_episodes = 2, 6, 2, 2
  c.train_digits, c.test_digits, c.rotations, c.downsample = (0, 1), (7,), (
      0, 1), 4
  return c


@pytest.mark.slow
def test_runner_writes_the_run_directory_contract(tmp_path):
  config = _tiny_config()
  prepared = runner.prepare(config)
  assert prepared.train_pool.shape[0] == 4 and prepared.test_pool.shape[0] == 2
  runner.run(config, prepared, str(tmp_path), "test")
  for name in ("config.json", "metrics.jsonl", "summary.md", "section.json",
               "tuning.json", "meta_K2.json", "test_K2.json"):
    assert (tmp_path / name).exists(), name
  verdict = json.loads((tmp_path / "section.json").read_text())
  assert verdict["verdict"] in ("reproduced", "partly reproduced",
                                "not reproduced")
  for fig in verdict["figures"]:
    assert (tmp_path / fig).exists()
  test = json.loads((tmp_path / "test_K2.json").read_text())
  assert set(test["accuracy"]) == set(runner.RULES)
  assert len(test["accuracy"]["meta"]) == 6


@pytest.mark.parametrize("field, value, message", [
    ("ks", (), "ks must list at least one value"),
    ("meta_ks", (3,), r"meta_ks=\(3,\) must be a non-empty subset of ks=\(2,\)"),
    ("terms", ("oja",), "must include 'error'"),
    ("feedback", "none", "feedback='none' is not known"),
    ("test_digits", (1,), "must not overlap"),
    ("tune_metric", "auc", "tune_metric='auc' must be"),
    ("lr_grid", (0.0,), r"lr_grid\[0\]=0.0 must be finite and > 0"),
    ("meta_lr", float("nan"), "meta_lr=nan must be finite")])
def test_prepare_rejects_bad_values(field, value, message):
  config = _tiny_config()
  config[field] = value
  with pytest.raises(ValueError, match=message):
    runner.prepare(config)


def test_error_traces_pair_each_layer_with_its_own_and_the_lower_error():
  model = models.MLP(features=(5, 4, 3))
  x = jax.random.uniform(jax.random.PRNGKey(9), (2, 4))
  params = model.init(jax.random.PRNGKey(10), x)["params"]
  _, acts = model.apply({"params": params}, x)
  onehot = jax.nn.one_hot(jnp.array([0, 2]), 3)
  traces = meta.error_traces(model, params, None, acts, onehot)
  t0, t1, t2 = (traces[f"layer_{i}"]["kernel"] for i in range(3))
  np.testing.assert_allclose(t2.post_error, t2.post - onehot, rtol=1e-6)
  np.testing.assert_array_equal(t0.pre_error, 0.0)  # No error at the input.
  np.testing.assert_array_equal(t1.pre_error, t0.post_error)
  np.testing.assert_array_equal(t2.pre_error, t1.post_error)
  # A term of the pool that reads errors: error_hebb = mean a e^T.
  update = meta.local_update(params, traces, {"error": 0.0,
                                              "error_hebb": 1.0})
  np.testing.assert_allclose(update["layer_2"]["kernel"],
                             t1.post_error.T @ t2.post_error / 2, rtol=1e-5)
  np.testing.assert_array_equal(update["layer_0"]["kernel"], 0.0)


def test_a_damaged_part_is_made_again(tmp_path):
  path = str(tmp_path / "part.json")
  assert runner._cached(path, lambda: {"a": 1}) == {"a": 1}  # pylint: disable=protected-access
  assert runner._cached(path, lambda: {"a": 2}) == {"a": 1}  # pylint: disable=protected-access
  with open(path, "w") as f:
    f.write('{"a": ')  # Truncated.
  assert runner._cached(path, lambda: {"a": 3}) == {"a": 3}  # pylint: disable=protected-access

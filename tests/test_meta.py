"""Tests of the meta-learning task (episodes, inner loop, runner), tiny."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats as scipy_stats

import ojax
from experiments import config as config_lib
from experiments import results
from experiments import rundir
from experiments.configs import meta_plasticity as mp_config
from experiments.tasks import episodes
from experiments.tasks import meta
from experiments.tasks import meta_plasticity as runner
from experiments.tasks import meta_report
from ojax import models

# jax.enable_x64 is public from jax 0.8; make test-min runs the oldest jax.
try:
  from jax import enable_x64 as _enable_x64
except ImportError:
  from jax.experimental import enable_x64 as _enable_x64


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


@pytest.mark.parametrize("feedback", [
    "backprop", pytest.param("random", marks=pytest.mark.slow)])  # Time.
def test_meta_gradient_matches_finite_differences(feedback):
  with _enable_x64(True):
    pool = _pool(dtype=np.float64)
    # Three layers: the input layer skips the terms of a zero pre-error.
    model = models.MLP(features=(6, 5, 3), feedback=feedback)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    kw = dict(n_way=3, k_shot=2, q_query=2)
    theta = {"error": jnp.float64(0.5), "oja": jnp.float64(0.2),
             "hebb": jnp.float64(0.05), "error_hebb": jnp.float64(0.3),
             "error_oja": jnp.float64(0.1)}
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
  assert hist.skipped == 0 and hist.stopped == "max_steps"
  keys = jax.random.split(jax.random.PRNGKey(10), 32)
  loss = jax.jit(lambda th: meta.meta_loss(th, model, keys, pool, **kw)[0])
  before = loss({"error": 0.01, "oja": 0.0})
  after = loss({t: jnp.float32(v) for t, v in theta.items()})
  assert after < before
  assert theta["error"] > 0.01


def _tiny_config():
  """The config at its test size (QUICK_ARGS, parsed as --quick does)."""
  return results.quick_config("meta_plasticity")


@pytest.mark.slow
def test_runner_writes_the_run_directory_contract(tmp_path):
  config = _tiny_config()
  prepared = runner.prepare(config)
  assert prepared.train_pool.shape[0] == 4 and prepared.test_pool.shape[0] == 2
  runner.run(config, prepared, str(tmp_path), "test")
  # 2 meta-seeds of random feedback (scaled, plain Adam, no Oja terms), 1 of
  # backprop feedback (scaled, plain Adam).
  learned = [f"meta_{tag}_K2_s{s}.json" for tag, seeds in (
      ("random", 2), ("random_adam", 2), ("random_nooja", 2), ("backprop", 1),
      ("backprop_adam", 1)) for s in range(seeds)]
  parts = ["config.json", "metrics.jsonl", "summary.md", "section.json",
           "test_K2.json"] + [f"tuning_{fb}_K2.json" for fb in
                              ("random", "backprop")] + learned
  for name in parts:
    assert (tmp_path / name).exists(), name
  section = json.loads((tmp_path / "section.json").read_text())
  assert section["verdict"] == "no verdict"  # 2 meta-seeds < 10
  assert len(section["figures"]) == 3
  for fig in section["figures"]:
    assert (tmp_path / fig).exists()
  test = json.loads((tmp_path / "test_K2.json").read_text())
  assert set(test["accuracy"]) == {
      "bp", "bp_oja", "bp_acc", "fa", "meta_fa_s0", "meta_fa_s1",
      "meta_fa_adam_s0", "meta_fa_adam_s1", "meta_fa_nooja_s0",
      "meta_fa_nooja_s1", "meta_bp_s0", "meta_bp_adam_s0"}
  # A tuned rule on every meta-seed's 6 episodes, a learned one on its own.
  assert len(test["accuracy"]["bp"]) == 12 and test["episodes"] == 6
  assert all(len(v) == 6 for r, v in test["accuracy"].items()
             if r.startswith("meta_"))
  # Seed 1's segment of fa is fa scored on seed 1's episodes alone.
  fa = meta.evaluate(runner._model(config, "random"),  # pylint: disable=protected-access
                     {"error": jnp.array([test["rules"]["fa"]["error"]]),
                      "oja": jnp.zeros(1)},
                     runner._test_keys(config, 2, 1),  # pylint: disable=protected-access
                     jnp.asarray(prepared.test_pool), n_way=2, k_shot=2,
                     q_query=2)
  np.testing.assert_allclose(test["accuracy"]["fa"][6:],
                             np.asarray(fa.query_accuracy)[0])
  nooja = json.loads((tmp_path / "meta_random_nooja_K2_s1.json").read_text())
  assert set(nooja["theta"]) == {"error", "decay", "hebb", "post_pre_error",
                                 "error_hebb"}
  plain = json.loads((tmp_path / "meta_random_adam_K2_s1.json").read_text())
  assert set(plain["step_scales"].values()) == {1.0}
  assert len(plain["history"]["meta_loss"]) == config.meta_steps
  # Run again: every part is reused, nothing is computed.
  before = {p: (tmp_path / p).stat().st_mtime_ns for p in parts[4:]}
  runner.run(config, prepared, str(tmp_path), "test")
  assert before == {p: (tmp_path / p).stat().st_mtime_ns for p in parts[4:]}
  # A larger meta_steps: meta-training goes on from its checkpoints to the
  # rules a run given that budget from the start learns, and is tested anew.
  config.meta_steps = 6
  runner.run(config, prepared, str(tmp_path), "test")
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  runner.run(config, prepared, str(fresh), "test")
  for part in learned:
    went_on = json.loads((tmp_path / part).read_text())
    assert len(went_on["history"]["meta_loss"]) == 6
    assert went_on["theta"] == json.loads((fresh / part).read_text())["theta"]
  assert (json.loads((tmp_path / "test_K2.json").read_text())["accuracy"] ==
          json.loads((fresh / "test_K2.json").read_text())["accuracy"])


def test_a_resume_may_raise_meta_steps_and_nothing_else(tmp_path):
  config = _tiny_config()
  job = config_lib.Job("run", None, "", config)
  fp_path = tmp_path / "checkpoints" / "run" / "fingerprint.json"
  fp_path.parent.mkdir(parents=True)
  fp_path.write_text(json.dumps(config_lib.fingerprint(config)))
  for field, value, allowed in (("meta_steps", 8, True),
                                ("meta_steps", 2, False),
                                ("meta_lr", 0.01, False)):
    changed = _tiny_config()
    changed[field] = value
    check = lambda c=changed: rundir.check_resume(  # pylint: disable=unnecessary-lambda-assignment
        str(tmp_path), [job._replace(config=c)], restart=False)
    if allowed:
      check()
    else:
      with pytest.raises(config_lib.ConfigError, match=f"{field}: "):
        check()


@pytest.mark.slow
def test_worker_processes_give_the_parts_of_one_process(tmp_path):
  config = _tiny_config()
  config.meta_seeds, config.meta_steps = 1, 2
  prepared = runner.prepare(config)
  for name, processes in (("one", 1), ("two", 2)):
    config.processes = processes
    (tmp_path / name).mkdir()
    runner.run(config, prepared, str(tmp_path / name), "test")
  for part in ("meta_random_K2_s0.json", "meta_backprop_K2_s0.json"):
    one = json.loads((tmp_path / "one" / part).read_text())["theta"]
    two = json.loads((tmp_path / "two" / part).read_text())["theta"]
    for t in one:
      np.testing.assert_allclose(two[t], one[t], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("field, value, message", [
    ("ks", (), "ks must list at least one value"),
    ("meta_ks", (3,),
     r"meta_ks=\(3,\) must be a non-empty subset of ks=\(2,\)"),
    ("terms", ("oja",), "must include 'error'"),
    ("terms", ("error", "error"), "repeat a term"),
    ("feedbacks", ("none",), "feedbacks=\\('none',\\) must list distinct"),
    ("feedbacks", (), "must list distinct"),
    ("test_digits", (1,), "must not overlap"),
    ("tune_metric", "auc", "tune_metric='auc' must be"),
    ("lr_grid", (0.0,), r"lr_grid\[0\]=0.0 must be finite and > 0"),
    ("meta_lr", float("nan"), "meta_lr=nan must be finite"),
    ("meta_seeds", 0, "meta_seeds=0 must be finite and > 0"),
    ("plateau_tol", 1.0, "plateau_tol=1.0 must be below 1"),
    ("l1", -1.0, "l1=-1.0 must be finite and >= 0"),
    ("meta_seeds_reported", 0, "meta_seeds_reported=0 must be finite"),
    ("variants", (), r"variants=\(\) must list distinct values from "
     r"\('scaled', 'plain'\)"),
    ("variants", ("plain", "plain"), "must list distinct values"),
    ("variants", ("sgd",), r"variants=\('sgd',\) must list"),
    ("ablation", ("ojaa",), r"ablation=\('ojaa',\) names 'ojaa'; it must "
     "list terms of the pool"),
    ("ablation", ("error",), "other than 'error'"),
    ("ablation", ("oja", "oja"), "repeats a term"),
    ("ablation_feedbacks", ("backprop", "none"),
     r"ablation_feedbacks=\('backprop', 'none'\) must list feedbacks of "),
    ("ablation_feedbacks", (), "must list feedbacks of")])
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


# --- The pool, the meta-optimizer, plateau and checkpoints -----------------


def test_pool_is_the_papers_terms_and_the_config_uses_it():
  # The 9 terms of ojax.TERMS with a formula in Shervani-Tabar & Rosenbaum.
  pool = ("error", "decay", "hebb", "oja", "post_pre_error", "error_hebb",
          "error_oja", "error_oja_pre", "post_pre_error_oja")
  assert meta.POOL_TERMS == pool
  assert tuple(mp_config.get_config().terms) == pool


def test_terms_of_the_pre_synaptic_error_vanish_at_the_input():
  # From the formulas: a y^T, a e^T, a (e - K^T a)^T, a (y - K^T a)^T are 0
  # when a = 0; (a - K e) e^T is not.
  assert set(meta.zero_without_pre_error(meta.POOL_TERMS)) == {
      "post_pre_error", "error_hebb", "error_oja_pre", "post_pre_error_oja"}


def test_skipping_vanishing_terms_at_the_input_changes_nothing():
  model = models.MLP(features=(5, 4, 3), feedback="random")
  x = jax.random.uniform(jax.random.PRNGKey(11), (1, 6))
  variables = model.init(jax.random.PRNGKey(12), x)
  params = variables["params"]
  _, acts = model.clone(feedback="backprop").apply({"params": params}, x)
  traces = meta.error_traces(model, params, variables["feedback"], acts,
                             jax.nn.one_hot(jnp.array([1]), 3))
  theta = {t: 0.1 * (i + 1) for i, t in enumerate(meta.POOL_TERMS)}
  fast = meta.local_update(params, traces, theta, zero_input_error=True)
  rule = ojax.plasticity(theta)  # One rule on every layer.
  full, _ = rule.update(jax.tree.map(jnp.zeros_like, params),
                        rule.init(params), params, activations=traces)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7), fast, full)
  # error_oja is applied at the input layer: -(K e) e^T there.
  only = meta.local_update(params, traces, {"error": 0.0, "error_oja": 1.0},
                           zero_input_error=True)
  k, e = params["layer_0"]["kernel"], traces["layer_0"]["kernel"].post_error
  np.testing.assert_allclose(only["layer_0"]["kernel"],
                             -jnp.outer(k @ e[0], e[0]), rtol=1e-5,
                             atol=1e-8)


@pytest.mark.parametrize("losses, window, tol, expected", [
    ([1.0, 0.9, 0.8], 2, 0.01, False),  # improving
    ([1.0, 0.9, 0.9, 0.9], 2, 0.01, True),  # flat for 2 checks
    ([1.0, 0.9, 0.895, 0.899], 2, 0.01, True),  # 0.6% < 1%
    ([1.0, 0.9, 0.895, 0.889], 2, 0.01, False),  # 1.2% >= 1%
    ([1.0, 0.9], 2, 0.01, False),  # too few checks
    ([1.0, float("nan"), float("nan")], 2, 0.01, True),  # diverged
    ([float("nan"), float("nan"), 1.0], 2, 0.01, False)])
def test_plateau_rule(losses, window, tol, expected):
  assert meta.plateaued(losses, window, tol) is expected


def test_step_scales_are_inverse_term_size_ratios_capped_at_one():
  scales = meta.step_scales({"error": 2.0, "hebb": 40.0, "oja": 8.0,
                             "error_hebb": 0.5, "decay": 0.0})
  assert scales == {"error": 1.0, "hebb": 0.05, "oja": 0.25,
                    "error_hebb": 1.0, "decay": 1.0}


def test_term_norms_are_rms_sizes_of_each_term_per_sample():
  pool = _pool(classes=3, per_class=6, dim=4)
  model = models.MLP(features=(5, 2))
  key = jax.random.PRNGKey(13)
  norms = meta.term_norms(model, ("error", "decay", "hebb"), key, pool,
                          n_way=2, k_shot=3, q_query=1, episodes=2)
  # By hand: ||x e^T|| = |x| |e|, ||K||, ||x y^T|| = |x| |y| per layer.
  sq = {"error": [], "decay": [], "hebb": []}
  n = lambda v: jnp.sum(v ** 2, axis=-1)  # pylint: disable=unnecessary-lambda-assignment
  for k in jax.random.split(key, 2):
    data_key, init_key = jax.random.split(k)
    ep = episodes.sample_episode(data_key, pool, 2, 3, 1)
    params = model.init(init_key, ep.train_x[:1])["params"]
    # Each row of the batch is one sample's forward pass and errors.
    _, acts = model.apply({"params": params}, ep.train_x)
    tr = meta.error_traces(model, params, None, acts,
                           jax.nn.one_hot(ep.train_y, 2))
    layers = [tr[f"layer_{i}"]["kernel"] for i in range(2)]
    sq["error"] += list(sum(n(t.pre) * n(t.post_error) for t in layers))
    sq["hebb"] += list(sum(n(t.pre) * n(t.post) for t in layers))
    sq["decay"] += [sum(float(jnp.sum(params[f"layer_{i}"]["kernel"] ** 2))
                        for i in range(2))] * len(ep.train_y)
  for t, v in sq.items():
    np.testing.assert_allclose(norms[t], np.sqrt(np.mean(v)), rtol=1e-4)


def _tiny_meta(**kw):
  pool = _pool(classes=4, per_class=10, dim=5)
  model = models.MLP(features=(4, 2))
  args = dict(steps=1, episodes_per_step=2, meta_lr=0.01, n_way=2, k_shot=2,
              q_query=2)
  args.update(kw)
  return meta.meta_train(model, args.pop("theta0", {
      "error": 0.1, "oja": 0.05, "hebb": -0.02}), pool,
                         jax.random.PRNGKey(14), **args)


def test_adam_first_step_is_the_learning_rate_times_the_step_scale():
  # Adam's first (bias-corrected) step is lr * g / |g| = lr * sign(g).
  scales = {"error": 1.0, "oja": 0.1, "hebb": 0.0}
  _, hist = _tiny_meta(scales=scales)
  for t, scale in scales.items():
    moved = abs(hist.theta[t][1] - hist.theta[t][0])
    np.testing.assert_allclose(moved, 0.01 * scale, rtol=1e-4, atol=1e-9)


def test_l1_pulls_every_coefficient_towards_zero():
  # With a huge L1 weight the penalty's sign decides Adam's first step.
  _, hist = _tiny_meta(l1=1e4)
  for t, start in (("error", 0.1), ("oja", 0.05), ("hebb", -0.02)):
    np.testing.assert_allclose(hist.theta[t][1],
                               start - 0.01 * np.sign(start), rtol=1e-4)


def test_l1_does_not_push_a_coefficient_at_zero():
  # |v| has gradient 0 at v = 0 (as torch's abs) and sign(v) elsewhere: the
  # penalty adds l1 * sign(v) to the meta-gradient of every coefficient.
  pool = _pool(classes=4, per_class=10, dim=5)
  _, grad, _ = meta._meta_step(models.MLP(features=(4, 2)), 2, 2, 2, 2)
  theta = {"error": jnp.float32(0.1), "oja": jnp.float32(0.0),
           "hebb": jnp.float32(-0.02)}
  key = jax.random.PRNGKey(14)
  free, penalized = grad(theta, key, pool, 0.0)[0], grad(theta, key, pool,
                                                         0.5)[0]
  for t, sign in (("error", 1.0), ("oja", 0.0), ("hebb", -1.0)):
    np.testing.assert_allclose(penalized[t], free[t] + 0.5 * sign,
                               rtol=1e-5, atol=1e-6)


def test_meta_training_stops_on_a_plateau_and_keeps_the_best_rule():
  val_keys = jax.random.split(jax.random.PRNGKey(15), 3)
  # lr 1e-9: theta cannot change the validation loss by 1%.
  theta, hist = _tiny_meta(steps=50, meta_lr=1e-9, val_keys=val_keys,
                           val_every=2, plateau_window=3, plateau_tol=0.01)
  assert hist.stopped == "plateau"
  assert len(hist.meta_loss) == 6  # Validations at 0, 2, 4, 6: 3 after 0.
  assert hist.val_step.tolist() == [0, 2, 4, 6]
  best = int(np.argmin(hist.val_loss))
  assert hist.best_step == hist.val_step[best]
  for t, v in theta.items():
    assert v == hist.theta[t][hist.best_step]


def test_killed_meta_training_resumes_to_the_same_rule(tmp_path):
  val_keys = jax.random.split(jax.random.PRNGKey(16), 2)
  kw = dict(steps=9, val_keys=val_keys, val_every=3, plateau_window=10,
            checkpoint_every=2, scales={"error": 1.0, "oja": 0.5,
                                        "hebb": 0.1}, l1=0.01)
  whole, whole_hist = _tiny_meta(**kw)
  path = str(tmp_path / "ckpt.json")

  def kill(i, theta, loss):
    del theta, loss
    if i == 5:  # After the checkpoint of step 4.
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _tiny_meta(checkpoint_path=path, on_step=kill, **kw)
  with open(path) as f:
    saved = json.load(f)
  assert saved["state"]["step"] == 4
  steps = []
  resumed, hist = _tiny_meta(checkpoint_path=path,
                             on_step=lambda i, *_: steps.append(i), **kw)
  assert steps == [5, 6, 7, 8, 9]  # Only the steps not checkpointed.
  assert resumed == whole
  for t in whole:
    np.testing.assert_array_equal(hist.theta[t], whole_hist.theta[t])
  np.testing.assert_array_equal(hist.meta_loss, whole_hist.meta_loss)
  np.testing.assert_array_equal(hist.val_loss, whole_hist.val_loss)
  # A finished checkpoint is reused as it is.
  again, _ = _tiny_meta(checkpoint_path=path,
                        on_step=lambda *_: pytest.fail("recomputed"), **kw)
  assert again == whole
  # One made with other arguments is not.
  other, _ = _tiny_meta(checkpoint_path=path, **dict(kw, l1=0.0))
  assert other != whole


def test_a_larger_step_budget_goes_on_from_a_finished_run(tmp_path):
  val_keys = jax.random.split(jax.random.PRNGKey(17), 2)
  kw = dict(val_keys=val_keys, val_every=3, plateau_window=10,
            scales={"error": 1.0, "oja": 0.5, "hebb": 0.1}, l1=0.01)
  whole, whole_hist = _tiny_meta(steps=9, **kw)
  path = str(tmp_path / "ckpt.json")
  _, short = _tiny_meta(steps=6, checkpoint_path=path, **kw)
  assert short.stopped == "max_steps"
  steps = []
  longer, hist = _tiny_meta(steps=9, checkpoint_path=path,
                            on_step=lambda i, *_: steps.append(i), **kw)
  assert steps == [7, 8, 9]  # Only the new steps.
  assert longer == whole and hist.stopped == whole_hist.stopped
  for t in whole:
    np.testing.assert_array_equal(hist.theta[t], whole_hist.theta[t])
  np.testing.assert_array_equal(hist.val_step, whole_hist.val_step)
  np.testing.assert_array_equal(hist.val_loss, whole_hist.val_loss)
  # A budget ending off the validation grid validated where the longer run
  # does not: it starts over (so does anything but a larger budget).
  path2 = str(tmp_path / "ckpt2.json")
  _tiny_meta(steps=5, checkpoint_path=path2, **kw)
  steps.clear()
  _tiny_meta(steps=9, checkpoint_path=path2,
             on_step=lambda i, *_: steps.append(i), **kw)
  assert steps == list(range(1, 10))


# --- The report: meta-seeds as the unit, arms, kept terms ------------------


def test_the_default_run_can_reach_a_verdict_with_five_seeds_or_more():
  config = mp_config.get_config()
  arms = meta_report.meta_arms(config)
  assert [(a.rule, a.variant, a.ablated) for a in arms] == [
      ("meta_fa", "scaled", False), ("meta_fa_adam", "plain", False),
      ("meta_fa_nooja", "scaled", True), ("meta_bp", "scaled", False),
      ("meta_bp_adam", "plain", False)]
  assert min(a.seeds for a in arms) >= 5
  # The ablation drops every term with Oja's normalizing part: those whose
  # formula has an activity's square times W (y y^T W, e e^T W, W a a^T).
  assert arms[2].terms == ("error", "decay", "hebb", "post_pre_error",
                           "error_hebb")
  # The verdict's family (each scarce K x 4 tuned rules) can pass Holm at
  # the main rule's meta-seeds: the smallest p is 2 / 2^n.
  family = len(config.meta_ks) * 4
  assert family * 2 / 2 ** arms[0].seeds < 0.02
  assert all(k <= config.scarce_max_k for k in config.meta_ks)


def _report_config():
  config = _tiny_config()
  config.feedbacks, config.meta_seeds = ("random",), 3
  return config


def _test_part():
  # 3 meta-seeds x 2 held-out episodes: a tuned rule has 6 scores (seed-
  # major), a learned rule 2 per seed.
  bp = [0.5, 0.7, 0.2, 0.4, 0.6, 0.6]  # per seed: 0.6, 0.3, 0.6
  acc = {"bp": bp, "bp_acc": bp, "bp_oja": bp, "fa": [0.5] * 6,
         "meta_fa_s0": [0.7, 0.9], "meta_fa_s1": [0.3, 0.3],
         "meta_fa_s2": [1.0, 0.8],  # per seed: 0.8, 0.3, 0.9
         "meta_fa_adam_s0": [0.5, 0.5], "meta_fa_adam_s1": [0.5, 0.5],
         "meta_fa_adam_s2": [0.5, 0.5],
         "meta_fa_nooja_s0": [0.6, 0.6], "meta_fa_nooja_s1": [0.4, 0.2],
         "meta_fa_nooja_s2": [0.5, 0.7]}  # per seed: 0.6, 0.3, 0.6
  return {"k": 2, "episodes": 2, "sets": 3, "accuracy": acc}


def test_comparisons_pair_meta_seed_means_on_each_seeds_episodes():
  config = _report_config()
  primary, family = meta_report._comparisons(config, [_test_part()])  # pylint: disable=protected-access
  assert [(c.arm, c.reference) for c in primary] == [("meta_fa", "bp")]
  d = np.array([0.2, 0.0, 0.3])  # seed by seed, not episode by episode
  half = scipy_stats.t.ppf(0.99, 2) * d.std(ddof=1) / np.sqrt(3)
  got = primary[0].diff
  assert got.n == 3
  np.testing.assert_allclose([got.mean, got.low, got.high],
                             [d.mean(), d.mean() - half, d.mean() + half])
  assert got.p == 0.5  # 2 of the 2^3 sign flips are as extreme (0 ties)
  assert [c.reference for c in family] == ["bp", "bp_acc", "bp_oja", "fa"]
  families = dict(meta_report.families(config, [_test_part()]))
  rivals = families["meta_fa vs its variants and ablation"]
  assert [c.reference for c in rivals] == ["meta_fa_adam", "meta_fa_nooja"]
  # With Oja minus without, paired over the seeds: 0.2, 0.0, 0.3 again.
  np.testing.assert_allclose(rivals[1].diff.mean, 0.5 / 3)
  assert rivals[0].p_adj == pytest.approx(min(1, 2 * rivals[0].diff.p))


def test_a_tuned_rule_scored_on_one_shared_set_pairs_with_every_seed():
  part = _test_part()
  part["accuracy"]["bp"] = [0.4, 0.6]  # A part from before: one set.
  del part["episodes"]
  np.testing.assert_allclose(
      meta_report.seed_values(part, "bp", 3), [0.5, 0.5, 0.5])
  assert meta_report.seed_values(part, "meta_fa", 4) is None  # No seed 3.


def _learned(config, best_steps):
  out = {}
  for arm in meta_report.meta_arms(config):
    for s in range(arm.seeds):
      theta = {t: 0.0 for t in arm.terms}
      theta["error"] = 0.05
      if s == 0 and "oja" in arm.terms:
        theta["oja"] = 0.01  # Above 5 steps of 1e-3 x 0.5.
      theta["hebb"] = 0.002 if s == 1 else 0.0  # Under 5 x 1e-3 x 1.
      out[(arm.rule, 2, s)] = {
          "theta": theta, "best_step": best_steps[s],
          "step_scales": {t: 0.5 if t == "oja" else 1.0 for t in arm.terms}}
  return out


def test_one_kept_terms_table_counts_meta_seeds_and_start_rules():
  config = _report_config()
  rows = meta_report._kept_rows(config, _learned(config, [0, 7, 0]))  # pylint: disable=protected-access
  terms = list(config.terms)
  assert [r[2].split()[0] for r in rows] == [
      "`meta_fa`", "`meta_fa_adam`", "`meta_fa_nooja`"]
  main = dict(zip(terms, rows[0][3:-1]))
  assert main["error"] == "3/3" and main["oja"] == "1/3"
  assert main["hebb"] == "0/3" and rows[0][-1] == "2/3"
  nooja = dict(zip(terms, rows[2][3:-1]))
  assert nooja["oja"] == "-" and nooja["error_oja"] == "-"


def test_a_seed_that_kept_its_start_rule_is_shown_and_counted():
  config = _report_config()
  fams = meta_report.families(config, [_test_part()])
  rows = meta_report._findings(config, [_test_part()],  # pylint: disable=protected-access
                               _learned(config, [0, 7, 9]), fams)
  main = dict(rows)["K=2, `meta_fa`"]
  # (0.8 + 0.3 + 0.9) / 3 with seed 0, which kept its start rule.
  assert "mean held-out accuracy 0.667 over 3 meta-seeds" in main
  assert "1/3 kept their start rule" in main
  assert "2/3 seeds above `bp`" in main

"""Tests of ojax.oja: the math, convergence to principal subspaces, optax use."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax


def _numpy_oja(kernel, pre, post):
  """Independent reference: a loop over samples, mean of outer(x - K y, y)."""
  kernel, pre, post = (np.asarray(a, np.float64) for a in (kernel, pre, post))
  total = np.zeros_like(kernel)
  for x, y in zip(pre, post):
    total += np.outer(x - kernel @ y, y)
  return total / len(pre)


def _random_problem(seed, batch, fan_in=6, fan_out=4):
  rng = np.random.default_rng(seed)
  kernel = rng.normal(size=(fan_in, fan_out)).astype(np.float32)
  pre = rng.normal(size=(batch, fan_in)).astype(np.float32)
  post = rng.normal(size=(batch, fan_out)).astype(np.float32)
  return kernel, pre, post


@pytest.mark.parametrize("batch", [1, 7])
def test_oja_matches_independent_numpy_loop(batch):
  kernel, pre, post = _random_problem(batch, batch)
  params = {"dense": {"kernel": jnp.asarray(kernel),
                      "bias": jnp.zeros(4)}}
  acts = {"dense": {"kernel": ojax.Trace(pre, post), "bias": None}}
  grads = jax.tree.map(jnp.ones_like, params)
  tx = ojax.oja(0.1)
  updates, _ = tx.update(grads, tx.init(params), params, activations=acts)
  expected = 1.0 + 0.1 * _numpy_oja(kernel, pre, post)
  np.testing.assert_allclose(updates["dense"]["kernel"], expected, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(updates["dense"]["bias"], 1.0)


def test_oja_term_is_x_yT_minus_K_y_yT():
  kernel, pre, post = _random_problem(0, 5)
  expected = (pre.T @ post - kernel @ (post.T @ post)) / 5
  np.testing.assert_allclose(ojax.oja_term(jnp.asarray(kernel),
                                           ojax.Trace(pre, post)),
                             expected, rtol=1e-4, atol=1e-4)


def _train_linear_oja(k, steps=6000, seed=0):
  """Linear neurons y = K^T x trained by the Oja rule alone on Gaussian data.

  The rate anneals from 5e-3 to 1e-4 so the final weights sit close to the
  fixed point rather than fluctuating around it.
  """
  dim = 8
  rng = np.random.default_rng(seed)
  basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  stds = np.array([3.0, 2.5, 2.0, 1.0, 0.7, 0.5, 0.3, 0.2])
  x_TxD = (rng.normal(size=(steps, dim)) * stds) @ basis.T
  tx = ojax.oja(optax.linear_schedule(5e-3, 1e-4, steps))
  params = {"w": {"kernel": jnp.asarray(
      rng.normal(size=(dim, k)) * 0.1, jnp.float32)}}

  def step(carry, x_D):
    params, state = carry
    x_1xD = x_D[None]
    y_1xK = x_1xD @ params["w"]["kernel"]
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, state = tx.update(zeros, state, params,
                               activations={"w": {"kernel": ojax.Trace(
                                   x_1xD, y_1xK)}})
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)),
                                jnp.asarray(x_TxD, jnp.float32))
  return np.asarray(params["w"]["kernel"]), basis


def test_oja_converges_to_top_pc_with_unit_norm():
  kernel, basis = _train_linear_oja(k=1)
  w = kernel[:, 0]
  assert abs(np.linalg.norm(w) - 1.0) < 0.05
  cosine = abs(w @ basis[:, 0]) / np.linalg.norm(w)
  assert cosine > 0.99


def test_oja_subspace_rule_finds_top_k_subspace_with_orthonormal_columns():
  kernel, basis = _train_linear_oja(k=3, steps=12000)
  gram = kernel.T @ kernel
  assert np.linalg.norm(gram - np.eye(3)) < 0.1
  top = basis[:, :3]
  captured = np.linalg.norm(top.T @ kernel) ** 2 / 3  # 1 = inside the span.
  assert captured > 0.98


def _mlp_problem():
  kernel, pre, post = _random_problem(3, 4)
  params = {"a": {"kernel": jnp.asarray(kernel)},
            "b": {"kernel": jnp.asarray(kernel[:4, :])}}
  acts = {"a": {"kernel": ojax.Trace(pre, post)},
          "b": {"kernel": ojax.Trace(post, post)}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  return params, acts, grads


def test_sgd_oja_is_sgd_step_plus_oja_step_from_one_forward_pass():
  params, acts, grads = _mlp_problem()
  tx = ojax.sgd_oja(0.1, 0.01)
  updates, _ = tx.update(grads, tx.init(params), params, activations=acts)
  for name in ("a", "b"):
    trace = acts[name]["kernel"]
    expected = -0.1 * 0.5 + 0.01 * _numpy_oja(params[name]["kernel"],
                                              trace.pre, trace.post)
    np.testing.assert_allclose(updates[name]["kernel"], expected, rtol=1e-5,
                               atol=1e-6)


def test_inject_hyperparams_matches_fixed_rate_and_can_change_it():
  params, acts, grads = _mlp_problem()
  fixed = ojax.oja(0.02)
  injected = optax.inject_hyperparams(ojax.oja)(learning_rate=0.02)
  u1, _ = fixed.update(grads, fixed.init(params), params, activations=acts)
  state = injected.init(params)
  u2, _ = injected.update(grads, state, params, activations=acts)
  jax.tree.map(np.testing.assert_allclose, u1, u2)
  state.hyperparams["learning_rate"] = jnp.asarray(0.0)
  u3, _ = injected.update(grads, state, params, activations=acts)
  jax.tree.map(np.testing.assert_allclose, u3, grads)


def test_masked_oja_leaves_masked_kernels_untouched():
  params, acts, grads = _mlp_problem()
  tx = optax.masked(ojax.oja(0.1), {"a": {"kernel": True},
                                    "b": {"kernel": False}})
  updates, _ = tx.update(grads, tx.init(params), params, activations=acts)
  np.testing.assert_array_equal(updates["b"]["kernel"], grads["b"]["kernel"])
  assert not np.allclose(updates["a"]["kernel"], grads["a"]["kernel"])


def test_jit_and_vmap_over_seeds_agree_with_eager_updates():
  params, acts, grads = _mlp_problem()
  tx = ojax.oja(0.05)
  state = tx.init(params)
  eager, _ = tx.update(grads, state, params, activations=acts)
  jitted, _ = jax.jit(lambda g, s, p, a: tx.update(g, s, p, activations=a))(
      grads, state, params, acts)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               eager, jitted)
  stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), params)
  per_seed, _ = jax.vmap(lambda p: tx.update(grads, state, p,
                                             activations=acts))(stacked)
  doubled = jax.tree.map(lambda x: 2 * x, params)
  second, _ = tx.update(grads, state, doubled, activations=acts)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[1], b, rtol=1e-5),
               per_seed, second)


def test_schedule_is_evaluated_at_the_step_count():
  params, acts, grads = _mlp_problem()
  tx = ojax.oja(lambda count: 0.1 * count)
  state = tx.init(params)
  first, state = tx.update(grads, state, params, activations=acts)
  jax.tree.map(np.testing.assert_allclose, first, grads)  # Rate 0 at step 0.
  second, state = tx.update(grads, state, params, activations=acts)
  assert int(state.count) == 2
  assert not np.allclose(second["a"]["kernel"], grads["a"]["kernel"])


def test_extra_args_are_tolerated_and_traces_may_omit_parameters():
  params, acts, grads = _mlp_problem()
  del acts["b"]
  tx = ojax.oja(0.1)
  updates, _ = tx.update(grads, tx.init(params), params, activations=acts,
                         unrelated_extra_arg=3)
  np.testing.assert_array_equal(updates["b"]["kernel"], grads["b"]["kernel"])


@pytest.mark.parametrize("mutate, message", [
    (lambda p, a: (None, a), ojax.rules.NO_PARAMS_MSG[:40]),
    (lambda p, a: (p, None), "needs activations="),
    (lambda p, a: (p, {"c": {"kernel": a["a"]["kernel"]}}),
     "no parameter matches the Trace at ['c']['kernel']"),
    (lambda p, a: (p, {"a": {"kernel": ojax.Trace(np.ones((4, 5)),
                                                  np.ones((4, 4)))}}),
     "Trace.pre at ['a']['kernel'] has shape (4, 5)"),
    (lambda p, a: (p, {"a": {"kernel": ojax.Trace(np.ones((4, 6)),
                                                  np.ones((4, 3)))}}),
     "Trace.post at ['a']['kernel'] has shape (4, 3)"),
    (lambda p, a: (p, {"a": {"kernel": ojax.Trace(np.ones((4, 6)),
                                                  np.ones((3, 4)))}}),
     "batch shape (4,) for pre but (3,) for post"),
    (lambda p, a: (p, {"a": {"kernel": np.ones(3)}}),
     "each leaf must be an ojax.Trace"),
    (lambda p, a: (p, {"a": {"kernel": None}}), "activations holds no"),
    (lambda p, a: ({**p, "a": {"kernel": jnp.ones(6)}}, a),
     "applies to 2-D kernels"),
])
def test_bad_update_inputs_raise_clear_errors(mutate, message):
  params, acts, grads = _mlp_problem()
  params, acts = mutate(params, acts)
  tx = ojax.oja(0.1)
  if params is not None and "a" in params and params["a"]["kernel"].ndim == 1:
    grads = {**grads, "a": {"kernel": jnp.ones(6)}}
  with pytest.raises(ValueError) as err:
    tx.update(grads, tx.init(params), params, activations=acts)
  assert message in str(err.value)


@pytest.mark.parametrize("rate", [-0.1, float("nan"), float("-inf")])
def test_negative_or_nan_learning_rate_is_rejected(rate):
  with pytest.raises(ValueError, match="must be a finite float >= 0"):
    ojax.oja(rate)


def _reference_oja_update(update, kernel_IxO, pre, post, eta):
  """ojax.oja as it was before the rule family (ojax 0.1), op for op."""
  fan_in, fan_out = kernel_IxO.shape
  x_BxI = jnp.reshape(pre, (-1, fan_in))
  y_BxO = jnp.reshape(post, (-1, fan_out))
  residual_BxI = x_BxI - (kernel_IxO @ y_BxO.T).T
  term = (residual_BxI.T @ y_BxO) / x_BxI.shape[0]
  return update + (eta * term).astype(update.dtype)


@pytest.mark.parametrize("rate", [0.01, "schedule"])
def test_oja_and_sgd_oja_are_bit_for_bit_what_ojax_0_1_computed(rate):
  params, acts, grads = _mlp_problem()
  schedule = rate == "schedule"
  eta_of = (lambda count: 0.01 * (count + 1)) if schedule else (lambda _: 0.01)
  tx = ojax.sgd_oja(0.1, (lambda c: 0.01 * (c + 1)) if schedule else 0.01)
  chained = optax.chain(optax.sgd(0.1),
                        ojax.oja((lambda c: 0.01 * (c + 1)) if schedule
                                 else 0.01))

  @jax.jit
  def both(params, grads, acts):
    s1, s2 = tx.init(params), chained.init(params)
    u1, s1 = tx.update(grads, s1, params, activations=acts)
    u2, s2 = chained.update(grads, s2, params, activations=acts)
    ref = {}
    for name in params:
      trace = acts[name]["kernel"]
      sgd = jax.tree.map(lambda g: -0.1 * g, grads[name]["kernel"])
      eta = eta_of(jnp.zeros([], jnp.int32))
      ref[name] = {"kernel": _reference_oja_update(
          sgd, params[name]["kernel"], trace.pre, trace.post, eta)}
    return u1, u2, ref, s1, s2

  u1, u2, ref, s1, s2 = both(params, grads, acts)
  jax.tree.map(np.testing.assert_array_equal, u1, ref)
  jax.tree.map(np.testing.assert_array_equal, u2, ref)
  # sgd_oja keeps its rates in its state (optax.inject_hyperparams'), around
  # optax.chain's: (sgd state, OjaState).
  assert jax.tree.structure(s1.inner_state) == jax.tree.structure(s2)
  assert isinstance(s1.inner_state[1], ojax.OjaState)
  assert set(s1.hyperparams) == {"learning_rate", "oja_learning_rate"}


# --- sgd_oja(unit_norm=True): each unit's incoming weights to norm 1 ------


def _unit_columns(kernel):
  """Independent reference: each column over its norm (a zero one kept)."""
  out = np.array(kernel, np.float64)
  for j in range(out.shape[1]):
    norm = np.sqrt(np.sum(out[:, j] ** 2))
    if norm > 0:
      out[:, j] /= norm
  return out


def _sgd_oja_step(params, acts, name, oja_rate):
  """K + the SGD (+ Oja) step of _mlp_problem's grads (0.5), in float64."""
  kernel = np.asarray(params[name]["kernel"], np.float64)
  trace = acts[name]["kernel"]
  return kernel - 0.1 * 0.5 + (oja_rate or 0.0) * _numpy_oja(
      kernel, trace.pre, trace.post)


@pytest.mark.parametrize("oja_rate", [0.01, 0.0, None])
def test_sgd_oja_unit_norm_projects_each_units_incoming_weights(oja_rate):
  params, acts, grads = _mlp_problem()
  tx = ojax.sgd_oja(0.1, oja_rate, unit_norm=True)
  updates, _ = tx.update(grads, tx.init(params), params, activations=acts)
  for name in ("a", "b"):
    stepped = _sgd_oja_step(params, acts, name, oja_rate)
    # The step alone leaves columns far from norm 1 (the check has teeth).
    assert np.all(np.abs(np.linalg.norm(stepped, axis=0) - 1) > 0.05)
    np.testing.assert_allclose(
        params[name]["kernel"] + updates[name]["kernel"],
        _unit_columns(stepped), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("oja_rate", [0.01, None])
def test_sgd_oja_unit_norm_acts_only_where_the_mask_is_true(oja_rate):
  params, acts, grads = _mlp_problem()
  mask = {"a": {"kernel": True}, "b": {"kernel": False}}
  tx = ojax.sgd_oja(0.1, oja_rate, mask=mask, unit_norm=True)
  updates, _ = tx.update(grads, tx.init(params), params, activations=acts)
  np.testing.assert_allclose(
      params["a"]["kernel"] + updates["a"]["kernel"],
      _unit_columns(_sgd_oja_step(params, acts, "a", oja_rate)), rtol=1e-5,
      atol=1e-6)
  # b: neither the Oja term nor the projection, the SGD step alone.
  # In float32 on every numpy (1.26 would promote a Python float to float64).
  np.testing.assert_array_equal(updates["b"]["kernel"], np.full(
      (4, 4), np.float32(-0.1) * np.float32(0.5), np.float32))


def test_sgd_oja_unit_norm_keeps_a_zero_column_and_skips_other_leaves():
  params = {"dense": {"kernel": jnp.asarray([[0.05, 3.0], [0.05, 4.0]]),
                      "bias": jnp.ones(2)}}
  grads = {"dense": {"kernel": jnp.asarray([[0.5, 0.0], [0.5, 0.0]]),
                     "bias": jnp.ones(2)}}
  acts = {"dense": {"kernel": ojax.Trace(jnp.ones((1, 2)), jnp.ones((1, 2))),
                    "bias": None}}
  tx = ojax.sgd_oja(0.1, None, unit_norm=True)
  updates, _ = tx.update(grads, tx.init(params), params, activations=acts)
  new = optax.apply_updates(params, updates)
  # Column 0 is 0.05 - 0.1 * 0.5 = 0: kept (no NaN); column 1 is (3, 4) / 5.
  np.testing.assert_allclose(new["dense"]["kernel"], [[0.0, 0.6], [0.0, 0.8]],
                             rtol=1e-6, atol=1e-7)
  assert np.all(np.isfinite(new["dense"]["kernel"]))
  np.testing.assert_allclose(new["dense"]["bias"], [0.9, 0.9], rtol=1e-6)


def test_sgd_oja_unit_norm_refuses_update_without_params():
  params, acts, grads = _mlp_problem()
  tx = ojax.sgd_oja(0.1, 0.0, unit_norm=True)
  with pytest.raises(ValueError, match=r"^ojax\.sgd_oja: unit_norm=True needs "
                     r"params in update\(updates, state, params, activations="
                     r"\.\.\.\); it projects params \+ step\.$"):
    tx.update(grads, tx.init(params), None, activations=acts)


@pytest.mark.parametrize("value,shown", [
    (1, "unit_norm=1 has type int"), ("yes", "unit_norm='yes' has type str"),
    (None, "unit_norm=None has type NoneType")])
def test_sgd_oja_refuses_a_unit_norm_that_is_not_a_bool(value, shown):
  with pytest.raises(ValueError, match=rf"^ojax\.sgd_oja: {shown}; it must be "
                     r"True or False\.$"):
    ojax.sgd_oja(0.1, 0.0, unit_norm=value)


def test_sgd_oja_unit_norm_shows_in_repr_and_survives_a_tree_round_trip():
  params, acts, grads = _mlp_problem()
  assert repr(ojax.sgd_oja(0.1, 0.0)) == (
      "ojax.sgd_oja(learning_rate=0.1, oja_learning_rate=0.0)")
  tx = ojax.sgd_oja(0.1, 0.0, unit_norm=True)
  assert repr(tx) == ("ojax.sgd_oja(learning_rate=0.1, oja_learning_rate=0.0,"
                      " unit_norm=True)")
  leaves, treedef = jax.tree.flatten(tx)
  back = jax.tree.unflatten(treedef, leaves)
  assert isinstance(back, ojax.SgdOja) and back.unit_norm is True
  assert repr(back) == repr(tx)
  assert jax.tree.flatten(ojax.sgd_oja(0.1, 0.0))[1] != treedef
  updates, _ = back.update(grads, back.init(params), params, activations=acts)
  np.testing.assert_allclose(
      np.linalg.norm(params["a"]["kernel"] + updates["a"]["kernel"], axis=0),
      1.0, rtol=1e-5)

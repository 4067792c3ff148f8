"""No silent traps: placement, MultiSteps, layouts, run-time rates, messages."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax


def _problem(seed=0, batch=4, fan_in=5, fan_out=3):
  rng = np.random.default_rng(seed)
  params = {"a": {"kernel": jnp.asarray(rng.normal(size=(fan_in, fan_out)),
                                        jnp.float32),
                  "bias": jnp.zeros(fan_out)}}
  trace = ojax.Trace(jnp.asarray(rng.normal(size=(batch, fan_in)), jnp.float32),
                     jnp.asarray(rng.normal(size=(batch, fan_out)),
                                 jnp.float32))
  acts = {"a": {"kernel": trace, "bias": None}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  return params, acts, grads


def _term(params, acts):
  trace = acts["a"]["kernel"]
  return ojax.oja_term(params["a"]["kernel"], trace)


# --- Placement ------------------------------------------------------------


def test_with_rule_adds_the_term_unscaled_after_any_optimizer():
  params, acts, grads = _problem()
  term = _term(params, acts)
  for opt in (optax.sgd(0.1), optax.adam(0.1), optax.chain(
      optax.clip_by_global_norm(1.0), optax.sgd(0.3))):
    tx = ojax.with_rule(opt, ojax.oja(0.01))
    u, plain = jax.jit(lambda g, tx=tx, opt=opt: (
        tx.update(g, tx.init(params), params, activations=acts)[0],
        opt.update(g, opt.init(params), params)[0]))(grads)
    np.testing.assert_allclose(u["a"]["kernel"],
                               plain["a"]["kernel"] + 0.01 * term, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(u["a"]["bias"], plain["a"]["bias"])


def test_with_rule_takes_several_rules():
  params, acts, grads = _problem()
  tx = ojax.with_rule(optax.sgd(0.1), ojax.oja(0.01), ojax.hebb(0.02))
  u, state = tx.update(grads, tx.init(params), params, activations=acts)
  trace = acts["a"]["kernel"]
  expected = (-0.05 + 0.01 * _term(params, acts)
              + 0.02 * ojax.hebb_term(params["a"]["kernel"], trace))
  np.testing.assert_allclose(u["a"]["kernel"], expected, rtol=1e-5, atol=1e-6)
  assert len(state) == 3


def test_rule_before_the_optimizer_has_the_documented_meaning():
  """chain(rule, sgd) transforms the term like a gradient: -lr (g + eta T).

  That is anti-Oja; the documented placement is with_rule(optimizer, rule).
  """
  params, acts, grads = _problem()
  tx = optax.chain(ojax.oja(0.01), optax.sgd(0.1))
  u, _ = tx.update(grads, tx.init(params), params, activations=acts)
  np.testing.assert_allclose(
      u["a"]["kernel"], -0.1 * (0.5 + 0.01 * _term(params, acts)), rtol=1e-5,
      atol=1e-6)


def test_with_rule_refuses_a_rule_in_the_optimizer_place():
  with pytest.raises(ValueError, match="first argument is a plasticity rule"):
    ojax.with_rule(ojax.oja(0.01), optax.sgd(0.1))
  with pytest.raises(ValueError, match="no rule given"):
    ojax.with_rule(optax.sgd(0.1))
  with pytest.raises(ValueError, match="rule 0 has type float"):
    ojax.with_rule(optax.sgd(0.1), 0.01)


# --- MultiSteps -----------------------------------------------------------


def test_rule_inside_multisteps_raises():
  params, acts, grads = _problem()
  for tx in (optax.MultiSteps(ojax.sgd_oja(0.1, 0.01), 2),
             optax.MultiSteps(optax.inject_hyperparams(ojax.oja)(
                 learning_rate=0.01), 2)):
    with pytest.raises(ValueError, match="inside optax.MultiSteps would see "
                       "only the last mini-batch"):
      tx.update(grads, tx.init(params), params, activations=acts)


def test_with_rule_around_multisteps_averages_the_term_over_mini_steps():
  params, acts, grads = _problem(batch=6)
  trace = acts["a"]["kernel"]
  halves = [jax.tree.map(lambda a, i=i: a[3 * i:3 * i + 3], trace)
            for i in range(2)]
  grads2 = [grads, jax.tree.map(lambda g: 3 * g, grads)]
  tx = ojax.with_rule(optax.MultiSteps(optax.sgd(0.1), 2), ojax.oja(0.01))
  step = jax.jit(lambda g, s, a: tx.update(g, s, params, activations=a))
  state = tx.init(params)
  first, state = step(grads2[0], state, {"a": {"kernel": halves[0],
                                               "bias": None}})
  second, state = step(grads2[1], state, {"a": {"kernel": halves[1],
                                                "bias": None}})
  jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0.0), first)
  # Equal halves: the mean of the two terms is the term of the whole batch.
  expected = -0.1 * 1.0 + 0.01 * _term(params, acts)
  np.testing.assert_allclose(second["a"]["kernel"], expected, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(second["a"]["bias"], -0.1 * 1.0, rtol=1e-6)
  assert isinstance(state[-1], ojax.RuleAccumulator)
  jax.tree.map(lambda a: np.testing.assert_array_equal(a, 0.0),
               state[-1].term)
  assert int(state[1].count) == 2  # The rule ran at every mini-step.


# --- Layout ---------------------------------------------------------------


@pytest.mark.parametrize("rule", [
    lambda **kw: ojax.oja(0.1, **kw), lambda **kw: ojax.sanger(0.1, **kw),
    lambda **kw: ojax.hebb(0.1, **kw),
    lambda **kw: ojax.bcm(0.1, theta_init=0.5, **kw),
    lambda **kw: ojax.plasticity({"oja": 0.1, "decay": 0.2}, **kw)])
def test_out_in_layout_is_the_transposed_rule(rule):
  """A square (out, in) weight gets the rule of its transpose, not its own."""
  rng = np.random.default_rng(1)
  w_OxI = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)
  trace = ojax.Trace(jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                     jnp.asarray(rng.normal(size=(3, 4)), jnp.float32))

  def run(tx, w):
    params = {"w": w}
    u, _ = tx.update(optax.tree.zeros_like(params), tx.init(params), params,
                     activations={"w": trace})
    return u["w"]

  out_in = run(rule(layout="out_in"), w_OxI)
  np.testing.assert_allclose(out_in, run(rule(), w_OxI.T).T, rtol=1e-5,
                             atol=1e-6)
  assert not np.allclose(out_in, run(rule(), w_OxI), atol=1e-3)


def test_out_in_layout_checks_shapes_against_fan_out_first():
  params = {"w": jnp.ones((3, 5))}  # (out, in)
  tx = ojax.oja(0.1, layout="out_in")
  with pytest.raises(ValueError, match=r"layout='out_in', fan_in 5\), so pre "
                     r"must be \(\.\.\., 5\)"):
    tx.update(params, tx.init(params), params,
              activations={"w": ojax.Trace(jnp.ones((2, 3)), jnp.ones((2, 3)))})
  with pytest.raises(ValueError, match="layout='in-out' is not known"):
    ojax.oja(0.1, layout="in-out")


# --- Run-time rates -------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")])
def test_bad_rate_at_run_time_makes_the_update_nan(bad):
  params, acts, grads = _problem()
  for tx in (ojax.oja(lambda count: bad + 0 * count),
             optax.inject_hyperparams(ojax.oja)(learning_rate=bad),
             ojax.bcm(lambda count: bad + 0 * count),
             ojax.with_rule(optax.sgd(0.1), optax.inject_hyperparams(
                 ojax.sanger)(learning_rate=bad))):
    u, _ = jax.jit(lambda g, s, tx=tx: tx.update(g, s, params,
                                                 activations=acts))(
                                                     grads, tx.init(params))
    assert np.all(np.isnan(u["a"]["kernel"]))
    assert np.all(np.isfinite(u["a"]["bias"]))  # Untraced leaves untouched.


def test_good_dynamic_rate_is_unchanged_by_the_guard():
  params, acts, grads = _problem()
  tx = optax.inject_hyperparams(ojax.oja)(learning_rate=0.02)
  u, _ = jax.jit(lambda g, s: tx.update(g, s, params, activations=acts))(
      grads, tx.init(params))
  np.testing.assert_allclose(u["a"]["kernel"],
                             0.5 + 0.02 * _term(params, acts), rtol=1e-6)


# --- Construction errors --------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda: ojax.oja("0.01"),
     "ojax.oja: learning_rate='0.01' has type str; it must be a finite float "
     ">= 0 or an optax schedule"),
    (lambda: ojax.sgd_oja(0.1, -1e-3),
     "ojax.sgd_oja: oja_learning_rate=-0.001; it must be a finite float >= 0"),
    (lambda: ojax.sgd_oja("x", 1e-3),
     "ojax.sgd_oja: learning_rate='x' has type str"),
    (lambda: ojax.oja(jnp.ones(3)),
     "learning_rate is an array of shape (3,) and dtype float32; it must be "
     "a scalar"),
    (lambda: ojax.oja(True), "learning_rate=True has type bool"),
    (lambda: ojax.oja(None), "learning_rate=None has type NoneType"),
    (lambda: ojax.hebb(-1.0), "ojax.hebb: learning_rate=-1.0"),
    (lambda: ojax.sanger(float("nan")), "ojax.sanger: learning_rate=nan"),
    (lambda: ojax.bcm(0.1, theta_decay=1.0), "theta_decay=1.0; it must be in "
     "[0, 1)"),
    (lambda: ojax.bcm(0.1, theta_init=-1.0), "theta_init=-1.0"),
    (lambda: ojax.oja(0.1, mask=None, layout="io"), "layout='io' is not known"),
])
def test_construction_errors_are_one_clear_line(make, message):
  with pytest.raises(ValueError) as err:
    make()
  text = str(err.value)
  assert message in text
  assert "\n" not in text
  assert " a ArrayImpl" not in text and " a Array" not in text


def test_update_errors_never_say_a_arrayimpl():
  params, acts, grads = _problem()
  tx = ojax.oja(0.1)
  with pytest.raises(ValueError) as err:
    tx.update(grads, tx.init(params), params,
              activations={"a": {"kernel": jnp.ones(3)}})
  assert "has type ArrayImpl" in str(err.value)
  assert "is a ArrayImpl" not in str(err.value)


def test_mask_argument_works_like_add_decayed_weights():
  params, acts, grads = _problem()
  acts = {"a": {"kernel": acts["a"]["kernel"], "bias": None}}
  for mask in ({"a": {"kernel": False, "bias": True}},
               lambda p: jax.tree.map(lambda x: x.ndim == 1, p)):
    tx = ojax.oja(0.1, mask=mask)
    u, _ = tx.update(grads, tx.init(params), params, activations=acts)
    np.testing.assert_array_equal(u["a"]["kernel"], grads["a"]["kernel"])
  tx = ojax.oja(0.1, mask={"a": {"kernel": True, "bias": False}})
  u, _ = tx.update(grads, tx.init(params), params, activations=acts)
  assert not np.allclose(u["a"]["kernel"], grads["a"]["kernel"])

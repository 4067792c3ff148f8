"""No silent traps: placement, MultiSteps, layouts, run-time rates, messages."""

from flax import nnx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax
from ojax import fused
from ojax import metrics
from ojax import models
from ojax import train


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


MISPLACED = [
    ("rule inside MultiSteps", lambda: optax.MultiSteps(
        ojax.sgd_oja(0.1, 0.01), 2), "inside optax.MultiSteps would see "
     "only the last mini-batch's activations"),
    ("injected rule inside MultiSteps", lambda: optax.MultiSteps(
        optax.inject_hyperparams(ojax.oja)(learning_rate=0.01), 2),
     "inside optax.MultiSteps"),
    ("rule after MultiSteps in a chain", lambda: optax.chain(
        optax.MultiSteps(optax.sgd(0.1), 2), ojax.oja(0.01)),
     "after optax.MultiSteps in optax.chain would add its term at every "
     "mini-step"),
    ("with_rule after MultiSteps in a chain", lambda: optax.chain(
        optax.MultiSteps(optax.sgd(0.1), 2),
        ojax.with_rule(optax.identity(), ojax.oja(0.01))),
     "after optax.MultiSteps in optax.chain"),
]


@pytest.mark.parametrize("make,message", [c[1:] for c in MISPLACED],
                         ids=[c[0] for c in MISPLACED])
def test_rules_multisteps_would_misapply_are_refused(make, message):
  """By the structure of the optimizer state: ojax.rules.check_placement,
  and the loop's init (ojax.train.init_state) through it."""
  params, _, _ = _problem()
  tx = make()
  with pytest.raises(ValueError, match=message):
    ojax.rules.check_placement(tx.init(params))
  model = models.MLP(features=(3, 2))
  with pytest.raises(ValueError, match=message):
    train.init_state(model, tx, jax.random.key(0), 4)


def test_with_rule_refuses_a_rule_inside_its_optimizers_multisteps():
  params, _, _ = _problem()
  tx = ojax.with_rule(optax.MultiSteps(ojax.with_rule(
      optax.sgd(0.1), ojax.oja(0.01)), 2), ojax.hebb(0.01))
  with pytest.raises(ValueError, match="ojax.with_rule: a plasticity rule "
                     "inside optax.MultiSteps"):
    tx.init(params)


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


def test_with_rule_averages_over_a_multisteps_inside_a_chain():
  """with_rule(chain(MultiSteps, clip), rule) adds the mean term once per
  emitted update, as with_rule(MultiSteps, rule) does."""
  params, acts, grads = _problem(batch=6)
  trace = acts["a"]["kernel"]
  halves = [jax.tree.map(lambda a, i=i: a[3 * i:3 * i + 3], trace)
            for i in range(2)]
  tx = ojax.with_rule(optax.chain(optax.MultiSteps(optax.sgd(0.1), 2),
                                  optax.clip(10.0)), ojax.oja(0.01))
  state = tx.init(params)
  assert isinstance(state[-1], ojax.RuleAccumulator)
  step = jax.jit(lambda g, s, a: tx.update(g, s, params, activations=a))
  first, state = step(grads, state, {"a": {"kernel": halves[0],
                                           "bias": None}})
  second, state = step(jax.tree.map(lambda g: 3 * g, grads), state,
                       {"a": {"kernel": halves[1], "bias": None}})
  jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0.0), first)
  # Mean gradient 1.0; the mean of the halves' terms is the whole batch's.
  np.testing.assert_allclose(second["a"]["kernel"],
                             -0.1 + 0.01 * _term(params, acts), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(second["a"]["bias"], -0.1, rtol=1e-6)


# --- What is not a rule, integer parameters, bad masks ---------------------


NOT_RULES = [
    ("adam", optax.adam(1e-3), "ScaleByAdamState"),
    ("scale", optax.scale(2.0), "EmptyState"),
    ("sgd_oja", ojax.sgd_oja(0.1, 0.01), "InjectStatefulHyperparamsState"),
    ("injected adam", optax.inject_hyperparams(optax.adam)(
        learning_rate=1e-3), "ScaleByAdamState"),
]


@pytest.mark.parametrize("rule,holds", [c[1:] for c in NOT_RULES],
                         ids=[c[0] for c in NOT_RULES])
def test_with_rule_refuses_what_is_not_a_rule(rule, holds):
  params, _, _ = _problem()
  tx = ojax.with_rule(optax.sgd(0.1), rule)
  with pytest.raises(ValueError) as err:
    tx.init(params)
  text = str(err.value)
  assert text.startswith("ojax.with_rule: rule 0 is not a plasticity rule "
                         "(its state holds ")
  assert holds in text and "\n" not in text


def test_with_rule_takes_rules_inside_inject_hyperparams_and_masked():
  params, acts, grads = _problem()
  tx = ojax.with_rule(
      optax.sgd(0.1), optax.inject_hyperparams(ojax.oja)(learning_rate=0.01),
      optax.masked(ojax.hebb(0.02), {"a": {"kernel": True, "bias": False}}))
  u, _ = tx.update(grads, tx.init(params), params, activations=acts)
  trace = acts["a"]["kernel"]
  np.testing.assert_allclose(
      u["a"]["kernel"], -0.05 + 0.01 * _term(params, acts)
      + 0.02 * ojax.hebb_term(params["a"]["kernel"], trace), rtol=1e-5,
      atol=1e-6)


def test_inject_hyperparams_around_sgd_oja_uses_the_injected_rates():
  params, acts, grads = _problem()
  tx = optax.inject_hyperparams(ojax.sgd_oja)(learning_rate=0.1,
                                              oja_learning_rate=0.01)
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.3)
  state.hyperparams["oja_learning_rate"] = jnp.asarray(0.02)
  u, _ = jax.jit(lambda g, s: tx.update(g, s, params, activations=acts))(
      grads, state)
  np.testing.assert_allclose(u["a"]["kernel"],
                             -0.3 * 0.5 + 0.02 * _term(params, acts),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(u["a"]["bias"], -0.3 * 0.5, rtol=1e-6)


def _int_problem():
  params = {"w": jnp.array([[3, 1], [0, 2]], jnp.int32)}
  acts = {"w": ojax.Trace(jnp.ones((1, 2)), jnp.ones((1, 2)))}
  return params, acts


INT_PARAMS = [
    ("oja", lambda: ojax.oja(0.1), "ojax.oja: the parameter at ['w'] has "
     "dtype int32; plasticity rules update floating-point kernels only"),
    ("hebb after sgd", lambda: ojax.with_rule(optax.sgd(0.1), ojax.hebb(0.1)),
     "ojax.hebb: the parameter at ['w'] has dtype int32"),
    ("bcm", lambda: ojax.bcm(0.1), "ojax.bcm: the parameter at ['w'] has "
     "dtype int32"),
    ("sgd_oja", lambda: ojax.sgd_oja(0.1, 0.01), "ojax.sgd_oja: the "
     "parameter at ['w'] has dtype int32; its SGD updates would be silently "
     "truncated"),
]


@pytest.mark.parametrize("make,message", [c[1:] for c in INT_PARAMS],
                         ids=[c[0] for c in INT_PARAMS])
def test_integer_parameters_are_refused(make, message):
  params, acts = _int_problem()
  tx = make()
  with pytest.raises(ValueError) as err:
    tx.update(params, tx.init(params), params, activations=acts)
  assert message in str(err.value)
  assert "\n" not in str(err.value)


BAD_MASKS = [
    ("wrong key", lambda: ojax.oja(0.1, mask={"b": True}),
     "ojax.oja: mask has structure {'b': *}; it must be a tree of booleans "
     "shaped like params (or a prefix of it), or a callable returning one; "
     "params have structure {'a': {'bias': *, 'kernel': *}}."),
    ("callable, wrong structure",
     lambda: ojax.hebb(0.1, mask=lambda p: [True, False]),
     "ojax.hebb: mask has structure [*, *]"),
    ("not a bool", lambda: ojax.oja(0.1, mask={"a": {"kernel": 0.5,
                                                     "bias": False}}),
     "ojax.oja: mask['a']['kernel'] is 0.5; each leaf of a mask must be True "
     "or False."),
    ("sgd_oja", lambda: ojax.sgd_oja(0.1, 0.01, mask={"layer_0": True}),
     "ojax.sgd_oja: mask has structure {'layer_0': *}"),
]


@pytest.mark.parametrize("make,message", [c[1:] for c in BAD_MASKS],
                         ids=[c[0] for c in BAD_MASKS])
def test_a_mask_that_does_not_fit_is_one_clear_line(make, message):
  params, acts, grads = _problem()
  tx = make()
  with pytest.raises(ValueError) as err:
    tx.update(grads, tx.init(params), params, activations=acts)
  assert message in str(err.value)
  assert "\n" not in str(err.value)


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


# --- Traces: the activity the network has ---------------------------------


class _NormedMLP(nn.Module):
  """Dense -> BatchNorm -> Dropout -> relu -> Dense."""

  @nn.compact
  def __call__(self, x, train=False):
    z = nn.Dense(4)(x)
    z = nn.BatchNorm(use_running_average=not train)(z)
    z = nn.Dropout(0.5, deterministic=not train)(z)
    return nn.Dense(2)(nn.relu(z))


def test_linen_trace_follows_batchnorm_and_dropout_to_the_real_activity():
  model = _NormedMLP()
  x = jax.random.normal(jax.random.key(1), (5, 3))
  variables = model.init(jax.random.key(0), x)
  (_, _), acts = ojax.traces.apply(
      model, variables, x, True, post=nn.relu,
      rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
  post = np.asarray(acts["Dense_0"]["kernel"].post)
  # The activity the network has is what the next layer receives.
  np.testing.assert_array_equal(post, acts["Dense_1"]["kernel"].pre)
  # Independently: relu of the batch-normalized, dropped-out output.
  z = np.asarray(x @ variables["params"]["Dense_0"]["kernel"]
                 + variables["params"]["Dense_0"]["bias"], np.float64)
  normed = (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
  kept = post > 0
  np.testing.assert_allclose(post[kept], 2 * normed[kept], rtol=1e-4,
                             atol=1e-5)  # Dropout 0.5 scales kept units x2.
  raw = np.maximum(z, 0)  # What the old helper recorded.
  assert not np.allclose(post, raw, atol=1e-2)


def test_nnx_trace_follows_batchnorm_to_the_real_activity():
  class Net(nnx.Module):

    def __init__(self, rngs):
      self.a = nnx.Linear(3, 4, rngs=rngs)
      self.norm = nnx.BatchNorm(4, rngs=rngs)
      self.b = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.b(nnx.relu(self.norm(self.a(x))))

  net = Net(nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (6, 3))
  _, acts = ojax.traces.call(net, x, post=nnx.relu)
  post = np.asarray(acts["a"]["kernel"].post)
  np.testing.assert_array_equal(post, acts["b"]["kernel"].pre)
  a = nnx.to_pure_dict(nnx.state(net, nnx.Param))["a"]
  z = np.asarray(x @ a["kernel"] + a["bias"], np.float64)
  normed = (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)
  np.testing.assert_allclose(post, np.maximum(normed, 0), rtol=1e-4,
                             atol=1e-5)


class _Cell(nn.Module):

  @nn.compact
  def __call__(self, c, x):
    h = nn.relu(nn.Dense(4)(x) + c)
    return h, h


class _Scanned(nn.Module):

  @nn.compact
  def __call__(self, xs):
    scan = nn.scan(_Cell, variable_broadcast="params",
                   split_rngs={"params": False}, in_axes=1, out_axes=1)
    _, ys = scan()(jnp.zeros((xs.shape[0], 4)), xs)
    return nn.Dense(2)(ys)


def test_a_layer_inside_nn_scan_is_refused_as_such():
  model = _Scanned()
  x = jnp.ones((2, 3, 4))
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(ValueError) as err:
    ojax.traces.apply(model, variables, x, post=nn.relu)
  text = str(err.value)
  assert text.startswith("ojax.traces.apply: layer 'Scan_Cell_0/Dense_0' "
                         "(Dense) runs inside a transform of the model "
                         "(nn.scan, ")
  assert "more than once" not in text and "\n" not in text


@pytest.mark.parametrize("module", [models, train, metrics, fused,
                                   ojax.rules, ojax.traces])
def test_library_modules_declare_their_public_names(module):
  assert module.__all__ == sorted(module.__all__, key=str.lower)
  for name in module.__all__:
    assert hasattr(module, name), name
  scope = {}
  exec(f"from {module.__name__} import *", scope)  # pylint: disable=exec-used
  assert {k for k in scope if not k.startswith("__")} == set(module.__all__)


@pytest.mark.parametrize("mask", [None, models.hidden_mask,
                                  {"layer_0": {"kernel": True},
                                   "layer_1": {"kernel": False}}])
def test_sgd_oja_survives_a_pytree_round_trip(mask):
  """flax.nnx (and jax.tree) rebuild a transform from its leaves: the mask
  and the fused step's recognition must survive it (flax 0.12.0's
  nnx.Optimizer failed with 'missing 3 required keyword-only arguments')."""
  tx = ojax.sgd_oja(0.1, 0.01, mask=mask)
  leaves, treedef = jax.tree.flatten(tx)
  back = jax.tree.unflatten(treedef, leaves)
  assert isinstance(back, ojax.SgdOja) and back.mask is tx.mask
  assert back.oja == tx.oja and repr(back) == repr(tx)
  assert jax.tree.flatten(back)[1] == treedef
  model = models.MLP(features=(3, 2))
  assert isinstance(fused.select_step(model, back), fused.FusedStep)
  if mask is None:  # The masks above name an MLP's layers.
    opt = nnx.Optimizer(nnx.Linear(4, 2, rngs=nnx.Rngs(0)), tx,
                        wrt=nnx.Param)
    assert isinstance(opt.tx, ojax.SgdOja) and opt.tx.mask is tx.mask

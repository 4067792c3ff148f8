"""Conformance: every rule passes every property, one test per property.

Like optax's ``contrib/_common_test.py``: each property is a test of its own,
parametrized over the rules (and dtypes), so a failure names the rule and the
property. The properties: an ``optax.GradientTransformationExtraArgs`` and an
``ojax.PlasticityRule``; the same updates with and without jit, other extra
arguments ignored; float32 and bfloat16 dtypes and shapes preserved; only
traced kernels change; state shapes and dtypes stable across updates and
under ``lax.scan``; under vmap each seed gets its own update; inside
``optax.inject_hyperparams``; inside ``ojax.with_rule`` and ``optax.chain``;
masked (``mask=`` and ``optax.masked``); missing params refused.

The rule's outputs are computed once per (rule, dtype), in one jitted
function (one compilation), and each test reads its part.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax

RULES = {
    "hebb": (ojax.hebb, dict(learning_rate=0.1)),
    "oja": (ojax.oja, dict(learning_rate=0.1)),
    "sanger": (ojax.sanger, dict(learning_rate=0.1)),
    "bcm": (ojax.bcm, dict(learning_rate=0.1, theta_decay=0.9)),
    # The plumbing does not depend on the terms (each is checked against its
    # formula in test_rule_family.py): one of each kind of field use.
    "plasticity": (ojax.plasticity, dict(
        coefficients=jnp.array([0.1, -0.05, 0.02, 0.01]),
        terms=("error", "oja", "post_pre_error_oja", "decay"))),
}


def _problem(dtype):
  rng = np.random.default_rng(0)
  a = lambda *s: jnp.asarray(rng.normal(size=s), dtype)  # pylint: disable=unnecessary-lambda-assignment
  params = {"dense": {"kernel": a(5, 3), "bias": a(3)},
            "conv": {"kernel": a(2, 2, 2, 3)},
            "frozen": {"kernel": a(3, 3)}}
  acts = {"dense": {"kernel": ojax.Trace(a(4, 5), a(4, 3), a(4, 5), a(4, 3)),
                    "bias": None},
          "conv": {"kernel": ojax.Trace(a(2, 3, 3, 8), a(2, 3, 3, 3),
                                        a(2, 3, 3, 8), a(2, 3, 3, 3))},
          "frozen": None}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  return params, acts, grads


def _close(a, b, dtype):
  tol = 2e-2 if dtype == jnp.bfloat16 else 1e-5
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol,
      atol=tol), a, b)


def _shapes(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


MASK = {"dense": {"kernel": False, "bias": False}, "conv": {"kernel": True},
        "frozen": {"kernel": True}}


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Placement and masking do not depend on the dtype: checked in float32.
ALL = [(name, dtype) for name in RULES for dtype in DTYPES]
FLOAT32 = [(name, "float32") for name in RULES]
by_rule = pytest.mark.parametrize("name, dtype", ALL,
                                  ids=[f"{n}-{d}" for n, d in ALL])
by_rule_f32 = pytest.mark.parametrize("name, dtype", FLOAT32,
                                      ids=[f"{n}-{d}" for n, d in FLOAT32])


class _Outputs(dict):
  """Attribute access to a rule's outputs (``o.eager``, ``o.out``)."""
  __getattr__ = dict.__getitem__


@functools.lru_cache(maxsize=None)
def _outputs(name: str, dtype_name: str) -> _Outputs:
  """Everything the properties look at, for one rule and dtype."""
  factory, kwargs = RULES[name]
  dtype = DTYPES[dtype_name]
  params, acts, grads = _problem(dtype)
  tx = factory(**kwargs)
  state0 = tx.init(params)
  injected = optax.inject_hyperparams(factory)(**kwargs)
  full = dtype == jnp.float32
  combined = {"with_rule": ojax.with_rule(optax.sgd(0.1), factory(**kwargs)),
              "chain": optax.chain(optax.sgd(0.1), factory(**kwargs))
              } if full else {}
  masked = {"mask=": factory(**kwargs, mask=MASK),
            "optax.masked": optax.masked(tx, MASK)} if full else {}

  @jax.jit
  def everything(grads, params, acts):
    out = {}
    out["jit"], out["state1"] = tx.update(grads, state0, params,
                                          activations=acts, unrelated=3)
    out["state2"] = tx.update(grads, out["state1"], params,
                              activations=acts)[1]
    if full:
      stacked = jax.tree.map(lambda p: jnp.stack([p, 2 * p]), params)
      out["vmap"] = jax.vmap(lambda p: tx.update(grads, state0, p,
                                                 activations=acts)[0])(stacked)
      out["doubled"] = tx.update(grads, state0, jax.tree.map(
          lambda p: 2 * p, params), activations=acts)[0]
    out["injected"], out["inj_state"] = injected.update(
        grads, injected.init(params), params, activations=acts)
    for key, c in combined.items():
      out[key] = c.update(grads, c.init(params), params, activations=acts)[0]
    for key, m in masked.items():
      m_updates, m_state = m.update(grads, m.init(params), params,
                                    activations=acts)
      m_state2 = m.update(grads, m_state, params, activations=acts)[1]
      out[key] = (m_updates, m_state, m_state2)
    return out

  out = everything(grads, params, acts)
  # Without jit (float32: eager bfloat16 only recompiles the same ops); other
  # extra arguments are ignored.
  if full:
    eager, state1 = tx.update(grads, state0, params, activations=acts,
                              unrelated=3)
  else:
    eager, state1 = out["jit"], out["state1"]
  return _Outputs(tx=tx, kwargs=kwargs, dtype=dtype, params=params,
                  acts=acts, grads=grads, state0=state0, state1=state1,
                  eager=eager, out=out, combined=list(combined),
                  masked=list(masked))


@by_rule_f32
def test_is_an_optax_transformation_and_a_plasticity_rule(name, dtype):
  o = _outputs(name, dtype)
  assert isinstance(o.tx, optax.GradientTransformationExtraArgs)
  assert isinstance(o.tx, ojax.PlasticityRule)


@by_rule_f32
def test_jit_gives_the_eager_updates_and_extra_arguments_are_ignored(name,
                                                                     dtype):
  o = _outputs(name, dtype)
  _close(o.eager, o.out["jit"], o.dtype)
  _close(o.state1, o.out["state1"], o.dtype)


@by_rule
def test_updates_keep_the_params_shapes_and_dtypes(name, dtype):
  o = _outputs(name, dtype)
  assert _shapes(o.eager) == _shapes(o.params) == _shapes(o.out["jit"])


@by_rule
def test_only_traced_kernels_change(name, dtype):
  o = _outputs(name, dtype)
  np.testing.assert_array_equal(o.eager["frozen"]["kernel"], 0.5)
  np.testing.assert_array_equal(o.eager["dense"]["bias"], 0.5)
  assert not np.allclose(np.asarray(o.eager["dense"]["kernel"], np.float32),
                         0.5)
  assert not np.allclose(np.asarray(o.eager["conv"]["kernel"], np.float32),
                         0.5)


@by_rule
def test_state_shapes_and_dtypes_are_stable_across_updates(name, dtype):
  o = _outputs(name, dtype)
  assert _shapes(o.state0) == _shapes(o.state1) == _shapes(o.out["state2"])


@by_rule
def test_state_is_a_valid_scan_carry(name, dtype):
  o = _outputs(name, dtype)
  step = lambda s: o.tx.update(o.grads, s, o.params, activations=o.acts)[1]  # pylint: disable=unnecessary-lambda-assignment
  scanned = jax.eval_shape(lambda s: jax.lax.scan(
      lambda s, _: (step(s), None), s, None, length=2)[0], o.state0)
  assert _shapes(scanned) == _shapes(o.state0)


@by_rule_f32
def test_vmap_over_seeds_gives_each_its_own_update(name, dtype):
  o = _outputs(name, dtype)
  # The second of two stacked params gets the update of the doubled params.
  _close(jax.tree.map(lambda u: u[1], o.out["vmap"]), o.out["doubled"],
         o.dtype)


@by_rule
def test_inject_hyperparams_gives_the_same_updates(name, dtype):
  o = _outputs(name, dtype)
  _close(o.out["injected"], o.eager, o.dtype)
  assert _shapes(o.out["injected"]) == _shapes(o.params)
  assert set(o.out["inj_state"].hyperparams) >= {
      k for k, v in o.kwargs.items() if not isinstance(v, tuple)}


@by_rule_f32
@pytest.mark.parametrize("combinator", ["with_rule", "chain"])
def test_after_an_optimizer_the_rule_adds_its_term(name, dtype, combinator):
  o = _outputs(name, dtype)
  assert combinator in o.combined
  term = jax.tree.map(lambda u: u.astype(jnp.float32) - 0.5, o.eager)
  _close(o.out[combinator], jax.tree.map(lambda t: t - 0.05, term), o.dtype)


@by_rule_f32
@pytest.mark.parametrize("how", ["mask=", "optax.masked"])
def test_masked_kernels_are_left_alone(name, dtype, how):
  o = _outputs(name, dtype)
  assert how in o.masked
  m_updates, m_state, m_state2 = o.out[how]
  np.testing.assert_array_equal(m_updates["dense"]["kernel"], 0.5)
  _close(m_updates["conv"], o.eager["conv"], o.dtype)
  assert _shapes(m_state2) == _shapes(m_state)


@by_rule
def test_missing_params_are_refused_with_optax_message(name, dtype):
  o = _outputs(name, dtype)
  with pytest.raises(ValueError, match="requires the current value of "
                     "parameters"):
    o.tx.update(o.grads, o.state0, None, activations=o.acts)

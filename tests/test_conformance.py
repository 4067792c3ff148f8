"""One conformance test that every rule passes.

With and without jit, under vmap, inside optax.inject_hyperparams, float32 and
bfloat16 dtypes preserved, state shapes and dtypes stable across updates,
inside ojax.with_rule and optax.chain, masked (mask= and optax.masked), other
extra arguments ignored, missing params refused.
"""

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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16],
                         ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(RULES))
def test_rule_conforms(name, dtype):
  factory, kwargs = RULES[name]
  params, acts, grads = _problem(dtype)
  tx = factory(**kwargs)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  assert isinstance(tx, ojax.PlasticityRule)
  state0 = tx.init(params)
  injected = optax.inject_hyperparams(factory)(**kwargs)
  # Placement and masking do not depend on the dtype: checked in float32.
  full = dtype == jnp.float32
  combined = {"with_rule": ojax.with_rule(optax.sgd(0.1), factory(**kwargs)),
              "chain": optax.chain(optax.sgd(0.1), factory(**kwargs))
              } if full else {}
  masked = {"mask=": factory(**kwargs, mask=MASK),
            "optax.masked": optax.masked(tx, MASK)} if full else {}

  # Without jit (float32: eager bfloat16 only recompiles the same ops);
  # other extra arguments are ignored.
  if full:
    eager, state1 = tx.update(grads, state0, params, activations=acts,
                              unrelated=3)

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
  if full:
    _close(eager, out["jit"], dtype)
  else:
    eager, state1 = out["jit"], out["state1"]
  # Dtypes are preserved; only traced kernels change.
  assert _shapes(eager) == _shapes(params) == _shapes(out["jit"])
  np.testing.assert_array_equal(eager["frozen"]["kernel"], 0.5)
  np.testing.assert_array_equal(eager["dense"]["bias"], 0.5)
  assert not np.allclose(np.asarray(eager["dense"]["kernel"], np.float32), 0.5)
  assert not np.allclose(np.asarray(eager["conv"]["kernel"], np.float32), 0.5)

  # State shapes and dtypes are stable across updates (a scan carry).
  assert _shapes(state0) == _shapes(state1) == _shapes(out["state2"])
  step = lambda s: tx.update(grads, s, params, activations=acts)[1]  # pylint: disable=unnecessary-lambda-assignment
  scanned = jax.eval_shape(lambda s: jax.lax.scan(
      lambda s, _: (step(s), None), s, None, length=2)[0], state0)
  assert _shapes(scanned) == _shapes(state0)

  # vmap over seeds: the second of two stacked params gets its own update.
  if full:
    _close(jax.tree.map(lambda u: u[1], out["vmap"]), out["doubled"], dtype)

  # inject_hyperparams: same updates, hyperparameters in the state.
  _close(out["injected"], eager, dtype)
  assert _shapes(out["injected"]) == _shapes(params)
  assert set(out["inj_state"].hyperparams) >= {
      k for k, v in kwargs.items() if not isinstance(v, tuple)}

  # After an optimizer: with_rule and optax.chain add the same term.
  term = jax.tree.map(lambda u: u.astype(jnp.float32) - 0.5, eager)
  for key in combined:
    _close(out[key], jax.tree.map(lambda t: t - 0.05, term), dtype)

  # Masked: mask= and optax.masked leave the masked kernel alone.
  for key in masked:
    m_updates, m_state, m_state2 = out[key]
    np.testing.assert_array_equal(m_updates["dense"]["kernel"], 0.5)
    _close(m_updates["conv"], eager["conv"], dtype)
    assert _shapes(m_state2) == _shapes(m_state)

  # Missing params: optax's message.
  with pytest.raises(ValueError, match="requires the current value of "
                     "parameters"):
    tx.update(grads, state0, None, activations=acts)

"""The rule family: Hebb, Sanger, BCM and plasticity(coefficients, terms).

Each rule against an independent NumPy formula and against its known fixed
point or behaviour.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax

# jax.enable_x64 is public from jax 0.8; make test-min runs the oldest jax.
try:
  from jax import enable_x64 as _enable_x64
except ImportError:
  from jax.experimental import enable_x64 as _enable_x64


def _problem(seed=0, batch=5, fan_in=6, fan_out=4):
  rng = np.random.default_rng(seed)
  f = lambda *s: rng.normal(size=s)  # pylint: disable=unnecessary-lambda-assignment
  return dict(k=f(fan_in, fan_out), x=f(batch, fan_in), y=f(batch, fan_out),
              a=f(batch, fan_in), e=f(batch, fan_out))


def _run(tx, p, fields=("x", "y")):
  names = {"x": "pre", "y": "post", "a": "pre_error", "e": "post_error"}
  trace = ojax.Trace(**{names[f]: jnp.asarray(p[f], jnp.float32)
                        for f in fields})
  params = {"w": jnp.asarray(p["k"], jnp.float32)}
  updates, _ = tx.update(optax.tree.zeros_like(params), tx.init(params),
                         params, activations={"w": trace})
  return np.asarray(updates["w"], np.float64)


# --- Hebb -----------------------------------------------------------------



def _train_linear(tx, params, x_TxD):
  """A linear layer ``y = x K`` trained by ``tx`` alone, one sample a step."""
  def step(carry, x_D):
    params, state = carry
    x_1xD = x_D[None]
    trace = ojax.Trace(x_1xD, x_1xD @ params["w"])
    updates, state = tx.update(optax.tree.zeros_like(params), state, params,
                               activations={"w": trace})
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), x_TxD)
  return params, state

def test_hebb_is_mean_outer_x_y():
  p = _problem()
  expected = sum(np.outer(x, y) for x, y in zip(p["x"], p["y"])) / 5
  np.testing.assert_allclose(_run(ojax.hebb(0.3), p), 0.3 * expected,
                             rtol=1e-5, atol=1e-6)


# --- Sanger ---------------------------------------------------------------


def _numpy_sanger(k, xs, ys):
  """Sanger's rule per sample in the paper's (out, in) layout, transposed."""
  w = k.T
  total = np.zeros_like(w)
  for x, y in zip(xs, ys):
    total += np.outer(y, x) - np.tril(np.outer(y, y)) @ w
  return total.T / len(xs)


def test_sanger_matches_lower_triangular_formula():
  p = _problem(1)
  np.testing.assert_allclose(_run(ojax.sanger(0.5), p),
                             0.5 * _numpy_sanger(p["k"], p["x"], p["y"]),
                             rtol=1e-4, atol=1e-5)


def test_sanger_finds_principal_components_in_order_with_unit_norm():
  dim, k, steps = 8, 3, 8000
  rng = np.random.default_rng(0)
  basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  stds = np.array([3.0, 2.0, 1.4, 1.0, 0.7, 0.5, 0.3, 0.2])
  x_TxD = (rng.normal(size=(steps, dim)) * stds) @ basis.T
  tx = ojax.sanger(optax.linear_schedule(5e-3, 1e-4, steps))
  params = {"w": jnp.asarray(rng.normal(size=(dim, k)) * 0.1, jnp.float32)}

  params, _ = _train_linear(tx, params, jnp.asarray(x_TxD, jnp.float32))
  w = np.asarray(params["w"])
  norms = np.linalg.norm(w, axis=0)
  cosines = np.abs(np.sum(w * basis[:, :k], axis=0)) / norms
  # Measured: cosines 0.9998, 0.9985, 0.9994; norms 1.0006, 1.0006, 0.9997.
  assert np.all(cosines > 0.995), cosines
  np.testing.assert_allclose(norms, 1.0, atol=0.02)


# --- BCM ------------------------------------------------------------------


def test_bcm_term_uses_the_threshold_before_the_step_and_updates_it():
  p = _problem(2)
  tx = ojax.bcm(0.5, theta_decay=0.75, theta_init=0.3)
  params = {"w": jnp.asarray(p["k"], jnp.float32)}
  trace = ojax.Trace(jnp.asarray(p["x"], jnp.float32),
                     jnp.asarray(p["y"], jnp.float32))
  updates, state = tx.update(optax.tree.zeros_like(params), tx.init(params),
                             params, activations={"w": trace})
  phi = p["y"] * (p["y"] - 0.3)
  expected = sum(np.outer(x, f) for x, f in zip(p["x"], phi)) / 5
  np.testing.assert_allclose(updates["w"], 0.5 * expected, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(state.theta["w"],
                             0.75 * 0.3 + 0.25 * np.mean(p["y"] ** 2, 0),
                             rtol=1e-5)
  assert int(state.count) == 1


def test_bcm_units_become_selective_to_one_of_two_patterns():
  """Two input patterns shown at random with p = 1/2, linear units y = K^T x.

  BCM's stable fixed points are selective: y = 1/p = 2 for one pattern and
  y = 0 for the other (theta = E[y^2] = 2). Which pattern a unit picks
  depends on its initial weights.
  """
  steps = 8000
  rng = np.random.default_rng(0)
  patterns = np.array([[1.0, 0.2], [0.2, 1.0]], np.float32)
  x_TxD = patterns[rng.integers(0, 2, size=steps)]
  tx = ojax.bcm(optax.linear_schedule(0.01, 0.0005, steps), theta_decay=0.95)
  params = {"w": jnp.array([[0.5, 0.4], [0.4, 0.5]], jnp.float32)}

  params, state = _train_linear(tx, params, jnp.asarray(x_TxD))
  responses = patterns @ np.asarray(params["w"])  # (pattern, unit)
  # Measured: unit 0 -> (2.008, 0.022), unit 1 -> (-0.024, 1.992).
  np.testing.assert_allclose(np.diag(responses), 2.0, atol=0.1)
  np.testing.assert_allclose(responses[[1, 0], [0, 1]], 0.0, atol=0.1)
  selectivity = 1 - responses.mean(0) / responses.max(0)  # 0.5 is the max.
  assert np.all(selectivity > 0.45), selectivity
  assert np.all(np.abs(np.asarray(state.theta["w"]) - 2.0) < 0.5)


# --- plasticity -----------------------------------------------------------


def _paper_terms(k, x, y, a, e):
  """The pool in the (out, in) layout of Shervani-Tabar & Rosenbaum (2023).

  W = K^T; y_{l-1} = x, y_l = y, e_{l-1} = a, e_l = e; one sample.
  Returns dK = dW^T per term.
  """
  w = k.T
  o = np.outer
  dws = {
      "error": -o(e, x),
      "decay": -w,
      "hebb": o(y, x),
      "oja": o(y, x) - o(y, y) @ w,
      "sanger": o(y, x) - np.tril(o(y, y)) @ w,
      "post_pre_error": o(y, a),
      "error_hebb": o(e, a),
      "error_oja": o(e, a) - o(e, e) @ w,
      "error_oja_pre": o(e, a) - w @ o(a, a),
      "post_pre_error_oja": o(y, a) - w @ o(a, a),
  }
  return {name: dw.T for name, dw in dws.items()}


def test_every_term_of_the_pool_matches_the_papers_formula():
  assert set(ojax.TERMS) == set(_paper_terms(*[np.ones((2, 2))] + [
      np.ones(2)] * 4))
  p = _problem(3)
  per_sample = [_paper_terms(p["k"], *s)
                for s in zip(p["x"], p["y"], p["a"], p["e"])]
  for name in ojax.TERMS:
    expected = sum(t[name] for t in per_sample) / len(per_sample)
    got = _run(ojax.plasticity({name: 0.7}), p, fields=("x", "y", "a", "e"))
    np.testing.assert_allclose(got, 0.7 * expected, rtol=1e-4, atol=1e-5,
                               err_msg=name)


def test_mapping_and_array_coefficients_agree_and_sum_terms():
  p = _problem(4)
  fields = ("x", "y", "a", "e")
  by_map = _run(ojax.plasticity({"error": 0.1, "oja": 0.02,
                                 "error_hebb": -0.3}), p, fields)
  by_array = _run(ojax.plasticity(jnp.array([0.1, 0.02, -0.3]),
                                  ("error", "oja", "error_hebb")), p, fields)
  one = lambda n: _run(ojax.plasticity({n: 1.0}), p, fields)  # pylint: disable=unnecessary-lambda-assignment
  np.testing.assert_allclose(by_map, by_array, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(
      by_map, 0.1 * one("error") + 0.02 * one("oja") - 0.3 * one("error_hebb"),
      rtol=1e-5, atol=1e-6)


def test_error_plus_oja_is_bp_plus_oja():
  """plasticity({error: lr, oja: eta}) with e = dL/dz equals sgd_oja."""
  rng = np.random.default_rng(5)
  k = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  loss = lambda k: 0.5 * jnp.mean(jnp.sum((x @ k - target) ** 2, -1))  # pylint: disable=unnecessary-lambda-assignment
  grads = {"w": jax.grad(loss)(k)}
  y = x @ k
  params = {"w": k}
  acts = {"w": ojax.Trace(x, y, post_error=y - target)}
  tx1 = ojax.plasticity({"error": 0.1, "oja": 0.01})
  u1, _ = tx1.update(optax.tree.zeros_like(params), tx1.init(params), params,
                     activations=acts)
  tx2 = ojax.sgd_oja(0.1, 0.01)
  u2, _ = tx2.update(grads, tx2.init(params), params, activations=acts)
  np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-5, atol=1e-6)


def _meta_problem():
  rng = np.random.default_rng(6)
  return dict(k=rng.normal(size=(4, 3)) * 0.5, xs=rng.normal(size=(6, 4)),
              labels=rng.integers(0, 3, size=6), xq=rng.normal(size=(5, 4)),
              lq=rng.integers(0, 3, size=5))


def _meta_loss(coefficients, terms, prob):
  """Query loss after an online inner loop (lax.scan) of plasticity updates.

  One softmax layer: post_error e = softmax - onehot, pre_error = (e K^T) *
  (1 - tanh(x)^2) (the error sent back to the inputs through a stand-in
  slope), so every term of the pool is active and depends on the weights.
  """
  tx = ojax.plasticity(coefficients, terms)

  def step(carry, sample):
    params, state = carry
    x, label = sample
    x = x[None]
    p = jax.nn.softmax(x @ params["w"])
    e = p - jax.nn.one_hot(label[None], 3, dtype=p.dtype)
    a = (e @ params["w"].T) * (1 - jnp.tanh(x) ** 2)
    acts = {"w": ojax.Trace(x, p, a, e)}
    updates, state = tx.update(optax.tree.zeros_like(params), state, params,
                               activations=acts)
    return (optax.apply_updates(params, updates), state), None

  params = {"w": jnp.asarray(prob["k"])}
  (params, _), _ = jax.lax.scan(
      step, (params, tx.init(params)),
      (jnp.asarray(prob["xs"]), jnp.asarray(prob["labels"])))
  p = jax.nn.softmax(jnp.asarray(prob["xq"]) @ params["w"])
  return -jnp.mean(jnp.log(p[jnp.arange(5), jnp.asarray(prob["lq"])]))


def test_coefficients_gradient_through_scan_matches_finite_differences():
  terms = tuple(ojax.TERMS)
  prob = _meta_problem()
  # The coefficients go in as a mapping {term: value}, as a meta-learner
  # holds them (array coefficients take the same path inside the rule).
  loss = lambda c: _meta_loss(dict(zip(terms, c)), None, prob)  # pylint: disable=unnecessary-lambda-assignment
  with _enable_x64(True):
    c = np.linspace(0.05, 0.3, len(terms))
    grad = np.asarray(jax.jit(jax.grad(loss))(c))
    forward = jax.jit(loss)
    eps, shifts = 1e-6, np.eye(len(terms))
    fd = np.array([(forward(c + eps * d) - forward(c - eps * d)) / (2 * eps)
                   for d in shifts])
  # Measured: max |grad - fd| / max |fd| = 1.4e-10.
  assert np.max(np.abs(grad - fd)) / np.max(np.abs(fd)) < 1e-6, (grad, fd)


def test_custom_callable_term_is_added():
  p = _problem(7)
  custom = lambda k, t: jnp.ones_like(k)  # pylint: disable=unnecessary-lambda-assignment
  got = _run(ojax.plasticity([0.5, 2.0], ("hebb", custom)), p)
  np.testing.assert_allclose(got, _run(ojax.hebb(0.5), p) + 2.0, rtol=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda: ojax.plasticity({"ojaa": 1.0}), "term 'ojaa' is not known"),
    (lambda: ojax.plasticity([1.0], ("oja", "hebb")),
     "1 coefficients for 2 terms"),
    (lambda: ojax.plasticity([1.0]), "needs terms="),
    (lambda: ojax.plasticity({"oja": "0.1"}),
     "coefficients['oja']='0.1' has type str"),
    (lambda: ojax.plasticity({"oja": 1.0}, ("oja",)), "given with a mapping"),
    (lambda: ojax.plasticity([1.0, 2.0], ("oja", "oja")), "repeat a name"),
    (lambda: ojax.plasticity(1.0, "oja"), "is a string"),
])
def test_plasticity_construction_errors(make, message):
  with pytest.raises(ValueError) as err:
    make()
  assert message in str(err.value)
  assert "\n" not in str(err.value)


def test_missing_error_fields_name_the_term_needs():
  p = _problem(8)
  with pytest.raises(ValueError, match=r"has post_error=None; this rule "
                     r"needs pre, post_error"):
    _run(ojax.plasticity({"error": 1.0}), p)

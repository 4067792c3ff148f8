"""Tests of ojax.metrics against values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ojax import metrics
from ojax import models


def test_orthonormal_columns_have_zero_error():
  q_6x3, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(6, 3)))
  assert float(metrics.orthonormality_error(jnp.asarray(q_6x3))) == (
      pytest.approx(0.0, abs=1e-5))


@pytest.mark.parametrize("scale, expected", [(2.0, 3.0), (0.0, 1.0),
                                             (1.0, 0.0)])
def test_scaled_identity_error(scale, expected):
  # K = s I (n x n): ||s^2 I - I||_F / sqrt(n) = |s^2 - 1|.
  k = scale * jnp.eye(5)
  assert float(metrics.orthonormality_error(k)) == pytest.approx(expected,
                                                                 abs=1e-6)


def _with_covariance(eigenvalues):
  # Rows +-a_i e_i with a_i = sqrt(n lam_i): 2n rows, mean zero, so the
  # covariance is diag(2 a_i^2 / 2n) = diag(lam_i) exactly.
  n = len(eigenvalues)
  rows = []
  for i, lam in enumerate(eigenvalues):
    a = np.sqrt(n * lam)
    rows += [a * np.eye(n)[i], -a * np.eye(n)[i]]
  return np.asarray(rows)


@pytest.mark.parametrize("eigenvalues, expected", [
    ((3.0, 1.0), 16.0 / 10.0),  # (3 + 1)^2 / (9 + 1)
    ((1.0, 1.0, 1.0, 1.0), 4.0),  # isotropic: the dimension
    ((5.0, 0.0, 0.0), 1.0),  # rank one
    ((2.0, 1.0, 1.0), 16.0 / 6.0),
])
def test_participation_ratio_of_known_spectrum(eigenvalues, expected):
  y = _with_covariance(eigenvalues)
  cov = np.cov(y.T, bias=True)
  np.testing.assert_allclose(np.diag(cov), eigenvalues, atol=1e-9)
  assert float(metrics.participation_ratio(jnp.asarray(y, jnp.float32))) == (
      pytest.approx(expected, rel=1e-5))
  # Rotations and shifts do not change the spectrum.
  rot, _ = np.linalg.qr(np.random.default_rng(1).normal(
      size=(len(eigenvalues),) * 2))
  moved = jnp.asarray(y @ rot.T + 7.0, jnp.float32)
  assert float(metrics.participation_ratio(moved)) == pytest.approx(
      expected, rel=1e-4)


def test_cosine():
  assert float(metrics.cosine(jnp.array([1., 0.]), jnp.array([1., 1.]))) == (
      pytest.approx(1 / np.sqrt(2)))
  assert float(metrics.cosine(jnp.array([1., 2.]), jnp.array([-2., 1.]))) == (
      pytest.approx(0.0, abs=1e-7))
  assert float(metrics.cosine(jnp.zeros(3), jnp.ones(3))) == 0.0


def test_layer_diagnostics_by_hand():
  # Identity hidden layer K0 = 2I, output kernel 0 (softmax post = [.5, .5]).
  model = models.MLP(features=(2, 2), activation="identity")
  params = {"layer_0": {"kernel": 2 * jnp.eye(2)},
            "layer_1": {"kernel": jnp.zeros((2, 2))}}
  x = jnp.eye(2)
  out = metrics.layer_diagnostics(model)(params, {}, x, jnp.array([0, 1]))
  assert set(out) == set(metrics.DIAGNOSTICS)
  np.testing.assert_allclose(out["orthonormality_error"], [3.0, 1.0],
                             rtol=1e-6)
  np.testing.assert_allclose(out["weight_norm"], [2 * np.sqrt(2), 0.0],
                             rtol=1e-6)
  np.testing.assert_allclose(out["activation_norm"], [2.0, np.sqrt(0.5)],
                             rtol=1e-6)
  # y0 rows (2, 0), (0, 2): covariance [[1, -1], [-1, 1]], rank one; the
  # softmax output is constant: no variance at all.
  np.testing.assert_allclose(out["participation_ratio"], [1.0, 0.0],
                             atol=1e-6)


def _fa_setup(seed=0):
  model = models.MLP(features=(16, 12, 4), feedback="random")
  variables = dict(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8))))
  params = variables.pop("params")
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 32))
  return model, params, variables, x, y


def test_feedback_cosine_is_one_when_feedback_equals_weights():
  model, params, state, x, y = _fa_setup()
  state = {"feedback": {k: {"kernel": params[k]["kernel"]}
                        for k in state["feedback"]}}
  cos = metrics.feedback_cosines(model, params, state, x, y)
  np.testing.assert_allclose(cos, np.ones(3), atol=1e-5)


def test_feedback_cosine_with_random_feedback():
  model, params, state, x, y = _fa_setup()
  out = metrics.layer_diagnostics(model)(params, state, x, y)
  cos = np.asarray(out["feedback_cosine"])
  assert cos.shape == (3,)
  assert np.all(np.abs(cos) <= 1 + 1e-6)
  assert cos[-1] == pytest.approx(1.0, abs=1e-5)  # Output: no feedback used.
  assert cos[0] < 0.99  # The FA update really differs from the gradient.


def test_backprop_model_has_no_feedback_cosine():
  model = models.MLP(features=(4, 3))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))["params"]
  out = metrics.layer_diagnostics(model)(params, {}, jnp.ones((3, 5)),
                                         jnp.array([0, 1, 2]))
  assert "feedback_cosine" not in out

"""Tests of ojax.models: traces line up with params; feedback alignment."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ojax
from ojax import models


def _init(**kwargs):
  model = models.MLP(features=(5, 4, 3), **kwargs)
  x_BxD = jax.random.uniform(jax.random.PRNGKey(1), (2, 6))
  variables = model.init(jax.random.PRNGKey(0), x_BxD)
  return model, variables, x_BxD


@pytest.mark.parametrize("use_bias", [False, True])
def test_activations_tree_has_the_structure_of_params(use_bias):
  model, variables, x = _init(use_bias=use_bias)
  _, acts = model.apply(variables, x)
  is_leaf = lambda t: t is None or isinstance(t, ojax.Trace)
  assert (jax.tree.structure(acts, is_leaf=is_leaf).num_leaves ==
          jax.tree.structure(variables["params"]).num_leaves)
  assert set(acts) == set(variables["params"])
  for name, layer in variables["params"].items():
    trace = acts[name]["kernel"]
    assert trace.pre.shape == (2, layer["kernel"].shape[0])
    assert trace.post.shape == (2, layer["kernel"].shape[1])
    if use_bias:
      assert acts[name]["bias"] is None


def test_traces_are_layer_inputs_and_softplus_outputs_and_softmax_at_top():
  model, variables, x = _init()
  logits, acts = model.apply(variables, x)
  p = variables["params"]
  y0 = np.log1p(np.exp(10 * (x @ p["layer_0"]["kernel"]))) / 10
  np.testing.assert_allclose(acts["layer_0"]["kernel"].pre, x)
  np.testing.assert_allclose(acts["layer_0"]["kernel"].post, y0, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(acts["layer_1"]["kernel"].pre, y0, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(acts["layer_2"]["kernel"].post,
                             jax.nn.softmax(logits), rtol=1e-5)
  _, raw = models.MLP(features=(5, 4, 3), output_post="logits").apply(
      variables, x)
  np.testing.assert_allclose(raw["layer_2"]["kernel"].post, logits, rtol=1e-5)


def test_gain_scales_the_initial_kernels():
  _, v1, _ = _init()
  _, v3, _ = _init(gain=3.0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(3 * a, b, rtol=1e-5),
               v1["params"], v3["params"])


def test_feedback_alignment_sends_errors_through_fixed_random_weights():
  model, variables, x = _init(feedback="random")
  b = variables["feedback"]["layer_1"]["kernel"]
  k = variables["params"]["layer_1"]["kernel"]
  assert b.shape == k.shape and not np.allclose(b, k)
  e = jnp.ones((2, 4))
  _, vjp = jax.vjp(models.feedback_matmul, x[:, :5], k, b)
  dx, dk, db = vjp(e)
  np.testing.assert_allclose(dx, e @ b.T, rtol=1e-6)
  np.testing.assert_allclose(dk, x[:, :5].T @ e, rtol=1e-6)
  np.testing.assert_array_equal(db, 0)


@pytest.mark.parametrize("field, value", [
    ("activation", "gelu"), ("kernel_init", "zeros"),
    ("output_post", "probs"), ("feedback", "direct")])
def test_unknown_option_names_list_the_allowed_ones(field, value):
  with pytest.raises(ValueError, match=f"{field}='{value}' is not known"):
    _init(**{field: value})


def test_orthogonal_init_gives_orthonormal_columns_or_rows():
  init = models.orthogonal_init()
  for shape in [(50, 20), (30, 30), (10, 40)]:
    k = np.asarray(init(jax.random.PRNGKey(0), shape), np.float64)
    gram = k.T @ k if shape[0] >= shape[1] else k @ k.T
    np.testing.assert_allclose(gram, np.eye(min(shape)), atol=1e-5)


@pytest.mark.slow  # End to end (make test-slow): keeps make test under 3 min.
def test_orthogonal_init_of_a_deep_mlp_compiles_and_finishes_under_jit_vmap():
  # Several LAPACK QR calls in one jit(vmap) program deadlocked XLA:CPU; run
  # in a subprocess so a regression fails on its timeout instead of hanging.
  code = (
      "import jax, optax; from ojax import models, train\n"
      "f = jax.jit(jax.vmap(lambda k: train.init_state(models.MLP("
      "(170, 130, 100, 70, 10), kernel_init='orthogonal'), optax.sgd(.1), k,"
      " 784)))\n"
      "jax.block_until_ready(f(jax.random.split(jax.random.PRNGKey(0), 3)))\n"
      "print('finished')\n")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=120, check=False,
                        env={**os.environ, "PYTHONPATH": root})
  assert "finished" in proc.stdout, proc.stderr[-2000:]

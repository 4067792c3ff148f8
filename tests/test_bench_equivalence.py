"""The benchmark's implementations compute the same update as ojax.

``make bench`` compares ojax with a per-sample PyTorch loop and a jitted step
called from Python; a speed ratio means something only if all three train the
same network the same way. This checks it on a small network (the bench itself
checks 100 samples of the benchmark networks).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ojax
from benchmarks import common
from benchmarks import jax_loops
from benchmarks import proposed

ARCH = "784-48-32-10"
SAMPLES = 30


@functools.lru_cache(maxsize=None)
def _problem():
  return common.prepare(ARCH, SAMPLES)


@pytest.fixture(name="problem")
def fixture_problem():
  return _problem()


@functools.lru_cache(maxsize=None)
def _ojax_final(rule):
  problem = _problem()
  model, tx = common.make_model(ARCH), common.make_tx(rule)
  state = common.init_state(ARCH, rule)
  x, y = jnp.asarray(problem.x_NxD), jnp.asarray(problem.y_N)
  fn, _ = jax_loops.compile_scan(model, tx, state, x, y, SAMPLES)
  return common.kernels_of(fn(state, jnp.asarray(0, jnp.int32), x, y)[0].params)


def _ojax_scan(problem, rule):
  assert problem is _problem()
  return _ojax_final(rule)


@pytest.mark.parametrize("rule", ["bp_oja", "sgd"])
def test_torch_reference_loop_matches_ojax(problem, rule):
  torch = pytest.importorskip("torch")
  from benchmarks import torch_ref  # pylint: disable=g-import-not-at-top
  weights = torch_ref.weights_from_kernels(problem.kernels)
  torch_ref.train(weights, torch.from_numpy(problem.x_NxD), problem.y_N,
                  problem.order_T.tolist(), lr=common.LR,
                  oja_lr=common.OJA_LR if rule == "bp_oja" else 0.0,
                  beta=common.BETA)
  ref = torch_ref.kernels_from_weights(weights)
  assert common.max_abs_diff(_ojax_scan(problem, rule), ref) < 1e-5
  # The comparison has teeth: training moved the weights by far more.
  assert common.max_abs_diff(ref, problem.kernels) > 1e-2


def test_python_loop_step_matches_ojax_scan(problem):
  model, tx = common.make_model(ARCH), common.make_tx("bp_oja")
  state = common.init_state(ARCH, "bp_oja")
  x, y = jnp.asarray(problem.x_NxD), jnp.asarray(problem.y_N)
  params, _ = jax_loops.python_loop(
      jax_loops.make_python_step(model, tx), jax_loops.copy_tree(state.params),
      jax_loops.copy_tree(state.opt_state), state.model_state, x, y,
      problem.order_T)
  assert common.max_abs_diff(common.kernels_of(params),
                             _ojax_scan(problem, "bp_oja")) < 1e-6


@pytest.mark.parametrize("batch", [1, 5])
def test_proposed_oja_term_equals_ojax(batch):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  kernel = jax.random.normal(k1, (7, 4))
  trace = ojax.Trace(pre=jax.random.normal(k2, (batch, 7)),
                     post=jax.random.normal(k3, (batch, 4)))
  np.testing.assert_allclose(proposed.oja_term(kernel, trace),
                             ojax.oja_term(kernel, trace), rtol=1e-5,
                             atol=1e-6)

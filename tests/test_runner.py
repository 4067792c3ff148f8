"""experiments/runner.py: size estimates and refusals, sweep points' rates
and gains in their own states. (Run directories: test_rundir.py; workers:
test_pool.py; results: test_schema.py; end to end: test_experiment.py and
test_resume.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ojax
from experiments import config as config_lib
from experiments import runner
from experiments.config import ConfigError
from experiments.configs import online
from ojax import models
from ojax import train


def _job(depth=0, hidden=(8,), optimizer="sgd", seeds=1, num_samples=1000,
         sweep=None):
  cfg = online.get_config()
  cfg.arms, cfg.axis, cfg.axis_values, cfg.claim = {}, "", (), None
  cfg.model.depth, cfg.model.hidden = depth, hidden
  cfg.optimizer, cfg.seeds, cfg.num_samples = optimizer, seeds, num_samples
  cfg.eval_every, cfg.eval_batch_size, cfg.diagnostics = 1000, 100, False
  if sweep:
    for field, values in sweep.items():
      cfg.sweep[field] = values
  return config_lib.Job("j", None, "", cfg)


def test_estimate_by_hand_for_a_784_8_10_mlp():
  # params 784*8 + 8*10 = 6352; 8 flops per param per sample at 2e9 flops/s;
  # memory: 2 copies of the params (SGD) + one evaluation batch of 100
  # samples x (8 + 10) units, twice; 4 bytes each; x 3 points.
  mem, seconds = runner.estimate(_job(), 784, num_points=3, num_test=1000)
  assert seconds == pytest.approx(8 * 6352 * 1000 * 3 / 2e9)
  assert mem == pytest.approx(4.0 * (6352 * 2 + 100 * 18 * 2) * 3)
  adam, _ = runner.estimate(_job(optimizer="adam"), 784, 3)
  assert adam == pytest.approx(4.0 * (6352 * 4 + 100 * 18 * 2) * 3)


def test_core_seconds_counts_grid_points_at_up_to_the_grid_speedup():
  one = runner.core_seconds(_job(seeds=2), 784)
  four = runner.core_seconds(_job(seeds=2, sweep={"lr": (0.1, 0.2, 0.3,
                                                         0.4)}), 784)
  many = runner.core_seconds(_job(seeds=2, sweep={"lr": tuple(
      0.01 * (i + 1) for i in range(14))}), 784)
  assert four == pytest.approx(one)  # 4 points vmapped: as fast as 1.
  assert many == pytest.approx(one * 14 / runner.GRID_SPEEDUP)


@pytest.mark.parametrize("job,words", [
    (_job(depth=runner.MAX_LAYERS + 1, hidden=(), num_samples=10),
     f"layers (> {runner.MAX_LAYERS}; compiling takes minutes)"),
    (_job(hidden=(4096, 4096), seeds=3000, num_samples=10),
     "GiB, more than 50% of this machine's"),
    (_job(hidden=(1024,), seeds=200, num_samples=200_000),
     f"h of compute on one core (> {runner.MAX_HOURS:g} h)"),
])
def test_check_size_refuses_what_this_machine_cannot_do(job, words):
  with pytest.raises(ConfigError) as err:
    runner.check_size([job], 784, allow_large=False)
  assert words in str(err.value) and "--allow_large" in str(err.value)
  assert "\n" not in str(err.value)
  runner.check_size([job], 784, allow_large=True)  # Asked for: allowed.


def test_a_small_job_passes_the_size_check():
  runner.check_size([_job()], 784, allow_large=False)


def test_each_grid_point_gets_its_own_rates_and_gain():
  model = models.MLP(features=(3, 2))
  tx = ojax.sgd_oja(0.5, 0.5)
  grid = [{"lr": 0.1, "oja_lr": 0.01, "model_gain": 1.0},
          {"lr": 0.2, "oja_lr": 0.0, "model_gain": 3.0}]
  keys = jnp.tile(jax.random.split(jax.random.PRNGKey(0), 2), (2, 1))
  states = train.init_states(model, tx, keys, 4)
  out = runner._with_grid(states, grid, num_seeds=2, base_gain=1.5)  # pylint: disable=protected-access
  # One plain SGD + Oja step of each point from zero gradients and traces
  # x = (1, 0, 0, 0), y = (1, 0, 0): Oja adds eta * (x - K y) y^T.
  for point, (lr, eta, gain) in enumerate(((0.1, 0.01, 1.0),
                                           (0.2, 0.0, 3.0))):
    for seed in range(2):
      i = 2 * point + seed
      one = jax.tree.map(lambda x, i=i: x[i], out)
      k0 = np.asarray(states.params["layer_0"]["kernel"][i])
      np.testing.assert_allclose(one.params["layer_0"]["kernel"],
                                 k0 * gain / 1.5, rtol=1e-6)
      grads = jax.tree.map(jnp.ones_like, one.params)
      x, y = jnp.eye(4)[:1], jnp.eye(3)[:1]
      acts = {"layer_0": {"kernel": ojax.Trace(x, y)},
              "layer_1": {"kernel": None}}
      updates, _ = tx.update(grads, one.opt_state, one.params,
                             activations=acts)
      kernel = np.asarray(one.params["layer_0"]["kernel"], np.float64)
      oja = np.outer(np.eye(4)[0] - kernel @ np.eye(3)[0], np.eye(3)[0])
      np.testing.assert_allclose(updates["layer_0"]["kernel"],
                                 -lr * 1.0 + eta * oja, rtol=1e-5, atol=1e-7)
      np.testing.assert_allclose(updates["layer_1"]["kernel"], -lr,
                                 rtol=1e-6)

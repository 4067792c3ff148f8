"""The README's library snippet runs as written and learns."""

import pathlib
import re

import jax
import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _snippet() -> str:
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
  assert len(blocks) == 1, "the README has one Python snippet"
  return blocks[0]


def test_the_readme_snippet_trains_with_oja():
  if not README.exists():
    pytest.skip("no checkout beside the tests")
  scope = {}
  exec(compile(_snippet(), str(README), "exec"), scope)  # pylint: disable=exec-used
  params, opt_state, step = scope["params"], scope["opt_state"], scope["step"]
  rng = np.random.default_rng(0)
  x_BxD = rng.normal(size=(1, 784)).astype(np.float32)
  y_B = np.array([3])
  new_params, _ = step(params, opt_state, x_BxD, y_B)
  # Independently: the SGD step (lr 0.01) plus Oja's term (eta 0.001),
  # eta * (x - K y) y^T at each kernel, from the model's own activity.
  model, optax = scope["model"], scope["optax"]

  def loss_fn(p):
    logits, acts = model.apply({"params": p}, x_BxD)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, y_B).mean(), acts
  grads, acts = jax.grad(loss_fn, has_aux=True)(params)
  for layer, p in params.items():
    kernel_IxO = np.asarray(p["kernel"], np.float64)
    x_I = np.asarray(acts[layer]["kernel"].pre, np.float64)[0]
    y_O = np.asarray(acts[layer]["kernel"].post, np.float64)[0]
    oja_IxO = np.outer(x_I - kernel_IxO @ y_O, y_O)
    expected = (kernel_IxO - 0.01 * np.asarray(grads[layer]["kernel"])
                + 0.001 * oja_IxO)
    np.testing.assert_allclose(new_params[layer]["kernel"], expected,
                               rtol=1e-5, atol=1e-6)
    assert np.abs(0.001 * oja_IxO).max() > 1e-6  # The Oja term is there.


def test_the_readme_snippet_takes_the_fused_step():
  """Its model and optimizer, given to the library's loop, run fused (the
  fast path is not reserved for the experiment harness)."""
  if not README.exists():
    pytest.skip("no checkout beside the tests")
  from ojax import fused  # pylint: disable=g-import-not-at-top
  from ojax import train  # pylint: disable=g-import-not-at-top
  scope = {}
  exec(compile(_snippet(), str(README), "exec"), scope)  # pylint: disable=exec-used
  task = train.classifier_task(scope["model"], scope["tx"])
  assert isinstance(task.step, fused.FusedStep)

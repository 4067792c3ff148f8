"""The benchmark's implementations compute the same update.

``make bench`` compares ojax with a per-sample PyTorch loop; a speed ratio
means something only if they train the same network the same way. This
trains three independent implementations from one initialization on one
sample order (a small network; the bench itself checks 100 samples of the
benchmark networks): PyTorch (``benchmarks/torch_ref.py``: weights (out, in),
hand-written backprop, in-place rank-1 updates), ojax's generic step
(autodiff + the ``ojax.oja`` optax transform) and ojax's fused step
(``ojax.fused``: kernels transposed inside a chunk, one update pass).
"""

import argparse

import pytest

pytest.importorskip("torch")

from benchmarks import worker  # pylint: disable=g-import-not-at-top

ARCH = "784-48-32-10"
SAMPLES = 30


def test_pytorch_and_both_ojax_steps_reach_the_same_weights(tmp_path):
  problem = str(tmp_path / "problem.npz")
  worker.mode_prep(argparse.Namespace(arch=ARCH, samples=SAMPLES,
                                      out=problem))
  result = worker.mode_equivalence(argparse.Namespace(
      arch=ARCH, problem=problem, samples=SAMPLES))
  for rule in ("bp_oja", "sgd"):
    for path in ("fused", "generic"):
      assert result[f"{rule}_{path}_vs_torch"] < 1e-5, result
  # The comparison has teeth: the Oja term alone moves the weights far more.
  assert result["oja_term_effect"] > 1e-2, result

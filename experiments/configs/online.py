"""online: online (batch 1) learning, plain SGD backprop vs BP + Oja.

  make experiment NAME=online

The reference network (784-170-130-100-70-10, softplus beta=10, no biases,
Xavier-uniform) and a wider one (4 x 512), trained one sample at a time for
three passes over the training set (12,000 samples). The curve at 4,000
samples is the one-pass result (seeds see the same first epoch in every arm).
Online accuracy scores each sample before it is learned. Oja acts on every
layer (``bp_oja``, the reference formulation) or on hidden layers only
(``bp_oja_hidden``). Rates: docs/tuning.md (validation split, never test).
"""

import ml_collections

from experiments.configs import base

# Chosen on the validation split (docs/tuning.md, study "reference"). The
# Oja rate is the grid's smallest (1e-5): validation prefers Oja -> 0 here,
# as the landscape experiment shows over the whole (lr, Oja rate) plane.
BP_LR = 0.01
OJA = {"lr": 0.03, "oja_lr": 1e-5}
OJA_HIDDEN = {"lr": 0.03, "oja_lr": 1e-5}

# The test size (tests and `make results ARGS=--quick`): every code path
# (Oja on all layers and on hidden ones), a few seconds of compute.
QUICK_ARGS = ["--config.seeds=2", "--config.num_samples=200",
              "--config.eval_every=100",
              "--config.axis_values=((16,),(24,16))",
              "--config.select_arms=bp,bp_oja_hidden"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "online"
  c.seeds = base.VERDICT_SEEDS
  c.split_per_seed = True  # Every seed on its own train/test split.
  c.num_samples = 12000
  c.eval_every = 500
  c.axis = "model.hidden"
  c.axis_values = ((170, 130, 100, 70), (512, 512, 512, 512))
  c.arms = ml_collections.ConfigDict({
      "bp": {"lr": BP_LR, "oja_lr": 0.0},
      "bp_oja": {**OJA, "oja_layers": "all"},
      "bp_oja_hidden": {**OJA_HIDDEN, "oja_layers": "hidden"},
  })
  c.claim = base.claim(
      "Under online (batch-1) learning, adding Oja's rule to backprop "
      "improves on plain backprop, for the reference network and a wider "
      "one, over one pass and several passes.",
      "both widths, after 1 pass and at the end", "bp_oja", "bp",
      secondary=("bp_oja_hidden",), at_passes=(1,), at_end=True)
  return c

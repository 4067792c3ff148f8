"""deep_online: online (batch 1) learning of deep MLPs, BP vs BP + Oja.

  make experiment NAME=deep_online

Accuracy against depth: hidden layers of equal width 100, trained one sample
at a time for three passes over the training set (the claim is tested after
the first pass and at the end), plain backprop (SGD) against backprop plus
Oja's rule on every layer (``bp_oja``) or on hidden layers only
(``bp_oja_hidden``), paired seeds. Xavier-uniform init (gain 1) as in the
reference; to tell depth from initialization apart, BP and BP + Oja also run
from He-normal and orthogonal init (``*_he``, ``*_orthogonal``), each with
rates tuned at depth 20 with that init. Rates: docs/tuning.md (validation
split), studies "deep" (depth 10, Xavier) and "deep_init" (depth 20).
"""

import ml_collections

from experiments.configs import base

# Chosen on the validation split at depth 10 (docs/tuning.md, study "deep").
BP_LR = 0.03
OJA = {"lr": 0.003, "oja_lr": 0.003}
OJA_HIDDEN = {"lr": 0.003, "oja_lr": 0.003}
# Chosen on the validation split at depth 20 (study "deep_init").
INIT_RATES = {
    "bp_he": {"lr": 0.003, "oja_lr": 0.0},
    "bp_oja_he": {"lr": 0.001, "oja_lr": 0.0003},
    "bp_orthogonal": {"lr": 0.01, "oja_lr": 0.0},
    "bp_oja_orthogonal": {"lr": 0.003, "oja_lr": 0.003},
}
PASSES = 3
DEEP = 10  # The claim counts depths >= DEEP.

# The test size (tests and `make results ARGS=--quick`).
QUICK_ARGS = ["--config.seeds=2", "--config.num_samples=200",
              "--config.eval_every=100", "--config.axis_values=(1,3)",
              "--config.model.width=16",
              "--config.select_arms=bp,bp_oja,bp_he,bp_oja_he"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "deep_online"
  c.seeds = base.VERDICT_SEEDS
  c.split_per_seed = True  # Every seed on its own train/test split.
  c.num_samples = PASSES * 4000
  c.eval_every = 1000
  c.model.width = 100
  c.model.depth = 2
  c.axis = "model.depth"
  c.axis_values = (2, 5, 10, 20, 30)
  c.arms = ml_collections.ConfigDict({
      "bp": {"lr": BP_LR, "oja_lr": 0.0},
      "bp_oja": {**OJA, "oja_layers": "all"},
      "bp_oja_hidden": {**OJA_HIDDEN, "oja_layers": "hidden"},
      **{arm: {**rates, "oja_layers": "all",
               "model": {"kernel_init": arm.split("_")[-1]}}
         for arm, rates in INIT_RATES.items()},
  })
  c.claim = base.claim(
      "In deep networks trained online, Oja's rule lets backprop learn "
      "where plain backprop does poorly (accuracy against depth); the "
      "good-init arms tell whether this is a rescue from depth or from "
      "Xavier initialization.",
      f"depth >= {DEEP} hidden layers, after 1 pass and after {PASSES}, "
      "Xavier init", "bp_oja", "bp", secondary=("bp_oja_hidden",),
      at_passes=(1,), at_end=True, axis_min=DEEP,
      good_inits=("he", "orthogonal"), layer_depths=(10, 20))
  return c

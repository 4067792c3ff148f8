"""deep_online: online (batch 1) learning of deep MLPs, BP vs BP + Oja.

  make experiment NAME=deep_online

Accuracy against depth: hidden layers of equal width 100, trained one sample
at a time for one pass over the training set, plain backprop (SGD) against
backprop plus Oja's rule on every layer (``bp_oja``) or on hidden layers only
(``bp_oja_hidden``), paired seeds. Rates tuned at depth 10 on a validation
split (docs/tuning.md).
"""

import ml_collections

from experiments.configs import base

# Chosen on the validation split at depth 10 (docs/tuning.md, study "deep").
BP_LR = 0.03
OJA = {"lr": 0.003, "oja_lr": 0.003}
OJA_HIDDEN = {"lr": 0.003, "oja_lr": 0.003}

QUICK_ARGS = ["--config.seeds=2", "--config.num_samples=200",
              "--config.eval_every=100", "--config.axis_values=(2,3)"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "deep_online"
  c.seeds = 10  # The verdict rule needs 10 (experiments.analysis).
  c.model.width = 100
  c.model.depth = 2
  c.axis = "model.depth"
  c.axis_values = (2, 5, 10, 20, 30)
  c.arms = ml_collections.ConfigDict({
      "bp": {"lr": BP_LR, "oja_lr": 0.0},
      "bp_oja": {**OJA, "oja_layers": "all"},
      "bp_oja_hidden": {**OJA_HIDDEN, "oja_layers": "hidden"},
  })
  return c

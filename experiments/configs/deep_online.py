"""deep_online: online (batch 1) learning of deep MLPs, BP vs BP + Oja.

Accuracy against depth: hidden layers of equal width, trained one sample at a
time for one pass over the training set, plain backprop (SGD) against backprop
plus Oja's rule, paired seeds.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "deep_online"
  c.model.width = 100
  c.model.depth = 2
  c.axis = "model.depth"
  c.axis_values = (2, 5, 10, 20)
  c.arms = ml_collections.ConfigDict({
      "bp": {"oja_lr": 0.0},
      "bp_oja": {"oja_lr": 0.003},
  })
  return c

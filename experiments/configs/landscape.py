"""landscape: test accuracy over the whole (lr, Oja rate) plane (a map).

  make experiment NAME=landscape

A descriptive map, with no verdict: test accuracy over a grid of SGD rates x
Oja rates (Oja rate 0 is plain BP at the same lr) for the reference network
(784-170-130-100-70-10, ``model.depth=0``) and ten hidden layers of width 100
(``model.depth=10``), trained online for three passes and evaluated every
1,000 samples, 5 seeds, each on its own split. It shows how each rule's
accuracy depends on its rates and on the budget. Rates are *not* chosen
here (that would be choosing on test data): the verdicts on these networks,
each arm at its validation-chosen point per budget, are online's (the
reference network) and deep_online's (depth 10).
"""

import ml_collections

from experiments.configs import base

LRS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
OJA_LRS = (0.0, 1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
PASSES = 3
# The test size (tests and `make results ARGS=--quick`).
QUICK_ARGS = ["--config.seeds=2", "--config.axis_values=(1,)",
              "--config.model.width=16", "--config.passes=0.1",
              "--config.eval_every=100", "--config.sweep.lr=(0.01,0.1)",
              "--config.sweep.oja_lr=(0.0,0.001,0.01)"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "landscape"
  c.seeds = 5
  c.passes = PASSES
  c.eval_every = 1000
  c.axis = "model.depth"
  c.axis_values = (0, 10)
  c.sweep.lr = LRS
  c.sweep.oja_lr = OJA_LRS
  c.split_per_seed = True  # Every seed on its own train/test split.
  c.claim = None  # A map: no verdict (see the docstring).
  return c

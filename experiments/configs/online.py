"""online: online (batch 1) learning, plain SGD backprop vs BP + Oja.

  make experiment NAME=online

The reference network (784-170-130-100-70-10, softplus beta=10, no biases,
Xavier-uniform) and a wider one (4 x 256), trained one sample at a time for
three passes over the training set; the claim is tested after one pass and
at the end. Oja acts on every layer (``bp_oja``, the reference formulation);
``bp_norm`` is BP with each unit's incoming weights projected to unit norm
after every step, the non-plastic control for "Oja just keeps the scale".

Every arm is tuned the same way (``tune``, ``experiments.tuned``): its own
grid on 4 tuning seeds, 1,000 validation digits held out of each seed's
training data, chosen separately for each width and budget (1 pass, 3
passes), then compared on the 12 verdict seeds' test sets.
"""

import ml_collections

from experiments.configs import base

LRS = (0.003, 0.01, 0.03, 0.1, 0.3)
# Validation chose the grid's smallest Oja rate here before (1e-5): the
# grid reaches a decade below it.
OJA_LRS = (1e-6, 1e-5, 1e-4, 1e-3)
PASSES = 3

# The test size (tests and `make results ARGS=--quick`).
QUICK_ARGS = ["--config.seeds=2", "--config.tuning_seeds=2",
              "--config.passes=0.1", "--config.eval_every=100",
              "--config.axis_values=((16,),(24,16))",
              "--config.arms.bp.sweep.lr=(0.01,0.1)",
              "--config.arms.bp_oja.sweep.lr=(0.01,)",
              "--config.arms.bp_oja.sweep.oja_lr=(0.001,0.01)",
              "--config.arms.bp_norm.sweep.lr=(0.1,)"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "online"
  c.seeds = base.VERDICT_SEEDS
  c.split_per_seed = True  # Every seed on its own train/test split.
  c.tune = True
  c.passes = PASSES
  c.eval_every = 500
  c.axis = "model.hidden"
  c.axis_values = ((170, 130, 100, 70), (256, 256, 256, 256))
  c.arms = ml_collections.ConfigDict({
      "bp": {"oja_lr": 0.0, "sweep": {"lr": LRS}},
      "bp_oja": {"oja_layers": "all", "sweep": {"lr": LRS,
                                                 "oja_lr": OJA_LRS}},
      "bp_norm": {"oja_lr": 0.0, "oja_layers": "all", "unit_norm": True,
                  "sweep": {"lr": LRS}},
  })
  c.claim = base.claim(
      "Under online (batch-1) learning, adding Oja's rule to backprop "
      "improves on plain backprop, for the reference network and a wider "
      "one, over one pass and several passes.",
      "both widths, after 1 pass and at the end, each arm at its "
      "validation-chosen rates for that width and budget", "bp_oja", "bp",
      at_passes=(1,), at_end=True, controls=("bp_norm",))
  return c

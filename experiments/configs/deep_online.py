"""deep_online: online (batch 1) learning of deep MLPs, BP vs BP + Oja.

  make experiment NAME=deep_online

Accuracy against depth: hidden layers of equal width 100, trained one sample
at a time for three passes over the training set (the claim is tested after
the first pass and at the end), plain backprop (SGD) against backprop plus
Oja's rule on every layer (``bp_oja``), Xavier-uniform init (gain 1) as in
the reference. Two non-plastic controls for "Oja just keeps the scale":
``bp_norm``, BP with each unit's incoming weight vector projected to unit
norm after every step (the part of Oja's fixed point, orthonormal columns,
that keeps scale), and ``bp_he``, BP from He-normal init.

Every arm is tuned the same way (``tune``, ``experiments.tuned``): it sweeps
its own grid (lr; and the Oja rate for the Oja arms) on 4 tuning seeds of
their own, with 1,000 validation digits held out of each seed's training
data, and at every depth and budget (1 pass, 3 passes: chosen separately)
each arm is compared on the 12 verdict seeds' test sets at its own best
validation point. The grids reach past every point the earlier runs chose.
"""

import ml_collections

from experiments.configs import base

LRS = (3e-4, 0.001, 0.003, 0.01, 0.03, 0.1)
OJA_LRS = (1e-4, 3e-4, 0.001, 0.003, 0.01)
PASSES = 3
DEEP = 10  # The claim counts depths >= DEEP.

# The test size (tests and `make results ARGS=--quick`): every arm, two
# depths, half a pass per budget point.
QUICK_ARGS = ["--config.seeds=2", "--config.tuning_seeds=2",
              "--config.passes=0.1", "--config.eval_every=100",
              "--config.axis_values=(1,3)", "--config.model.width=16",
              "--config.arms.bp.sweep.lr=(0.01,0.1)",
              "--config.arms.bp_oja.sweep.lr=(0.01,)",
              "--config.arms.bp_oja.sweep.oja_lr=(0.001,0.01)",
              "--config.arms.bp_norm.sweep.lr=(0.1,)",
              "--config.arms.bp_he.sweep.lr=(0.01,)"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "deep_online"
  c.seeds = base.VERDICT_SEEDS
  c.split_per_seed = True  # Every seed on its own train/test split.
  c.tune = True
  c.passes = PASSES
  c.eval_every = 1000
  c.model.width = 100
  c.model.depth = 2
  c.axis = "model.depth"
  c.axis_values = (2, 5, 10, 20, 30)
  he = {"model": {"kernel_init": "he"}}
  c.arms = ml_collections.ConfigDict({
      "bp": {"oja_lr": 0.0, "sweep": {"lr": LRS}},
      "bp_oja": {"oja_layers": "all", "sweep": {"lr": LRS,
                                                 "oja_lr": OJA_LRS}},
      "bp_norm": {"oja_lr": 0.0, "oja_layers": "all", "unit_norm": True,
                  "sweep": {"lr": LRS}},
      "bp_he": {"oja_lr": 0.0, "sweep": {"lr": LRS}, **he},
  })
  c.claim = base.claim(
      "In deep networks trained online, Oja's rule lets backprop learn "
      "where plain backprop does poorly (accuracy against depth).",
      f"depth >= {DEEP} hidden layers, after 1 pass and after {PASSES}, "
      "Xavier init, each arm at its validation-chosen rates for that depth "
      "and budget", "bp_oja", "bp", at_passes=(1,), at_end=True,
      axis_min=DEEP, controls=("bp_norm", "bp_he"))
  return c

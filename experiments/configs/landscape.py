"""landscape: BP + Oja over the whole (lr, Oja rate) plane, 1 and 3 passes.

  make experiment NAME=landscape

The online and deep_online verdicts rest on one operating point each. This
experiment maps test accuracy over a grid of SGD rates x Oja rates (Oja rate
0 is plain BP at the same lr: every point has its paired baseline), for the
reference network (784-170-130-100-70-10, ``model.depth=0``) and ten hidden
layers of width 100 (``model.depth=10``), after one pass and after three.
Arm ``val`` trains on 3,000 samples and evaluates on the 1,000 held out
(``validation=1000``): it chooses each rule's operating point. Arm ``test``
trains on all 4,000 and evaluates on the test set: it reports the chosen
points and the maps. Early learning is measured too: online accuracy over
the first pass and the area under the test-accuracy curve.
"""

import ml_collections

from experiments.configs import base

# Extended after the first runs chose edges: Oja 1e-5 on the reference net
# (now down to 1e-6), Oja 3e-3 and lr 1e-3 at depth 10 (now 1e-2 and 3e-4).
LRS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
OJA_LRS = (0.0, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
PASSES = 3
# The test size (tests and `make results ARGS=--quick`). The claim is after
# 1 and 3 passes, so on digits (one pass: 1,437 training samples; 479 on the
# validation arm, which holds 958 out), where passes are short.
QUICK_ARGS = ["--config.seeds=2", "--config.axis_values=(1,)",
              "--config.model.width=16", "--config.dataset=digits",
              "--config.eval_every=479", "--config.arms.val.validation=958",
              f"--config.arms.val.num_samples={PASSES * 479}",
              f"--config.arms.test.num_samples={PASSES * 1437}",
              "--config.sweep.lr=(0.01,0.1)",
              "--config.sweep.oja_lr=(0.0,0.001,0.01)"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "landscape"
  c.seeds = base.VERDICT_SEEDS
  c.eval_every = 1000
  c.axis = "model.depth"
  c.axis_values = (0, 10)
  c.sweep.lr = LRS
  c.sweep.oja_lr = OJA_LRS
  c.reference_arm = "test"
  c.split_per_seed = True  # Every seed on its own train/test split.
  c.arms = ml_collections.ConfigDict({
      "val": {"validation": 1000, "num_samples": PASSES * 3000},
      "test": {"validation": 0, "num_samples": PASSES * 4000},
  })
  c.claim = base.claim(
      "Adding Oja's rule to online backprop improves test accuracy "
      "(reference network and 10 hidden layers), each rule at its best "
      "operating point.", f"each network after 1 and {PASSES} passes, each "
      "rule at its validation-chosen (lr, Oja rate)", "bp_oja", "bp",
      at_passes=(1, PASSES), at_end=False, chosen_on="val",
      tested_on="test")
  return c

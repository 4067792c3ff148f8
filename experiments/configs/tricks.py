"""tricks: can Oja's rule stand in for the engineering tricks?

  make experiment NAME=tricks

Twenty hidden layers of width 100 (Xavier init), one pass over the training
set (4,000 samples) in every arm. The tricks, each on plain BP: mini-batches
of 16 (16x fewer updates for the same samples), LayerNorm before each hidden
nonlinearity, Adam, He-normal init, orthogonal init. The claim as
substitution: online BP + Oja with no trick (``bp_oja``) against each trick,
a non-inferiority test with margin ``MARGIN`` (BP + Oja counts as a
substitute when its accuracy is significantly above the trick's minus the
margin); and each trick with Oja added (``<trick>_oja``) against the trick
alone, reported beside. ``bp_norm`` (unit-norm incoming weights after every
step) is the non-plastic control of the second verdict line.

Every arm is tuned the same way (``tune``, ``experiments.tuned``): its own
grid on 4 tuning seeds with 1,000 validation digits held out of each seed's
training data, then compared on the 12 verdict seeds' test sets.
"""

import ml_collections

from experiments.configs import base

DEPTH = 20
MARGIN = 0.02  # Non-inferiority margin, in test accuracy.
LRS = (1e-5, 1e-4, 3e-4, 0.001, 0.003, 0.01, 0.03, 0.1)
OJA_LRS = (1e-4, 3e-4, 0.001, 0.003, 0.01)
TRICKS = {
    "bp_batch16": {"batch_size": 16},
    "bp_layernorm": {"model": {"layer_norm": True}},
    "bp_adam": {"optimizer": "adam"},
    "bp_he": {"model": {"kernel_init": "he"}},
    "bp_orthogonal": {"model": {"kernel_init": "orthogonal"}},
}
# A trick with Oja added tries the trick's lr range (LRS) at decade steps:
# with 1e-4..1e-2 alone, Adam + Oja chose the low edge and LayerNorm and
# orthogonal init + Oja the high one (the first tuned run, issue 19).
TRICK_OJA_LRS = (1e-5, 1e-4, 0.001, 0.01, 0.1)

# The test size (tests and `make results ARGS=--quick`): each trick once.
QUICK_ARGS = ["--config.seeds=2", "--config.tuning_seeds=2",
              "--config.passes=0.08", "--config.eval_every=160",
              "--config.model.depth=2", "--config.model.width=16",
              "--config.select_arms=bp,bp_oja,bp_norm,bp_batch16,"
              "bp_batch16_oja,bp_adam"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "tricks"
  c.seeds = base.VERDICT_SEEDS
  c.split_per_seed = True  # Every seed on its own train/test split.
  c.tune = True
  c.passes = 1
  c.eval_every = 400  # A multiple of every arm's batch size (and the end).
  c.model.depth = DEPTH
  c.model.width = 100
  arms = {
      "bp": {"oja_lr": 0.0, "sweep": {"lr": LRS}},
      "bp_oja": {"oja_layers": "all",
                 "sweep": {"lr": LRS, "oja_lr": OJA_LRS}},
      "bp_norm": {"oja_lr": 0.0, "oja_layers": "all", "unit_norm": True,
                  "sweep": {"lr": LRS}},
  }
  for trick, o in TRICKS.items():
    arms[trick] = {**o, "oja_lr": 0.0, "sweep": {"lr": LRS}}
    arms[f"{trick}_oja"] = {**o, "oja_layers": "all", "sweep": {
        "lr": TRICK_OJA_LRS, "oja_lr": OJA_LRS}}
  c.arms = ml_collections.ConfigDict(arms)
  c.claim = base.claim(
      "Online backprop plus Oja's rule, with no engineering tricks, can "
      "stand in for mini-batches, LayerNorm, Adam or a well-chosen init "
      f"({DEPTH} hidden layers, one pass).",
      f"bp_oja against each trick at depth {DEPTH}, non-inferiority with "
      f"margin {MARGIN:g} in test accuracy, each arm at its "
      "validation-chosen rates", "bp_oja", "bp", versus=tuple(TRICKS),
      margin=MARGIN, pairs=tuple((f"{t}_oja", t) for t in TRICKS),
      at_end=True, controls=("bp_norm",))
  return c

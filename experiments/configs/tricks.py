"""tricks: how much of each engineering trick's benefit Oja recovers.

  make experiment NAME=tricks

The reference network, 4,000 training samples (one pass) in every arm:
online plain BP (``bp``), online BP + Oja with no tricks (``bp_oja``,
``bp_oja_hidden``), and BP with one trick each: mini-batches of 16 (so 16x
fewer updates for the same samples), LayerNorm before each hidden
nonlinearity, Adam, He-normal init, orthogonal init. Every arm has its own
validation-tuned learning rate (docs/tuning.md). Recovered fraction of a
trick = (acc(bp_oja) - acc(bp)) / (acc(trick) - acc(bp)), paired over seeds.
"""

import ml_collections

from experiments.configs import base
from experiments.configs import online

# Chosen on the validation split (docs/tuning.md, study "reference").
TRICK_LRS = {"batch16": 0.1, "layernorm": 0.003, "adam": 0.0003, "he": 0.003,
             "orthogonal": 0.01}
TRICKS = {
    "bp_batch16": {"batch_size": 16, "lr": TRICK_LRS["batch16"]},
    "bp_layernorm": {"model": {"layer_norm": True},
                     "lr": TRICK_LRS["layernorm"]},
    "bp_adam": {"optimizer": "adam", "lr": TRICK_LRS["adam"]},
    "bp_he": {"model": {"kernel_init": "he"}, "lr": TRICK_LRS["he"]},
    "bp_orthogonal": {"model": {"kernel_init": "orthogonal"},
                      "lr": TRICK_LRS["orthogonal"]},
}

QUICK_ARGS = ["--config.seeds=2", "--config.num_samples=320",
              "--config.eval_every=160"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "tricks"
  c.seeds = 10
  c.num_samples = 4000
  c.eval_every = 400  # A multiple of every arm's batch size.
  arms = {
      "bp": {"lr": online.BP_LR, "oja_lr": 0.0},
      "bp_oja": {**online.OJA, "oja_layers": "all"},
      "bp_oja_hidden": {**online.OJA_HIDDEN, "oja_layers": "hidden"},
  }
  arms.update({k: {**v, "oja_lr": 0.0} for k, v in TRICKS.items()})
  c.arms = ml_collections.ConfigDict(arms)
  return c

"""tricks: how much of each engineering trick's benefit Oja recovers.

  make experiment NAME=tricks

Twenty hidden layers of width 100 (Xavier init), 4,000 training samples (one
pass) in every arm: online plain BP (``bp``), online BP + Oja with no tricks
(``bp_oja``, ``bp_oja_hidden``), and BP with one trick each: mini-batches of
16 (so 16x fewer updates for the same samples), LayerNorm before each hidden
nonlinearity, Adam, He-normal init, orthogonal init. On the reference network
the tricks gained nothing over tuned online BP, so the recovered fraction was
undefined there; at depth 20 online BP stays at chance and the tricks can
gain. Every arm has its own learning rate chosen on the validation split at
depth 20 (docs/tuning.md, studies "deep20" and "deep_init"). Recovered
fraction of a trick = (acc(bp_oja) - acc(bp)) / (acc(trick) - acc(bp)),
paired over seeds; every seed on its own train/test split.
"""

import ml_collections

from experiments.configs import base
from experiments.configs import deep_online

DEPTH = 20
# Chosen on the validation split at depth 20 (docs/tuning.md, study
# "deep20"; He and orthogonal: study "deep_init"). BP and mini-batch BP stay
# at chance at every rate tried (their choice is a tie at chance).
DEPTH20_RATES = {
    "bp": {"lr": 0.03, "oja_lr": 0.0},
    "bp_oja": {"lr": 0.003, "oja_lr": 0.003},
    "bp_oja_hidden": {"lr": 0.001, "oja_lr": 0.01},
    "bp_batch16": {"lr": 3e-05},
    "bp_layernorm": {"lr": 0.0003},
    "bp_adam": {"lr": 0.0003},
    "bp_he": {"lr": deep_online.INIT_RATES["bp_he"]["lr"]},
    "bp_orthogonal": {"lr": deep_online.INIT_RATES["bp_orthogonal"]["lr"]},
}
TRICKS = {
    "bp_batch16": {"batch_size": 16},
    "bp_layernorm": {"model": {"layer_norm": True}},
    "bp_adam": {"optimizer": "adam"},
    "bp_he": {"model": {"kernel_init": "he"}},
    "bp_orthogonal": {"model": {"kernel_init": "orthogonal"}},
}

# The test size (tests and `make results ARGS=--quick`): each trick once.
QUICK_ARGS = ["--config.seeds=2", "--config.num_samples=320",
              "--config.eval_every=160", "--config.model.depth=2",
              "--config.model.width=16",
              "--config.select_arms=bp,bp_oja,bp_batch16,bp_layernorm,"
              "bp_adam"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "tricks"
  c.seeds = base.VERDICT_SEEDS
  c.split_per_seed = True  # Every seed on its own train/test split.
  c.num_samples = 4000
  c.eval_every = 400  # A multiple of every arm's batch size.
  c.model.depth = DEPTH
  c.model.width = 100
  arms = {
      "bp": DEPTH20_RATES["bp"],
      "bp_oja": {**DEPTH20_RATES["bp_oja"], "oja_layers": "all"},
      "bp_oja_hidden": {**DEPTH20_RATES["bp_oja_hidden"],
                        "oja_layers": "hidden"},
  }
  arms.update({k: {**v, **DEPTH20_RATES[k], "oja_lr": 0.0}
               for k, v in TRICKS.items()})
  c.arms = ml_collections.ConfigDict(arms)
  c.claim = base.claim(
      "Online backprop plus Oja's rule, with no engineering tricks, "
      "recovers part of the gain that mini-batches, LayerNorm, Adam or a "
      f"well-chosen init give plain online backprop ({DEPTH} hidden layers, "
      "where the tricks gain).",
      f"bp_oja vs bp at depth {DEPTH} (the recovered fractions are in the "
      "table)", "bp_oja", "bp", secondary=("bp_oja_hidden",),
      beside=tuple(TRICKS), at_end=True)
  return c

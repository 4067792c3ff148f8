"""recurrent_memory: short-term memory of a vanilla RNN, BPTT vs BPTT + Oja.

  make experiment NAME=recurrent_memory

A tanh RNN (64 units, scalar input, linear readout of 40 delays) learns to
recall a random stream ``u_t ~ U(-1, 1)`` from k = 1..40 steps back, trained by
BPTT with plain SGD on fresh 60-step sequences (8 per step), at initial
spectral radii too small (0.5), about 1 and too large (1.5) (the axis), at two
SGD rates (a vmapped sweep). Arms: bp (SGD only), bp_oja (Oja's rule on W_rec,
pre h_{t-1} / post h_t, and on W_in: the claim's test), and two attribution
arms with Oja on W_rec only (bp_oja_rec) or W_in only (bp_oja_in). Seeds are
paired: seed s has the same initialization and data in every arm.
"""

import ml_collections

from experiments.configs import base

OJA_LR = 0.003
QUICK_ARGS = ["--config.seeds=2", "--config.num_samples=320",
              "--config.eval_every=160", "--config.model.hidden=16",
              "--config.memory.delays=5", "--config.memory.length=20",
              "--config.memory.eval_length=60", "--config.axis_values=(1.0,)"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_memory_base_config()
  c.experiment = "recurrent_memory"
  c.seeds = base.VERDICT_SEEDS
  c.num_samples = 8000  # 1,000 BPTT steps of 8 sequences
  c.eval_every = 800
  c.axis = "model.radius"
  c.axis_values = (0.5, 1.0, 1.5)
  c.sweep.lr = (0.1, 0.5)
  c.arms = ml_collections.ConfigDict({
      "bp": {"oja_lr": 0.0},
      "bp_oja": {"oja_lr": OJA_LR, "oja_layers": "W_rec,W_in"},
      "bp_oja_rec": {"oja_lr": OJA_LR, "oja_layers": "W_rec"},
      "bp_oja_in": {"oja_lr": OJA_LR, "oja_layers": "W_in"},
  })
  # The attribution arms (Oja on one matrix) are reported, in the family.
  c.claim = base.claim(
      "Oja's rule improves the short-term memory (memory capacity) of "
      "recurrent networks trained by backpropagation through time.",
      "bp_oja vs bp at every (initial radius, SGD rate)", "bp_oja", "bp",
      secondary=("bp_oja_rec", "bp_oja_in"), metric="memory_capacity",
      at_end=True)
  return c

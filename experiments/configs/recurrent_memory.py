"""recurrent_memory: short-term memory of a vanilla RNN, BPTT vs BPTT + Oja.

A tanh RNN (64 units, scalar input, linear readout of 40 delays) learns to
recall a random stream ``u_t ~ U(-1, 1)`` from k = 1..40 steps back, trained by
BPTT with plain SGD on fresh 60-step sequences (8 per step), at initial
spectral radii too small (0.5), about 1 and too large (1.5), at two SGD rates.
Arms: bp (SGD only), bp_oja (Oja's rule on W_rec, pre h_{t-1} / post h_t, and
on W_in: the claim's test), and two attribution arms with Oja on W_rec only
(bp_oja_rec) or W_in only (bp_oja_in). Seeds are paired: seed s has the same
initialization and data in every arm.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "recurrent_memory"
  c.runner = "recurrent_memory"
  c.seed = 0
  c.seeds = 5
  # Model: h_t = f(x_t W_in + h_{t-1} W_rec), o_t = h_t W_out + b_out.
  c.hidden = 64
  c.activation = "tanh"  # tanh | softplus
  c.input_scale = 1.0
  c.delays = 40  # K: readout unit k recalls u_{t-k}.
  # Training: BPTT, plain SGD (+ Oja), fresh sequences every step.
  c.steps = 1000
  c.eval_every = 100
  c.batch = 8
  c.length = 60
  c.radii = (0.5, 1.0, 1.5)  # initial spectral radius of W_rec
  c.lrs = (0.1, 0.5)  # SGD rates; every arm runs at each
  c.oja_lr = 0.003  # Oja rate of the arms that use it
  c.arms = ("bp", "bp_oja", "bp_oja_rec", "bp_oja_in")  # bp, bp_oja required
  # Held-out evaluation streams (the same for every run).
  c.eval_batch = 8
  c.eval_length = 400
  return c

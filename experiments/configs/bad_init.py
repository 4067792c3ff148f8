"""bad_init: online learning from badly scaled initializations.

  make experiment NAME=bad_init

The reference network trained online for one pass, with every initial kernel
multiplied by a gain from 0.1 to 3, for three init schemes (the axis):
Xavier-uniform (the reference), He-normal and LeCun-normal. Arms: BP
(``bp``), BP + Oja on all layers (``bp_oja``) and the non-plastic control
``bp_norm`` (each unit's incoming weights projected to unit norm after every
step, which undoes any gain at the first step: the control for "Oja just
keeps the scale"); BP from He-normal init at gain 1 (the standard good init,
tuned there) is the second control at every setting.

Every arm is tuned at every (scheme, gain) the same way (``tune``,
``experiments.tuned``): its grid (lr x gain, and the Oja rate for
``bp_oja``) runs on 4 tuning seeds of their own with 1,000 validation digits
held out of each seed's training data; each arm is then compared on the 12
verdict seeds' test sets at its own best validation point for that setting.
The grid is the one the earlier runs extended until every choice was
interior (lr 1e-4 .. 1, Oja rate 1e-5 .. 3e-2), except where BP is at
chance at every lr.
"""

import ml_collections

from experiments.configs import base

GAINS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0)
LRS = (1e-4, 3e-4, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
OJA_LRS = (1e-5, 1e-4, 1e-3, 1e-2, 3e-2)
PASSES = 1
# The claim counts the gains far from 1: <= BAD_BELOW or >= BAD_ABOVE.
BAD_BELOW, BAD_ABOVE = 0.5, 2.0
BAD_GAINS = tuple(g for g in GAINS if g <= BAD_BELOW or g >= BAD_ABOVE)

# The test size (tests and `make results ARGS=--quick`).
QUICK_ARGS = ["--config.seeds=2", "--config.tuning_seeds=2",
              "--config.passes=0.1", "--config.eval_every=100",
              "--config.model.hidden=(16,)",
              "--config.axis_values=('xavier_uniform',)",
              "--config.sweep.model_gain=(0.1,1.0)",
              "--config.arms.bp.sweep.lr=(0.01,)",
              "--config.arms.bp_oja.sweep.lr=(0.01,)",
              "--config.arms.bp_oja.sweep.oja_lr=(0.001,)",
              "--config.arms.bp_norm.sweep.lr=(0.01,)"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "bad_init"
  c.seeds = base.VERDICT_SEEDS
  c.split_per_seed = True
  c.tune = True
  c.passes = PASSES
  c.eval_every = 1000
  c.axis = "model.kernel_init"
  c.axis_values = ("xavier_uniform", "he", "lecun")
  c.sweep.model_gain = GAINS
  c.oja_layers = "all"
  c.arms = ml_collections.ConfigDict({
      "bp": {"oja_lr": 0.0, "sweep": {"lr": LRS}},
      "bp_oja": {"sweep": {"lr": LRS, "oja_lr": OJA_LRS}},
      "bp_norm": {"oja_lr": 0.0, "unit_norm": True, "sweep": {"lr": LRS}},
  })
  c.claim = base.claim(
      "With badly scaled initial weights, backprop plus Oja's rule learns "
      "better than backprop alone, each tuned at the perturbed setting.",
      f"gains {', '.join(f'{g:g}' for g in BAD_GAINS)} for each of three "
      "init schemes, after one pass, each arm at its validation-chosen "
      "rates there", "bp_oja", "bp", at_end=True, gains_below=BAD_BELOW,
      gains_above=BAD_ABOVE, controls=("bp_norm",), control_at=("he", 1.0))
  return c

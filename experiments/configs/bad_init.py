"""bad_init: online learning from badly scaled initializations.

  make experiment NAME=bad_init

The reference network trained online for one pass, with every initial kernel
multiplied by a gain from 0.1 to 3 (vmapped in one compiled call through
``sweep.model_gain``), for three init schemes (the axis): Xavier-uniform (the
reference), He-normal and LeCun-normal. (Orthogonal init hangs under
``jit(vmap(init))`` with JAX 0.10.2 on CPU here, so it is not in the axis.)
BP vs BP + Oja (all layers / hidden only). Rates are those tuned for the
reference network at gain 1 (docs/tuning.md): the init is the perturbation,
the rates are not re-tuned.
"""

import ml_collections

from experiments.configs import base
from experiments.configs import online

GAINS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0)

QUICK_ARGS = ["--config.seeds=2", "--config.num_samples=200",
              "--config.eval_every=100",
              "--config.axis_values=('xavier_uniform','he')",
              "--config.sweep.model_gain=(0.1,1.0,3.0)"]


def get_config() -> ml_collections.ConfigDict:
  c = base.get_base_config()
  c.experiment = "bad_init"
  c.seeds = 10  # x 6 gains = 60 vmapped points per job.
  c.axis = "model.kernel_init"
  c.axis_values = ("xavier_uniform", "he", "lecun")
  c.sweep.model_gain = GAINS
  c.arms = ml_collections.ConfigDict({
      "bp": {"lr": online.BP_LR, "oja_lr": 0.0},
      "bp_oja": {**online.OJA, "oja_layers": "all"},
      "bp_oja_hidden": {**online.OJA_HIDDEN, "oja_layers": "hidden"},
  })
  return c

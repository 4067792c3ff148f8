"""ojax: local plasticity rules for JAX, as optax transforms.

Rules (``ojax.rules``), each an ``optax.GradientTransformationExtraArgs`` whose
``update`` takes ``activations=``, a tree of :class:`ojax.Trace` shaped like
the params:

  ojax.hebb(lr)              Hebb: eta * x y^T
  ojax.oja(lr)               Oja's subspace rule: eta * (x - K y) y^T
  ojax.sanger(lr)            Sanger's GHA: eta * (x y^T - K UT(y y^T))
  ojax.bcm(lr)               BCM, sliding threshold: eta * x (y (y - theta))^T
  ojax.plasticity(c, terms)  sum_i c_i * term_i over ojax.TERMS (meta-learning)
  ojax.with_rule(opt, rule)  opt(grads) + rule terms (rules after the optimizer)
  ojax.sgd_oja(lr, eta)      with_rule(optax.sgd(lr), oja(eta)), rates in its
                             state: "BP + Oja", the fused step's transform

Traces without editing the model (``ojax.traces``): ``ojax.traces.apply``
(Linen), ``ojax.traces.call`` (NNX), ``ojax.traces.conv_patches``.

>>> import ojax
>>> ojax.Trace(pre=1.0, post=2.0)
Trace(pre=1.0, post=2.0, pre_error=None, post_error=None)
"""

from ojax import rules
from ojax import traces
from ojax.rules import bcm
from ojax.rules import bcm_term
from ojax.rules import BCMState
from ojax.rules import hebb
from ojax.rules import hebb_term
from ojax.rules import oja
from ojax.rules import oja_term
from ojax.rules import OjaState
from ojax.rules import plasticity
from ojax.rules import PlasticityRule
from ojax.rules import RuleAccumulator
from ojax.rules import RuleState
from ojax.rules import sanger
from ojax.rules import sanger_term
from ojax.rules import sgd_oja
from ojax.rules import SgdOja
from ojax.rules import Term
from ojax.rules import TERMS
from ojax.rules import Trace
from ojax.rules import with_rule

__all__ = [
  "bcm",
  "bcm_term",
  "BCMState",
  "hebb",
  "hebb_term",
  "oja",
  "oja_term",
  "OjaState",
  "plasticity",
  "PlasticityRule",
  "RuleAccumulator",
  "RuleState",
  "rules",
  "sanger",
  "sanger_term",
  "sgd_oja",
  "SgdOja",
  "Term",
  "TERMS",
  "Trace",
  "traces",
  "with_rule",
]
__version__ = "0.3.0"  # Also the version of the distribution ojax-plasticity.

"""Local plasticity rules as optax gradient transformations.

Each rule is an ``optax.GradientTransformationExtraArgs`` whose ``update``
takes ``activations=``, a tree shaped like ``params`` with an
:class:`ojax.Trace` at each kernel the rule updates, and adds the rule's term
(computed from ``params``, the weights of the forward pass) to that kernel's
update:

===============  ==========================================  ===========================
rule             dK for a kernel K (fan_in, fan_out)         reference
===============  ==========================================  ===========================
``hebb``         ``eta * mean x y^T``                        Hebb 1949
``oja``          ``eta * mean (x - K y) y^T``                Oja 1982, 1989
``sanger``       ``eta * mean (x y^T - K UT(y y^T))``        Sanger 1989
``bcm``          ``eta * mean x (y (y - theta))^T``          Bienenstock et al. 1982
``plasticity``   ``sum_i c_i term_i`` over :data:`TERMS`     Shervani-Tabar & Rosenbaum 2023
===============  ==========================================  ===========================

Put rules after the optimizer with :func:`with_rule`. :func:`sgd_oja` is
the paper's BP + Oja, ``with_rule(optax.sgd(lr), oja(eta))`` with both rates
in its state (:func:`with_rates` sets them per point of a vmapped sweep); it
is what ``ojax.train`` runs with its fused step. See ``docs/rules.md``.

>>> from ojax import rules
>>> sorted(n for n in rules.__all__ if n.islower())[:5]
['bcm', 'bcm_term', 'check_placement', 'hebb', 'hebb_term']
"""  # noqa: E501 (the table's rows do not wrap)

from ojax.rules._bcm import bcm
from ojax.rules._bcm import bcm_term
from ojax.rules._bcm import BCMState
from ojax.rules._combine import check_placement
from ojax.rules._combine import RuleAccumulator
from ojax.rules._combine import sgd_oja
from ojax.rules._combine import SgdOja
from ojax.rules._combine import with_rates
from ojax.rules._combine import with_rule
from ojax.rules._common import LAYOUTS
from ojax.rules._common import NO_PARAMS_MSG
from ojax.rules._common import PlasticityRule
from ojax.rules._common import RuleState
from ojax.rules._common import Trace
from ojax.rules._hebb import hebb
from ojax.rules._hebb import hebb_term
from ojax.rules._oja import oja
from ojax.rules._oja import oja_term
from ojax.rules._oja import OjaState
from ojax.rules._plasticity import plasticity
from ojax.rules._plasticity import Term
from ojax.rules._plasticity import TERMS
from ojax.rules._sanger import sanger
from ojax.rules._sanger import sanger_term

__all__ = [
  "bcm",
  "bcm_term",
  "BCMState",
  "check_placement",
  "hebb",
  "hebb_term",
  "LAYOUTS",
  "NO_PARAMS_MSG",
  "oja",
  "oja_term",
  "OjaState",
  "plasticity",
  "PlasticityRule",
  "RuleAccumulator",
  "RuleState",
  "sanger",
  "sanger_term",
  "sgd_oja",
  "SgdOja",
  "Term",
  "TERMS",
  "Trace",
  "with_rates",
  "with_rule",
]

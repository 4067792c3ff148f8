"""ojax: Oja's plasticity rule for online, biologically constrained training.

Public API:
  ojax.oja(learning_rate): the Oja term as an optax transformation.
  ojax.sgd_oja(learning_rate, oja_learning_rate): SGD + Oja ("BP + Oja").
  ojax.Trace(pre, post): the activity a kernel's rule needs.
"""

from ojax.rules import oja
from ojax.rules import oja_term
from ojax.rules import OjaState
from ojax.rules import sgd_oja
from ojax.rules import Trace

__all__ = ["oja", "oja_term", "OjaState", "sgd_oja", "Trace"]
__version__ = "0.1.0"

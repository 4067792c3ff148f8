"""Speed-ups measured by the benchmark but not (yet) part of ojax itself.

``make bench`` reports ojax as shipped and, in separate rows, with these
applied, so their effect is measured in the same run:

* ``XLA_FLAGS``: ``--xla_cpu_copy_insertion_use_region_analysis=true``. With
  XLA's default copy insertion, the ``lax.scan`` body copies the hidden and
  output kernels every step: the backprop matrix-vector product through
  ``K_{l+1}`` is not provably ordered before ``K_{l+1}``'s in-place update.
  Region analysis proves it and drops the copies. On the 2-core benchmark
  machine this is the main gain (784-256-256-10 BP+Oja: median ~7,100 ->
  ~10,400 samples/s), but it varies from process to process (6,600-12,500);
  on one pinned core it makes no difference.
* ``oja_term``: the Oja residual ``x - K y`` as ``(K @ y^T)^T`` rather than
  ``y @ K^T``. Same numbers; with the kernel as the left operand in its stored
  layout XLA:CPU emits a plain matrix-vector product instead of a loop fusion
  that walks ``K`` transposed (for 784x256: ~10 us instead of ~35 us per
  step; +10% samples/s without the flag, no change with it).

The flag must be in the environment before JAX's CPU backend starts (setting
``os.environ["XLA_FLAGS"]`` after ``import jax`` but before the first
computation works). ``patch_oja_term`` installs the second change into
``ojax.rules`` for this process only; it is a no-op once ``ojax/rules.py``
carries the same change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TUNED_XLA_FLAGS = "--xla_cpu_copy_insertion_use_region_analysis=true"


def oja_term(kernel_IxO: jax.Array, trace) -> jax.Array:
  """``ojax.rules.oja_term`` with the residual computed as ``(K @ y^T)^T``."""
  fan_in, fan_out = kernel_IxO.shape
  x_BxI = jnp.reshape(trace.pre, (-1, fan_in))
  y_BxO = jnp.reshape(trace.post, (-1, fan_out))
  # K y for every sample, (I, O) @ (O, B) -> (I, B): the kernel stays the left
  # operand in its stored layout, so this is a plain matrix-vector product.
  residual_BxI = x_BxI - (kernel_IxO @ y_BxO.T).T
  return (residual_BxI.T @ y_BxO) / x_BxI.shape[0]


def patch_oja_term() -> None:
  """Makes ``ojax.oja`` use :func:`oja_term` in this process."""
  from ojax import rules  # pylint: disable=g-import-not-at-top
  rules.oja_term = oja_term

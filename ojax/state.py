"""The online loop's data: one seed's state and a classifier's data set.

A leaf module (it imports no other part of ojax): :mod:`ojax.train`, which
runs the loop, and :mod:`ojax.fused`, its fast step, both use these types.
``ojax.train`` re-exports them; use them from there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

__all__ = ["ClassifierData", "Metrics", "TrainState"]

Metrics = dict[str, Any]


class TrainState(NamedTuple):
  """Everything one seed needs to go on training (a pytree of arrays)."""

  params: Any
  opt_state: Any
  model_state: Any  # Non-trainable variables, e.g. fixed feedback weights.
  data_key: jax.Array
  diverged_at: jax.Array  # First diverged sample index, or -1.


class ClassifierData(NamedTuple):
  """Flattened inputs and integer labels; ``test_*`` is what is evaluated."""

  train_x: Any  # (N, D)
  train_y: Any  # (N,)
  test_x: Any  # (M, D)
  test_y: Any  # (M,)

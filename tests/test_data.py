"""Tests of ojax.data: the embedded set, TFDS via mock data, offline failure."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import data


def test_embedded_mnist_is_a_fixed_stratified_split_of_real_digits():
  d = data.load("embedded_mnist")
  assert d.train_x.shape == (4000, 784) and d.test_x.shape == (1000, 784)
  assert d.train_x.dtype == np.float32 and d.train_y.dtype == np.int32
  assert 0.0 <= d.train_x.min() and d.train_x.max() <= 1.0
  assert np.all(np.bincount(d.test_y) == 100)
  again = data.load("embedded_mnist")
  np.testing.assert_array_equal(d.train_x, again.train_x)
  train_rows = {r.tobytes() for r in d.train_x}
  assert not any(r.tobytes() in train_rows for r in d.test_x[:200])


def test_digits_is_available_offline():
  d = data.load("digits")
  assert d.input_dim == 64 and d.num_classes == 10
  assert len(d.train_y) + len(d.test_y) == 1797


def _rows(x):
  return [r.tobytes() for r in x]


@pytest.mark.parametrize("split", [0, 7])
def test_validation_is_held_out_of_the_splits_training_data(split):
  full = data.load("embedded_mnist", split_seed=split)
  val = data.load("embedded_mnist", split_seed=split, validation=1000)
  assert val.train_x.shape[0] == 3000 and val.test_x.shape[0] == 1000
  assert np.all(np.bincount(val.test_y) == 100)  # Stratified.
  train, held = _rows(full.train_x), set(_rows(val.test_x))
  # The split's training set, less the held-out samples, in its order.
  assert _rows(val.train_x) == [r for r in train if r not in held]
  assert held <= set(train)


def test_no_validation_sample_is_in_any_splits_test_set():
  held = set(_rows(data.load("embedded_mnist", validation=1000).test_x))
  for split in range(12):
    d = data.load("embedded_mnist", split_seed=split)
    assert not held & set(_rows(d.test_x)), split
    # Every split holds out the same samples (the pool), in its own order.
    again = data.load("embedded_mnist", split_seed=split, validation=1000)
    assert set(_rows(again.test_x)) == held
  # Splits still draw different test sets.
  a, b = (set(_rows(data.load("embedded_mnist", split_seed=s).test_x))
          for s in (0, 1))
  assert len(a & b) < 500


def test_tfds_sets_are_read_with_data_source_and_scaled_to_unit_range():
  with tfds.testing.mock_data(num_examples=12,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    d = data.load("fashion_mnist")
  assert d.train_x.shape == (12, 784) and d.test_x.shape == (12, 784)
  assert d.num_classes == 10
  assert 0.0 <= d.train_x.min() and d.train_x.max() <= 1.0


def test_missing_tfds_data_fails_in_seconds_with_instructions(tmp_path,
                                                              monkeypatch):
  monkeypatch.setattr(data, "_reachable", lambda host, timeout=3.0: False)
  start = time.perf_counter()
  with pytest.raises(data.DataUnavailableError) as err:
    data.load("kmnist", data_dir=str(tmp_path))
  assert time.perf_counter() - start < 10
  assert "--config.dataset=embedded_mnist" in str(err.value)
  assert "--config.data_dir" in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "imagenet"}, "dataset='imagenet' is not known"),
    ({"validation": 1001}, "validation=1001 must be between 1 and 1000 for "
     "embedded_mnist: its validation samples come from a fixed pool"),
])
def test_bad_dataset_arguments_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    data.load(**kwargs)

"""The result schema (experiments/schema.py): JSON round trip, split merging.

Pure Python and NumPy: hand-built results, expected arrays written out.
"""

import math

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import rundir
from experiments import schema
from experiments.configs import base
from experiments.schema import JobResult


def _split_jobs(seeds: int = 3, arms=("bp",)):
  """The split jobs of a config with ``split_per_seed`` (seed 3)."""
  c = base.get_base_config()
  c.experiment = "t"
  c.seeds, c.num_samples, c.eval_every = seeds, 160, 80
  c.model.hidden = (16,)
  c.arms = {"bp": {"oja_lr": 0.0}, "bp_oja": {"oja_lr": 0.003}}
  c.select_arms = ",".join(arms)
  c.split_per_seed, c.seed = True, 3
  return config_lib.validate(c)


def test_array_maps_null_to_nan_and_keeps_other_dtypes():
  a = schema.array([[1.0, None], [None, 2.5]])
  assert a.dtype == np.float64
  np.testing.assert_array_equal(a, [[1.0, np.nan], [np.nan, 2.5]])
  assert schema.array([1, 2]).dtype.kind == "i"
  assert schema.array([True, False]).dtype == bool


def test_result_round_trips_through_strict_json(tmp_path):
  job = _split_jobs(seeds=1)[0]
  acc = np.arange(12, dtype=np.float64).reshape(3, 2, 2) / 10
  acc[1, 0, 1] = np.nan
  acc[2, 1, 0] = np.inf  # Strict JSON keeps no infinity: read back as NaN.
  diverged = np.array([[[-1, -1], [-1, 40]]] * 3)
  result = JobResult(job, [{"lr": 0.1}, {"lr": 0.2}],
                     {"samples": np.array([0, 80, 160]), "test_accuracy": acc,
                      "diverged_at": diverged})
  fp = config_lib.fingerprint(job.config)
  saved = schema.result_to_json(result, fp)
  assert (saved["job"], saved["axis_value"], saved["arm"]) == (
      job.id, job.axis_value, job.arm)
  path = rundir.write_json(str(tmp_path / "r.json"), saved)
  with open(path) as f:
    assert "NaN" not in f.read()
  loaded = rundir.read_json(path)
  assert loaded["fingerprint"] == fp
  back = schema.result_from_json(job, loaded)
  assert back.job is job
  assert back.grid == [{"lr": 0.1}, {"lr": 0.2}]
  assert sorted(back.history) == ["diverged_at", "samples", "test_accuracy"]
  expected = acc.copy()
  expected[2, 1, 0] = np.nan
  assert back.history["test_accuracy"].shape == (3, 2, 2)
  assert back.history["test_accuracy"].dtype == np.float64
  np.testing.assert_array_equal(back.history["test_accuracy"], expected)
  assert math.isnan(back.history["test_accuracy"][1, 0, 1])
  np.testing.assert_array_equal(back.history["samples"], [0, 80, 160])
  np.testing.assert_array_equal(back.history["diverged_at"], diverged)
  assert back.history["diverged_at"].dtype.kind == "i"


@pytest.mark.parametrize("damage", [
    {}, {"grid": []}, [1], {"grid": [], "history": {"a": [1, [2, 3]]}},
    {"grid": [], "history": [1]},
])
def test_a_damaged_result_raises_what_the_runner_catches(damage):
  job = _split_jobs(seeds=1)[0]
  with pytest.raises((KeyError, TypeError, ValueError)):
    schema.result_from_json(job, damage)


def _split_result(job, value: float) -> JobResult:
  """Two evaluations, one grid point, one seed: values ``value + 0, 1``."""
  return JobResult(job, [{}], {
      "samples": np.array([0, 160]),
      "test_accuracy": np.array([[[value]], [[value + 1]]]),
      "diverged_at": np.array([[[-1]], [[int(value)]]])})


def test_merge_splits_joins_the_seeds_in_split_order():
  jobs = _split_jobs(seeds=3)
  assert [j.id for j in jobs] == ["bp-split=0", "bp-split=1", "bp-split=2"]
  results = [_split_result(j, v) for j, v in zip(jobs, (10.0, 20.0, 30.0))]
  [merged] = schema.merge_splits(results, jobs)
  assert merged.job.id == "bp"
  assert merged.job.arm == "bp"
  assert merged.grid == [{}]
  h = merged.history
  assert sorted(h) == ["data_split", "diverged_at", "samples",
                       "test_accuracy"]
  np.testing.assert_array_equal(h["samples"], [0, 160])
  np.testing.assert_array_equal(h["test_accuracy"],
                                [[[10.0, 20.0, 30.0]], [[11.0, 21.0, 31.0]]])
  np.testing.assert_array_equal(h["diverged_at"],
                                [[[-1, -1, -1]], [[10, 20, 30]]])
  np.testing.assert_array_equal(h["data_split"], [[[0, 1, 2]], [[0, 1, 2]]])
  cfg = merged.job.config
  assert (cfg.seeds, cfg.split_per_seed, cfg.seed, cfg.data_split) == (
      3, True, 3, 0)
  # The split jobs' own configs are left as they were.
  assert [(j.config.seeds, j.config.seed, j.config.data_split)
          for j in jobs] == [(1, 3, 0), (1, 4, 1), (1, 5, 2)]


def test_merge_splits_leaves_out_a_group_with_a_split_missing():
  jobs = _split_jobs(seeds=2, arms=("bp", "bp_oja"))
  assert [j.id for j in jobs] == ["bp-split=0", "bp-split=1",
                                  "bp_oja-split=0", "bp_oja-split=1"]
  results = [_split_result(j, v) for j, v in zip(jobs, (1.0, 2.0, 3.0, 4.0))]
  merged = schema.merge_splits(results, jobs)
  assert [r.job.id for r in merged] == ["bp", "bp_oja"]
  np.testing.assert_array_equal(merged[1].history["test_accuracy"],
                                [[[3.0, 4.0]], [[4.0, 5.0]]])
  partial = schema.merge_splits(results[:3], jobs)  # bp_oja-split=1 unfinished.
  assert [r.job.id for r in partial] == ["bp"]
  np.testing.assert_array_equal(partial[0].history["test_accuracy"],
                                [[[1.0, 2.0]], [[2.0, 3.0]]])


def test_merge_splits_counts_each_group_s_own_splits():
  """A tuning arm has tuning_seeds split jobs, not seeds: both groups join."""
  c = base.get_base_config()
  c.experiment, c.num_samples, c.eval_every = "t", 160, 80
  c.model.hidden = (16,)
  c.arms = {"bp": {"oja_lr": 0.0}}
  c.split_per_seed, c.seed, c.seeds = True, 3, 3
  c.tune, c.tuning_seed, c.tuning_seeds = True, 1000, 2
  jobs = config_lib.validate(c)
  assert [j.id for j in jobs] == [
      "bp-split=0", "bp-split=1", "bp-split=2",
      "val_bp-split=0", "val_bp-split=1"]
  results = [_split_result(j, float(k)) for k, j in enumerate(jobs)]
  merged = schema.merge_splits(results, jobs)
  assert [(r.job.id, r.job.config.seeds) for r in merged] == [
      ("bp", 3), ("val_bp", 2)]
  np.testing.assert_array_equal(merged[1].history["test_accuracy"],
                                [[[3.0, 4.0]], [[4.0, 5.0]]])
  np.testing.assert_array_equal(merged[1].history["data_split"],
                                [[[1000, 1001]], [[1000, 1001]]])
  # One tuning split unfinished: the tuning group is left out, bp is kept.
  assert [r.job.id for r in schema.merge_splits(results[:4], jobs)] == ["bp"]


def test_merge_splits_with_one_split_returns_the_results_as_they_are():
  c = base.get_base_config()
  c.experiment, c.seeds, c.num_samples, c.eval_every = "t", 2, 160, 80
  c.arms = {"bp": {"oja_lr": 0.0}}
  [job] = config_lib.validate(c)
  result = _split_result(job, 1.0)
  merged = schema.merge_splits([result], [job])
  assert merged == [result] and merged[0] is result

"""End-to-end tests of the experiment runner: run dirs, sweeps, devices.

Resuming, changed configs, locks and damaged state: tests/test_resume.py.
"""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import analysis
from experiments import checkpoint
from experiments import config as config_lib
from experiments import main
from experiments import runner
from experiments.configs import deep_online
from experiments.configs import online

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEP = os.path.join(ROOT, "experiments", "configs", "deep_online.py")


pytestmark = pytest.mark.usefixtures("fast_runs")


def tiny_config(**overrides):
  c = deep_online.get_config()
  c.seeds, c.num_samples, c.eval_every = 2, 200, 100
  c.passes, c.tune = 0, False  # num_samples; the arms as they are.
  c.split_per_seed = False  # One job per arm (tests name the jobs).
  c.axis_values = (1, 2)
  c.model.width = 16
  c.arms = {"bp": {"oja_lr": 0.0}, "bp_oja": {"oja_lr": 0.003}}
  c.claim.controls = ()  # Its arms: these two.
  for k, v in overrides.items():
    config_lib._set(c, k, v)  # pylint: disable=protected-access
  return c


def _run(config, run_dir):
  return runner.run(config, runner.prepare(config), str(run_dir), "test")


def _rows(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_deep_online_writes_config_metrics_figure_summary_and_checkpoints(
    tmp_path):
  _run(tiny_config(axis_values=(1,)), tmp_path)
  for name in ("config.json", "metrics.jsonl", "summary.md",
               "deep_online.png", "section.json"):
    assert (tmp_path / name).stat().st_size > 0
  rows = _rows(tmp_path)
  assert len(rows) == 1 * 2 * 2 * 3  # depths x arms x seeds x evaluations
  assert {r["arm"] for r in rows} == {"bp", "bp_oja"}
  last = [r for r in rows if r["samples"] == 200]
  assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in last)
  assert all(len(r["orthonormality_error"]) == r["axis_value"] + 1
             for r in last)
  summary = (tmp_path / "summary.md").read_text()
  assert "| 1 | bp_oja |" in summary
  for job in ("depth=1-bp", "depth=1-bp_oja"):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints" / job))
    assert ckpt.latest_step() == 200
    ckpt.close()
    saved = json.loads((tmp_path / "jobs" / f"{job}.json").read_text())
    assert saved["fingerprint"]["num_samples"] == 200


def test_arms_share_initialization_and_sample_order_per_seed(tmp_path):
  config = tiny_config(axis_values=(1,))
  # Two jobs with the same numbers (without Oja, oja_layers does nothing).
  config.arms = {"bp": {"oja_lr": 0.0},
                 "bp_again": {"oja_lr": 0.0, "oja_layers": "hidden"}}
  config.claim = None  # No bp_oja arm: no claim.
  _run(config, tmp_path)
  rows = _rows(tmp_path)
  assert {r["job"] for r in rows} == {"depth=1-bp", "depth=1-bp_again"}
  by = {(r["arm"], r["seed"], r["samples"]): r["test_loss"] for r in rows}
  for (_, seed, samples), loss in by.items():
    assert loss == by[("bp", seed, samples)]
  assert by[("bp", 0, 200)] != by[("bp", 1, 200)]


@pytest.mark.slow  # End to end (make test-slow): keeps make test under 3 min.
def test_splits_give_each_seed_its_own_train_test_split(tmp_path):
  config = tiny_config(axis_values=(1,), split_per_seed=True)
  for d in ("split", "alone", "other"):
    (tmp_path / d).mkdir()
  _run(config, tmp_path / "split")
  rows = _rows(tmp_path / "split")
  assert {r["job"] for r in rows} == {"depth=1-bp", "depth=1-bp_oja"}
  assert {(r["seed"], r["data_split"]) for r in rows} == {(0, 0), (1, 1)}
  # Seed 1 is a run of its own: seed 1's keys on split 1.
  alone = tiny_config(axis_values=(1,), seeds=1, seed=1, data_split=1)
  _run(alone, tmp_path / "alone")
  acc = {(r["arm"], r["samples"]): r["test_accuracy"]
         for r in _rows(tmp_path / "split") if r["seed"] == 1}
  assert acc == {(r["arm"], r["samples"]): r["test_accuracy"]
                 for r in _rows(tmp_path / "alone")}
  # The splits differ: another test set, so other accuracies on seed 0's
  # keys too.
  other = tiny_config(axis_values=(1,), seeds=1, data_split=1)
  _run(other, tmp_path / "other")
  seed0 = {(r["arm"], r["samples"]): r["test_accuracy"]
           for r in _rows(tmp_path / "split") if r["seed"] == 0}
  assert seed0 != {(r["arm"], r["samples"]): r["test_accuracy"]
                   for r in _rows(tmp_path / "other")}
  # The analysis sees 2 paired seeds per arm, split by split.
  run = analysis.load_run(str(tmp_path / "split"))
  assert [r.job.id for r in run.results] == ["depth=1-bp", "depth=1-bp_oja"]
  assert run.results[0].history["data_split"][-1, 0].tolist() == [0, 1]


@pytest.mark.parametrize("overrides,message", [
    ({"split_per_seed": True, "dataset": "mnist"}, "has a fixed split"),
    ({"data_split": -1}, "data_split=-1 must be finite and >= 0."),
])
def test_bad_splits_are_one_line_errors(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(tiny_config(**overrides))


@pytest.mark.slow
def test_sweep_grid_runs_every_point_in_one_job(tmp_path):
  config = tiny_config(axis_values=(1,))
  config.sweep.lr = (0.01, 0.1)
  config.sweep.oja_lr = (0.0, 0.01)
  _run(config, tmp_path)
  rows = _rows(tmp_path)
  points = {(r["lr"], r["oja_lr"]) for r in rows}
  assert points == {(0.01, 0.0), (0.01, 0.01), (0.1, 0.0), (0.1, 0.01)}
  assert {r["job"] for r in rows} == {"depth=1-bp"}  # Arms merged by sweep.
  assert (tmp_path / "deep_online.png").exists()


@pytest.mark.slow
def test_one_seed_gives_no_interval_no_verdict_and_diverged_seeds_apart(
    tmp_path):
  config = online.get_config()
  config.seeds, config.num_samples, config.eval_every = 1, 100, 100
  config.passes, config.tune = 0, False  # num_samples; no tuning arms.
  config.axis_values = ((8,),)
  config.select_arms = "bp,bp_oja"
  config.arms.bp.sweep.lr = (1000.0,)  # Diverges.
  config.arms.bp_oja.sweep.lr = (0.01,)
  config.arms.bp_oja.sweep.oja_lr = (0.001,)
  config.claim.controls = ()
  _run(config, tmp_path)
  rows = [r for r in _rows(tmp_path) if r["samples"] == 100]
  assert [(r["arm"], r["diverged_at"] >= 0) for r in rows] == [
      ("bp", True), ("bp_oja", False)]
  summary = (tmp_path / "summary.md").read_text()
  assert "**Verdict: no verdict.**" in summary
  assert f"the rule needs at least {analysis.MIN_SEEDS_VERDICT}" in summary
  # The diverged seed is counted apart and gives no accuracy; one seed gives
  # no interval.
  assert "| 8 | bp | 1000 | n/a | n/a | 1 | 1 |" in summary
  bp_oja = next(l for l in summary.splitlines()
                if l.startswith("| 8 | bp_oja |"))
  assert "n/a" in bp_oja and "[0." not in bp_oja


def test_an_interrupted_checkpoint_write_never_replaces_the_last_good_one(
    tmp_path):
  config = tiny_config(axis_values=(1,), checkpoint_every=100)
  config.arms = {"bp": {"oja_lr": 0.0}}
  config.claim = None  # No bp_oja arm: no claim.
  _run(config, tmp_path)
  job_dir = tmp_path / "checkpoints" / "depth=1-bp"
  partial = job_dir / "300.orbax-checkpoint-tmp-1234"
  partial.mkdir()
  (partial / "state").mkdir()
  (partial / "state" / "garbage").write_bytes(b"\0" * 10)
  ckpt = checkpoint.Checkpointer(str(job_dir))
  assert ckpt.latest_step() == 200
  ckpt.close()


def test_finished_jobs_are_kept_and_not_recomputed(tmp_path):
  config = tiny_config(axis_values=(1, 2))
  prepared = runner.prepare(config)
  jobs, datasets = prepared
  runner.run_job(jobs[0], str(tmp_path), datasets)
  saved = tmp_path / "jobs" / f"{jobs[0].id}.json"
  before = saved.stat().st_mtime_ns
  result = runner.run_job(jobs[0], str(tmp_path), datasets)
  assert saved.stat().st_mtime_ns == before  # Loaded, not recomputed.
  assert result.history["test_accuracy"].shape == (3, 1, 2)


def test_cpu_devices_appends_to_xla_flags_and_keeps_the_users():
  env = {"XLA_FLAGS": "--xla_cpu_copy_insertion_use_region_analysis=true"}
  main.split_cpu(3, env)
  assert env["XLA_FLAGS"] == (
      "--xla_cpu_copy_insertion_use_region_analysis=true "
      "--xla_force_host_platform_device_count=3 "
      "--xla_cpu_multi_thread_eigen=false")
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  main.split_cpu(0, env)
  assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=4 "
                              "--xla_cpu_multi_thread_eigen=false")


def _cli(args, **kwargs):
  return subprocess.run([sys.executable, "-m", "experiments.main",
                         f"--config={DEEP}", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600,
                        check=False, **kwargs)


SWEEP = ["--config.select_arms=bp", "--config.seeds=1",
         "--config.tune=false", "--config.passes=0",
         "--config.num_samples=200", "--config.eval_every=100",
         "--config.checkpoint_every=100", "--config.axis_values=(1,)",
         "--config.model.width=16",
         "--config.arms.bp.sweep.lr=(0.01,0.03,0.1)"]


def _close(a, b):
  """Rows equal but floats, which agree to 1e-5 (relative)."""
  assert len(a) == len(b) == 9
  for ra, rb in zip(a, b):
    assert ra.keys() == rb.keys()
    for k in ra:
      if isinstance(ra[k], (float, list)):
        np.testing.assert_allclose(ra[k], rb[k], rtol=1e-5, atol=1e-7)
      else:
        assert ra[k] == rb[k], k


@pytest.mark.slow
def test_a_sweep_split_over_cpu_devices_matches_one_device_and_resumes_on_one(
    tmp_path, caplog):
  """3 grid points on 2 devices (one padded) against 1 device, in
  subprocesses; then the 2-device checkpoint resumes on 1 device."""
  one, two = tmp_path / "one", tmp_path / "two"
  procs = [_cli(SWEEP + [f"--workdir={one}", "--cpu_devices=1"]),
           _cli(SWEEP + [f"--workdir={two}", "--cpu_devices=2"])]
  for proc in procs:
    assert proc.returncode == 0, proc.stderr[-2000:]
  # Not bit-identical: XLA compiles a batch of 3 and of 2 points with
  # different reduction orders (last-bit differences, docs/running.md).
  _close(_rows(one), _rows(two))
  os.remove(two / "jobs" / "depth=1-bp.json")
  shutil.rmtree(two / "checkpoints" / "depth=1-bp" / "200")  # Keeps 100.
  caplog.set_level(logging.INFO, logger="ojax")
  s = main.check(["ojax", f"--config={DEEP}", *SWEEP, f"--workdir={two}",
                  "--workers=1"])  # In this process, where caplog sees it.
  try:
    main.execute(s)  # This process has one device.
  finally:
    s.workdir.close()
  assert len(jax.devices()) == 1
  assert "depth=1-bp: resuming at 100 samples" in caplog.messages
  _close(_rows(one), _rows(two))


@pytest.mark.slow
def test_one_pinned_worker_per_core_gives_the_numbers_of_one_process(
    tmp_path):
  """Two jobs run by two pinned single-threaded workers, against the same
  jobs run one after the other in one process pinned to one core."""
  args = ["--config.select_arms=bp,bp_oja", "--config.seeds=2",
          "--config.tune=false", "--config.passes=0",
          "--config.arms.bp.sweep.lr=(0.03,)",
          "--config.arms.bp_oja.sweep.lr=(0.01,)",
          "--config.arms.bp_oja.sweep.oja_lr=(0.003,)",
          "--config.num_samples=200", "--config.eval_every=100",
          "--config.axis_values=(1,)", "--config.model.width=16"]
  one, two = tmp_path / "one", tmp_path / "two"
  for workdir, workers in ((one, 1), (two, 2)):
    proc = _cli(args + [f"--workdir={workdir}", f"--workers={workers}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
  assert (one / "metrics.jsonl").read_bytes() == (
      two / "metrics.jsonl").read_bytes()
  assert (two / "jobs" / "depth=1-bp_oja-split=1.json").exists()


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


@pytest.mark.slow
def test_two_process_distributed_sweep_matches_the_single_process_one(
    tmp_path):
  port = _free_port()
  flags = SWEEP + ["--distributed", f"--coordinator_address=127.0.0.1:{port}",
                   "--num_processes=2", f"--workdir={tmp_path / 'mh'}"]
  env = {**os.environ,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, "-m", "experiments.main", f"--config={DEEP}", *flags,
       f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[1][-2000:]
  single = _cli(SWEEP + [f"--workdir={tmp_path / 'one'}"])
  assert single.returncode == 0, single.stderr[-2000:]
  a, b = _rows(tmp_path / "mh"), _rows(tmp_path / "one")
  assert len(a) == len(b) == 9
  for ra, rb in zip(a, b):
    assert (ra["lr"], ra["samples"]) == (rb["lr"], rb["samples"])
    np.testing.assert_allclose(ra["test_loss"], rb["test_loss"], rtol=1e-4)

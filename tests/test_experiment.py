"""End-to-end tests of the experiment runner: run dirs, sweeps, resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import runners
from experiments.configs import deep_online
from ojax import checkpoint
from ojax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "experiments", "main.py")
CONFIG = os.path.join(ROOT, "experiments", "configs", "deep_online.py")


def tiny_config(**overrides):
  c = deep_online.get_config()
  c.seeds, c.num_samples, c.eval_every = 2, 200, 100
  c.axis_values = (1, 2)
  c.model.width = 16
  c.arms = {"bp": {"oja_lr": 0.0}, "bp_oja": {"oja_lr": 0.003}}
  for k, v in overrides.items():
    experiment._set(c, k, v)  # pylint: disable=protected-access
  return c


def _run(config, run_dir):
  runner = runners.get(config)
  return runner.run(config, runner.prepare(config), str(run_dir), "test")


def _rows(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_deep_online_writes_config_metrics_figure_summary_and_checkpoints(
    tmp_path):
  _run(tiny_config(), tmp_path)
  for name in ("config.json", "metrics.jsonl", "summary.md", "curves.png"):
    assert (tmp_path / name).stat().st_size > 0
  rows = _rows(tmp_path)
  assert len(rows) == 2 * 2 * 2 * 3  # depths x arms x seeds x evaluations
  assert {r["arm"] for r in rows} == {"bp", "bp_oja"}
  last = [r for r in rows if r["samples"] == 200]
  assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in last)
  assert all(len(r["orthonormality_error"]) == r["axis_value"] + 1
             for r in last)
  summary = (tmp_path / "summary.md").read_text()
  assert "| 2 | bp_oja |" in summary and "significant" in summary
  for job in ("depth=1-bp", "depth=2-bp_oja"):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints" / job))
    assert ckpt.latest_step() == 200


def test_arms_share_initialization_and_sample_order_per_seed(tmp_path):
  config = tiny_config(axis_values=(1,))
  config.arms = {"bp": {"oja_lr": 0.0}, "bp_again": {"oja_lr": 0.0}}
  _run(config, tmp_path)
  rows = _rows(tmp_path)
  by = {(r["arm"], r["seed"], r["samples"]): r["test_loss"] for r in rows}
  for (arm, seed, samples), loss in by.items():
    assert loss == by[("bp", seed, samples)]
  assert by[("bp", 0, 200)] != by[("bp", 1, 200)]


def test_sweep_grid_runs_every_point_and_draws_a_heat_map(tmp_path):
  config = tiny_config(axis_values=(1,))
  config.sweep.lr = (0.01, 0.1)
  config.sweep.oja_lr = (0.0, 0.01)
  _run(config, tmp_path)
  rows = _rows(tmp_path)
  points = {(r["lr"], r["oja_lr"]) for r in rows}
  assert points == {(0.01, 0.0), (0.01, 0.01), (0.1, 0.0), (0.1, 0.01)}
  assert {r["job"] for r in rows} == {"depth=1-bp"}  # Arms merged by sweep.
  assert (tmp_path / "sweep-depth=1-bp.png").exists()


def _subprocess(args, env=None, **kwargs):
  env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
  return subprocess.run([sys.executable, MAIN, f"--config={CONFIG}", *args],
                        env=env, capture_output=True, text=True, timeout=300,
                        check=False, **kwargs)


TINY_FLAGS = ["--config.select_arms=bp", "--config.seeds=1",
              "--config.num_samples=200", "--config.eval_every=100", "--config.axis_values=(1,)",
              "--config.model.width=16", "--config.diagnostics=False"]


def test_sharded_sweep_over_4_devices_matches_the_unsharded_sweep(tmp_path):
  sweep = ["--config.sweep.lr=(0.01,0.03,0.1)"]  # 3 points on 4 devices.
  sharded = _subprocess(
      TINY_FLAGS + sweep + [f"--workdir={tmp_path / 'sharded'}"],
      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  assert sharded.returncode == 0, sharded.stderr[-2000:]
  config = tiny_config(axis_values=(1,), seeds=1, diagnostics=False)
  config.model.width = 16
  config.sweep.lr = (0.01, 0.03, 0.1)
  _run(config, tmp_path / "plain")
  a = {(r["lr"], r["samples"]): r for r in _rows(tmp_path / "sharded")
       if r["arm"] == "bp"}
  b = {(r["lr"], r["samples"]): r for r in _rows(tmp_path / "plain")
       if r["arm"] == "bp"}
  assert a.keys() == b.keys() and len(a) == 9
  for key in a:
    np.testing.assert_allclose(a[key]["test_loss"], b[key]["test_loss"],
                               rtol=1e-4)
    assert a[key]["test_accuracy"] == pytest.approx(b[key]["test_accuracy"],
                                                    abs=2e-3)


def _free_port():
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    return sock.getsockname()[1]


def test_two_process_distributed_sweep_matches_the_single_process_one(
    tmp_path):
  port = _free_port()
  flags = TINY_FLAGS + ["--config.sweep.lr=(0.01,0.03,0.1)", "--distributed",
                        f"--coordinator_address=127.0.0.1:{port}",
                        "--num_processes=2", f"--workdir={tmp_path / 'mh'}"]
  env = {**os.environ, "PYTHONPATH": ROOT,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  procs = [subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, MAIN, f"--config={CONFIG}", *flags,
       f"--process_id={i}"], env=env, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs[1][-2000:]
  single = _subprocess(TINY_FLAGS + ["--config.sweep.lr=(0.01,0.03,0.1)",
                                     f"--workdir={tmp_path / 'one'}"])
  assert single.returncode == 0, single.stderr[-2000:]
  a, b = _rows(tmp_path / "mh"), _rows(tmp_path / "one")
  assert len(a) == len(b) == 9
  for ra, rb in zip(a, b):
    assert (ra["lr"], ra["samples"]) == (rb["lr"], rb["samples"])
    np.testing.assert_allclose(ra["test_loss"], rb["test_loss"], rtol=1e-4)


def test_run_killed_mid_way_resumes_to_exactly_the_uninterrupted_numbers(
    tmp_path):
  flags = ["--config.select_arms=bp,bp_oja", "--config.seeds=2",
           "--config.num_samples=2000", "--config.eval_every=250",
           "--config.checkpoint_every=500", "--config.axis_values=(1,)",
           "--config.model.width=16", "--config.diagnostics=False"]
  killed_dir = tmp_path / "killed"
  env = {**os.environ, "PYTHONPATH": ROOT}
  proc = subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, MAIN, f"--config={CONFIG}", *flags,
       f"--workdir={killed_dir}"], env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  first_job = killed_dir / "checkpoints" / "depth=1-bp"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [p for p in first_job.glob("*") if p.name.isdigit()] if (
        first_job.exists()) else []
    if steps:
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed_dir / "summary.md").exists(), "the kill came too late"
  resumed = _subprocess(flags + [f"--workdir={killed_dir}"])
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resuming at" in resumed.stderr
  straight = _subprocess(flags + [f"--workdir={tmp_path / 'straight'}"])
  assert straight.returncode == 0, straight.stderr[-2000:]
  assert _rows(killed_dir) == _rows(tmp_path / "straight")


def test_an_interrupted_checkpoint_write_never_replaces_the_last_good_one(
    tmp_path):
  config = tiny_config(axis_values=(1,), checkpoint_every=100)
  config.arms = {"bp": {"oja_lr": 0.0}}
  _run(config, tmp_path)
  job_dir = tmp_path / "checkpoints" / "depth=1-bp"
  partial = job_dir / "300.orbax-checkpoint-tmp-1234"
  partial.mkdir()
  (partial / "state").mkdir()
  (partial / "state" / "garbage").write_bytes(b"\0" * 10)
  ckpt = checkpoint.Checkpointer(str(job_dir))
  assert ckpt.latest_step() == 200


def test_finished_jobs_are_kept_when_a_later_job_fails(tmp_path):
  config = tiny_config(axis_values=(1, 2))
  runner = runners.get(config)
  prepared = runner.prepare(config)
  jobs, datasets = prepared
  experiment.run_job(jobs[0], str(tmp_path), datasets)
  saved = tmp_path / "jobs" / f"{jobs[0].id}.json"
  assert saved.exists()
  before = saved.stat().st_mtime_ns
  result = experiment.run_job(jobs[0], str(tmp_path), datasets)
  assert saved.stat().st_mtime_ns == before  # Loaded, not recomputed.
  assert result.history["test_accuracy"].shape == (3, 1, 2)

"""Resuming a run directory: same numbers, never another config's.

Covers: SIGKILL and Ctrl-C then resume give the numbers of an uninterrupted
run; a resume with a changed config exits 2 naming the fields and
``--restart`` starts over; a second process on a busy workdir exits 2 at
once; runs without ``--workdir`` never share a directory; a damaged
``jobs/<id>.json`` or latest checkpoint falls back with a warning; a full
disk stops with one line and keeps the last good checkpoint.

Runs go in-process through ``experiments.main.check`` and ``execute`` (the
CLI's own functions) except where a separate process is the point.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import pytest

from experiments import checkpoint
from experiments import config as config_lib
from experiments import main
from experiments import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEP = f"--config={ROOT}/experiments/configs/deep_online.py"
JOB = "depth=1-bp"
TINY = [DEEP, "--config.select_arms=bp", "--config.seeds=2",
        "--config.num_samples=300", "--config.eval_every=100",
        "--config.checkpoint_every=100", "--config.axis_values=(1,)",
        "--config.model.width=16", "--config.split_per_seed=false",
        "--workers=1"]


def tiny(workdir, *changed: str) -> list[str]:
  """``ojax`` argv: TINY with the ``changed`` flags replacing its own."""
  fields = {c.split("=", 1)[0] for c in changed}
  return ["ojax", *[a for a in TINY if a.split("=", 1)[0] not in fields],
          *changed, f"--workdir={workdir}"]


def run(argv) -> str:
  """What the CLI does with ``argv``, in this process; returns summary.md."""
  s = main.check(argv)
  try:
    return main.execute(s)
  finally:
    s.workdir.close()


def exactly(text: str) -> str:
  """A ``pytest.raises(match=...)`` pattern for exactly ``text``."""
  return "^" + re.escape(text) + "$"


def metrics(workdir) -> bytes:
  with open(os.path.join(workdir, "metrics.jsonl"), "rb") as f:
    return f.read()


pytestmark = pytest.mark.usefixtures("fast_runs")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
  """An uninterrupted TINY run: its directory (copy it before changing)."""
  workdir = tmp_path_factory.mktemp("baseline") / "run"
  run(tiny(workdir))
  return workdir


def _copy(baseline, tmp_path):
  target = tmp_path / "run"
  shutil.copytree(baseline, target)
  return target


# --- Changed configs ---------------------------------------------------------


@pytest.mark.parametrize("change, fields", [
    (["--config.arms.bp.lr=0.3"], "(lr: 0.03 -> 0.3)"),
    (["--config.num_samples=400"], "(num_samples: 300 -> 400)"),
    (["--config.seeds=3"], "(seeds: 2 -> 3)"),
    (["--config.model.width=8"], "(model.width: 16 -> 8)"),
])
def test_a_finished_run_refuses_another_config_and_writes_nothing(
    baseline, tmp_path, change, fields):
  workdir = _copy(baseline, tmp_path)
  before = {p: (workdir / p).read_bytes()
            for p in ("config.json", "metrics.jsonl", "summary.md")}
  expected = (f"--workdir={workdir} holds job {JOB} from another config "
              f"{fields}; use a new --workdir, or --restart to discard the "
              "old results.")
  with pytest.raises(main.UserError, match=exactly(expected)):
    main.check(tiny(workdir, *change))
  assert before == {p: (workdir / p).read_bytes() for p in before}


def test_a_half_finished_job_refuses_another_eval_every_and_an_off_grid_resume(
    baseline, tmp_path):
  workdir = _copy(baseline, tmp_path)
  os.remove(workdir / "jobs" / f"{JOB}.json")  # Unfinished: steps 100, 200.
  shutil.rmtree(workdir / "checkpoints" / JOB / "300")
  changed = ("--config.eval_every=300", "--config.checkpoint_every=0")
  with pytest.raises(main.UserError, match=r"holds job depth=1-bp from "
                     r"another config \(eval_every: 100 -> 300\)"):
    main.check(tiny(workdir, *changed))
  s = main.check(tiny(workdir, *changed, "--restart"))
  s.workdir.close()
  assert os.listdir(workdir) == [".lock"]  # --restart removed everything.


def test_a_resume_point_off_the_evaluation_grid_is_an_error(baseline,
                                                            tmp_path):
  workdir = _copy(baseline, tmp_path)
  os.remove(workdir / "jobs" / f"{JOB}.json")
  shutil.rmtree(workdir / "checkpoints" / JOB / "300")  # Latest: 200.
  argv = tiny(workdir, "--config.eval_every=300",
              "--config.checkpoint_every=0")
  # A fingerprint that matches the new config (e.g. written by hand): the
  # resume point is checked all the same.
  parsed = main.parse(argv)
  new_job = config_lib.validate(parsed.config, parsed.cli_fields)[0]
  rundir.write_json(
      str(workdir / "checkpoints" / JOB / "fingerprint.json"),
      config_lib.fingerprint(new_job.config))
  with pytest.raises(main.UserError, match=exactly(
      f"job {JOB}: its checkpoint at 200 samples is not an evaluation point "
      "of this config (eval_every=300, num_samples=300); use a new "
      "--workdir, or --restart to discard it.")):
    run(argv)


def test_restart_discards_the_old_results_and_runs_the_new_config(
    baseline, tmp_path):
  workdir = _copy(baseline, tmp_path)
  (workdir / "run.log").write_text("kept")
  run(tiny(workdir, "--config.arms.bp.lr=0.3", "--restart"))
  assert metrics(workdir) != metrics(baseline)
  assert json.loads((workdir / "config.json").read_text())["arms"]["bp"][
      "lr"] == 0.3
  assert (workdir / "run.log").read_text() == "kept"
  # The same config again: finished, loaded, nothing recomputed.
  again = metrics(workdir)
  run(tiny(workdir, "--config.arms.bp.lr=0.3"))
  assert metrics(workdir) == again


# --- Interruptions -----------------------------------------------------------


def test_ctrl_c_says_where_it_stopped_and_the_resume_gives_the_same_numbers(
    baseline, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  save = checkpoint.Checkpointer.save

  def save_then_interrupt(self, progress):
    save(self, progress)
    raise KeyboardInterrupt
  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_interrupt)
  argv = tiny(workdir)
  resume = main.parse(argv).command
  with pytest.raises(main.Interrupted, match=exactly(
      f"interrupted: 0 of 1 jobs finished; last checkpoint of {JOB} at "
      f"100/300 samples in {workdir}. Resume with: {resume}")):
    run(argv)
  monkeypatch.undo()
  run(argv)
  assert metrics(workdir) == metrics(baseline)


def test_disk_full_writing_metrics_is_one_line_and_the_resume_finishes(
    baseline, tmp_path, monkeypatch):
  workdir = tmp_path / "run"

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(rundir, "write_jsonl", full)
  with pytest.raises(main.UserError, match=exactly(
      f"disk full while writing to {workdir}: 1 of 1 jobs finished; the last"
      " good checkpoints are kept. Free space, then resume with: "
      f"{main.parse(tiny(workdir)).command}")):
    run(tiny(workdir))
  assert not (workdir / "metrics.jsonl").exists()
  monkeypatch.undo()
  run(tiny(workdir))
  assert metrics(workdir) == metrics(baseline)


@pytest.fixture
def small_disk(tmp_path):
  """A 192 KiB tmpfs (root only): room for one checkpoint of TINY."""
  disk = tmp_path / "disk"
  disk.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs",
                         str(disk)], capture_output=True, check=False)
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
  yield disk
  subprocess.run(["umount", str(disk)], check=False)


# Orbax's aborted writes leave coroutines that Python reports when it
# collects them; the CLI prints nothing for them (only pytest does).
UNRAISABLE = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")


@UNRAISABLE
def test_a_full_disk_while_checkpointing_keeps_the_last_good_step(
    baseline, small_disk):
  workdir = small_disk / "run"
  with pytest.raises(main.UserError, match=exactly(
      f"disk full while writing to {workdir}: 0 of 1 jobs finished; last "
      f"checkpoint of {JOB} at 100/300 samples; the last good checkpoints "
      "are kept. Free space, then resume with: "
      f"{main.parse(tiny(workdir)).command}")):
    run(tiny(workdir))
  job_dir = workdir / "checkpoints" / JOB
  steps = sorted(p.name for p in job_dir.iterdir())
  assert "tmp" not in " ".join(steps)  # The unfinished step is gone.
  ckpt = checkpoint.Checkpointer(str(job_dir))
  assert ckpt.latest_step() == 100  # The last good step.
  ckpt.close()
  subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)],
                 check=True)
  run(tiny(workdir))
  assert metrics(workdir) == metrics(baseline)


def test_ctrl_c_during_a_checkpoint_write_completes_the_step_then_stops(
    tmp_path, caplog):
  """A real SIGINT inside orbax's save: no thread error, no tmp left."""
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signals reach the main thread only")
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ojax.train import Progress  # pylint: disable=import-outside-toplevel
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  states = {"w": jnp.ones((64, 256, 256))}
  ckpt.save(Progress(100, states, [{"samples": 100, "acc": 0.5}]))
  manager = ckpt._manager  # pylint: disable=protected-access
  save = manager.save

  def interrupted(*args, **kwargs):  # Ctrl-C as orbax's save begins.
    signal.raise_signal(signal.SIGINT)
    save(*args, **kwargs)
  manager.save = interrupted
  caplog.set_level(logging.INFO)
  with pytest.raises(KeyboardInterrupt):
    ckpt.save(Progress(200, states, [{"samples": 200, "acc": 0.6}]))
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
  assert not [n for n in os.listdir(tmp_path) if "tmp" in n]
  assert ckpt.latest_step() == 200  # Completed, then the interrupt.
  assert ckpt.restore(states).history[-1]["samples"] == 200
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  ckpt.close()


# --- Damaged state -----------------------------------------------------------


def test_a_truncated_jobs_json_is_rebuilt_from_the_final_checkpoint(
    baseline, tmp_path, caplog):
  workdir = _copy(baseline, tmp_path)
  result = workdir / "jobs" / f"{JOB}.json"
  result.write_bytes(result.read_bytes()[:100])
  os.remove(workdir / "metrics.jsonl")
  caplog.set_level(logging.INFO, logger="ojax")
  run(tiny(workdir))
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING"]
  assert warnings == [f"{result} is damaged; rebuilding it from the job's "
                      "last good checkpoint"]
  assert any("resuming at 300 samples" in r.getMessage()
             for r in caplog.records)  # Nothing retrained.
  assert metrics(workdir) == metrics(baseline)
  assert json.loads(result.read_text())["job"] == JOB


@UNRAISABLE
@pytest.mark.parametrize("damage", ["emptied", "truncated", "removed_files"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    baseline, tmp_path, caplog, damage):
  workdir = _copy(baseline, tmp_path)
  os.remove(workdir / "jobs" / f"{JOB}.json")
  step = workdir / "checkpoints" / JOB / "300"
  for root, _, files in os.walk(step):
    for name in files:
      path = os.path.join(root, name)
      if damage == "emptied":
        open(path, "w").close()
      elif damage == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
      elif "ocdbt" in root or name == "_CHECKPOINT_METADATA":
        os.remove(path)
  caplog.set_level(logging.INFO, logger="ojax")
  run(tiny(workdir))
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING"]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith(f"checkpoint {step} is damaged (")
  assert warnings[0].endswith("); trying an earlier one")
  assert any("resuming at 200 samples" in r.getMessage()
             for r in caplog.records)
  assert metrics(workdir) == metrics(baseline)
  # The damaged step was written again, good.
  ckpt = checkpoint.Checkpointer(str(step.parent))
  assert ckpt.latest_step() == 300
  ckpt.close()


# --- Run directories ---------------------------------------------------------


@pytest.mark.slow  # End to end (make test-slow): keeps make test under 3 min.
def test_a_second_process_on_a_busy_workdir_exits_2_at_once(tmp_path):
  workdir = tmp_path / "run"
  held = rundir.open_workdir(str(workdir), "deep_online")  # A running run.
  try:
    tic = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.main", *tiny(workdir)[1:]],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    seconds = time.monotonic() - tic
  finally:
    held.close()
  lines = [l for l in proc.stderr.splitlines() if l.startswith("ojax:")]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert lines == [f"ojax: error: --workdir={workdir} is in use by pid "
                   f"{os.getpid()}; wait for it to finish or choose another "
                   "--workdir."]
  assert "Traceback" not in proc.stderr
  assert seconds < 60  # Before compiling anything (it was 300 s + trace).
  assert os.listdir(workdir) == [".lock"]


def test_runs_without_workdir_started_together_get_distinct_directories(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)

  fixed = datetime.datetime(2030, 1, 1, 12, 0, 0)  # All in one second.
  monkeypatch.setattr(rundir, "datetime", types.SimpleNamespace(
      datetime=types.SimpleNamespace(now=lambda: fixed)))
  paths, barrier = [], threading.Barrier(8)

  def start():
    barrier.wait()
    paths.append(rundir.open_workdir(None, "deep_online"))
  threads = [threading.Thread(target=start) for _ in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len({w.path for w in paths}) == 8
  assert sorted(os.listdir(tmp_path / "runs" / "deep_online"))[:2] == [
      "20300101-120000", "20300101-120000-2"]
  for w in paths:
    w.close()
  # And through the CLI's setup: two starts, two directories.
  argv = [a for a in tiny("x") if not a.startswith("--workdir")]
  first, second = main.check(argv), main.check(argv)
  assert first.workdir.path != second.workdir.path
  assert second.resume.endswith(f"--workdir={second.workdir.path}")
  first.workdir.close()
  second.workdir.close()


# --- Whole processes ---------------------------------------------------------


def _start(workdir, env):
  return subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, "-m", "experiments.main", *LONG,
       f"--workdir={workdir}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


LONG = [a if not a.startswith("--config.num_samples") else
        "--config.num_samples=1500" for a in TINY]


def _wait_for_checkpoint(workdir, proc):
  job = workdir / "checkpoints" / JOB
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if job.exists() and any(p.name.isdigit() for p in job.iterdir()):
      return
    time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_and_ctrl_c_then_resume_give_the_uninterrupted_numbers(
    tmp_path):
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  straight = _start(tmp_path / "straight", env)
  assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]
  for sig in (signal.SIGKILL, signal.SIGINT):
    workdir = tmp_path / sig.name
    proc = _start(workdir, env)
    _wait_for_checkpoint(workdir, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert not (workdir / "summary.md").exists(), "the signal came too late"
    if sig == signal.SIGINT:
      lines = [l for l in stderr.splitlines() if l.startswith("ojax:")]
      assert proc.returncode == 130, stderr[-2000:]
      assert len(lines) == 1 and lines[0].startswith(
          "ojax: error: interrupted: 0 of 1 jobs finished; last checkpoint "
          f"of {JOB} at "), lines
      assert lines[0].endswith(f"--workdir={workdir}")
      assert "Traceback" not in stderr
    resumed = _start(workdir, env)
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-2000:]
    assert "resuming at" in stderr
    assert metrics(workdir) == metrics(tmp_path / "straight")

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
from experiments import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEP = f"--config={ROOT}/experiments/configs/deep_online.py"
JOB = "depth=1-bp"
TINY = [DEEP, "--config.select_arms=bp", "--config.seeds=2",
        "--config.passes=0", "--config.num_samples=300",
        "--config.eval_every=100", "--config.tune=false",
        "--config.arms.bp.sweep.lr=(0.03,)",
        "--config.checkpoint_every=100", "--config.axis_values=(1,)",
        "--config.model.width=16", "--config.split_per_seed=false",
        "--workers=1"]
LR = "--config.arms.bp.sweep.lr=(0.3,)"  # Another config than TINY's.
LR_CHANGED = "(lr: 0.03 -> 0.3; sweep_grid: [{'lr': 0.03}] -> [{'lr': 0.3}])"


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
    ([LR], LR_CHANGED),
    (["--config.eval_batch_size=7"], "(eval_batch_size: 1000 -> 7)"),
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
  run(tiny(workdir, LR, "--restart"))
  assert metrics(workdir) != metrics(baseline)
  assert json.loads((workdir / "config.json").read_text())["arms"]["bp"][
      "sweep"]["lr"] == [0.3]
  assert (workdir / "run.log").read_text() == "kept"
  # The same config again: finished, loaded, nothing recomputed.
  again = metrics(workdir)
  run(tiny(workdir, LR))
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


def _no_fingerprint(text: str) -> str:
  saved = json.loads(text)
  del saved["fingerprint"]
  return json.dumps(saved)


# A result is its job's only with the job's fingerprint (issue 18 item 2).
@pytest.mark.parametrize("damage", [
    lambda text: text[:100], _no_fingerprint], ids=[
        "truncated", "no_fingerprint"])
def test_a_damaged_jobs_json_is_rebuilt_from_the_final_checkpoint(
    baseline, tmp_path, caplog, damage):
  workdir = _copy(baseline, tmp_path)
  result = workdir / "jobs" / f"{JOB}.json"
  result.write_text(damage(result.read_text()))
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


def test_a_job_loads_no_result_of_another_config(baseline, tmp_path):
  """A result written after the run's resume check (by a job with the same
  id, were ids not refused up front) is checked again as the job starts."""
  workdir = _copy(baseline, tmp_path)
  parsed = main.parse(tiny(workdir, LR))
  job, = config_lib.validate(parsed.config, parsed.cli_fields)
  with pytest.raises(config_lib.ConfigError, match=exactly(
      f"--workdir={workdir} holds job {JOB} from another config "
      f"{LR_CHANGED}; use a new --workdir, or --restart to discard the old "
      "results.")):
    runner.run_job(job, str(workdir), {})


def test_two_arms_with_one_job_id_are_refused_before_anything_runs(
    tmp_path):
  config = tmp_path / "twins.py"
  config.write_text(
      "from experiments.configs import base\n\n\ndef get_config():\n"
      "  c = base.get_base_config()\n  c.experiment = 'twins'\n"
      "  c.arms = {'bp oja': {'oja_lr': 0.003}, 'bp_oja': {'oja_lr': 0.0}}\n"
      "  c.reference_arm = 'bp_oja'\n  return c\n")
  with pytest.raises(main.UserError, match=exactly(
      "arm 'bp oja' and arm 'bp_oja' map to one job id 'bp_oja', so one "
      "would load the other's results; rename one.")) as err:
    main.check(["ojax", f"--config={config}",
                f"--workdir={tmp_path / 'run'}"])
  assert err.value.code == 2
  assert not (tmp_path / "run").exists()


def _flip(path: str) -> None:
  """Flips 64 bytes in the middle of the file ``path``."""
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    middle = max(0, len(data) // 2 - 32)
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    f.seek(0)
    f.write(data)


def _damage(step, damage: str) -> str:
  """Damages the checkpoint folder ``step``; returns what the warning's
  reason says (orbax's files are named by hashes: their first by name)."""
  files = sorted(os.path.relpath(os.path.join(root, name), step)
                 for root, _, names in os.walk(step) for name in names
                 if name != checkpoint.DIGEST)
  if damage == "flipped_array":  # The largest file: the arrays' data.
    rel = max(files, key=lambda f: os.path.getsize(step / f))
    _flip(str(step / rel))
    return f"{rel} does not match its sha256"
  if damage == "flipped_metadata":  # Orbax printed tracebacks for it.
    _flip(str(step / "state" / "array_metadatas" / "process_0"))
    return "state/array_metadatas/process_0 does not match its sha256"
  if damage == "no_digest":  # A step of an older version.
    os.remove(step / checkpoint.DIGEST)
    return f"no {checkpoint.DIGEST}: an older version's or a cut-short save"
  for rel in files:
    path = str(step / rel)
    if damage == "emptied":
      open(path, "w").close()
    elif damage == "truncated":
      os.truncate(path, os.path.getsize(path) // 2)
    elif "ocdbt" in rel or rel == "_CHECKPOINT_METADATA":
      os.remove(path)
  return files[0] + (" is missing" if damage == "removed_files" else
                     " does not match its sha256")


# (damage, the step damaged (the latest: 300 and 200 are kept), the step
# resumed from or None: the job starts over). Issue 18 item 2: 64 flipped
# bytes in the arrays of the step a job resumed from restored without a word
# and showed as a false divergence; a flipped metadata file printed "Event
# loop is closed" tracebacks as orbax rebuilt the step.
# Other damage (truncated files, no digest): test_damaged_steps_... below.
DAMAGES = [("flipped_array", 200, None), ("flipped_metadata", 300, 200),
           ("emptied", 300, 200), ("removed_files", 300, 200)]


@pytest.mark.parametrize("damage, damaged, resumed", DAMAGES,
                         ids=[f"{d}_{s}" for d, s, _ in DAMAGES])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(
    baseline, tmp_path, caplog, capfd, damage, damaged, resumed):
  workdir = _copy(baseline, tmp_path)
  os.remove(workdir / "jobs" / f"{JOB}.json")
  job_dir = workdir / "checkpoints" / JOB
  if damaged == 200:
    shutil.rmtree(job_dir / "300")
  step = job_dir / str(damaged)
  why = _damage(step, damage)
  caplog.set_level(logging.INFO, logger="ojax")
  run(tiny(workdir))
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING"]
  assert warnings == [f"checkpoint {step} is damaged ({why}); " + (
      f"resuming from step {resumed}" if resumed else
      "no good step is left: the job starts over")]
  assert [r.getMessage() for r in caplog.records
          if "resuming at" in r.getMessage()] == (
              [f"{JOB}: resuming at {resumed} samples"] if resumed else [])
  assert metrics(workdir) == metrics(baseline)
  err = capfd.readouterr().err
  assert "Traceback" not in err and "Event loop is closed" not in err
  # The damaged step was written again, good.
  assert checkpoint.why_damaged(str(step)) is None


def _saved(directory, *steps):
  """A Checkpointer of ``directory`` with a small state saved at ``steps``;
  the state; ``save(step)``."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ojax.train import Progress  # pylint: disable=import-outside-toplevel
  ckpt = checkpoint.Checkpointer(str(directory), max_to_keep=3)
  states = {"w": jnp.arange(64.0).reshape(8, 8)}

  def save(step):
    ckpt.save(Progress(step, states, [{"samples": step, "acc": 0.5}]))
  for step in steps:
    save(step)
  return ckpt, states, save


def test_damaged_steps_fall_back_in_one_line_or_start_over(tmp_path, caplog):
  ckpt, states, _ = _saved(tmp_path, 100, 200, 300)
  caplog.set_level(logging.INFO, logger="ojax")
  try:
    assert ckpt.restore(states).samples_done == 300
    whys = [_damage(tmp_path / "300", "truncated"),
            _damage(tmp_path / "200", "no_digest")]
    assert ckpt.restore(states).samples_done == 100
    _flip(str(tmp_path / "100" / "history" / "metadata"))
    assert ckpt.restore(states) is None
  finally:
    ckpt.close()
  assert whys == ["_CHECKPOINT_METADATA does not match its sha256",
                  "no ojax_digest.json: an older version's or a cut-short "
                  "save"]
  assert [r.getMessage() for r in caplog.records
          if r.levelname == "WARNING"] == [
              f"checkpoint {tmp_path}/300 is damaged (_CHECKPOINT_METADATA "
              "does not match its sha256); so are steps 200; resuming from "
              "step 100",
              f"checkpoint {tmp_path}/300 is damaged (_CHECKPOINT_METADATA "
              "does not match its sha256); so are steps 200, 100; no good "
              "step is left: the job starts over"]


def test_a_save_that_fails_leaves_no_step_without_its_digest(
    tmp_path, monkeypatch):
  ckpt, _, save = _saved(tmp_path, 100)

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(rundir, "write_json", full)  # The digest's writer.
  try:
    with pytest.raises(OSError, match="No space left on device"):
      save(200)
    assert ckpt.latest_step() == 100
  finally:
    ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ["100"]


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
    # A step counts once its digest is written (experiments.checkpoint).
    if job.exists() and any(p.name.isdigit() and (p / checkpoint.DIGEST)
                            .exists() for p in job.iterdir()):
      return
    time.sleep(0.02)


@pytest.mark.slow
def test_a_damaged_checkpoint_is_one_warning_line_and_no_traceback(
    tmp_path):
  """Orbax printed "Event loop is closed" tracebacks (from tensorstore reads
  still in flight when its restore of a damaged step raised); a damaged
  step is now never handed to orbax."""
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  cli = [sys.executable, "-m", "experiments.main", *TINY,
         f"--workdir={tmp_path / 'run'}"]
  subprocess.run(cli, cwd=ROOT, env=env, capture_output=True, check=True,
                 timeout=600)
  straight = metrics(tmp_path / "run")
  os.remove(tmp_path / "run" / "jobs" / f"{JOB}.json")
  step = tmp_path / "run" / "checkpoints" / JOB / "300"
  why = _damage(step, "flipped_metadata")
  done = subprocess.run(cli, cwd=ROOT, env=env, capture_output=True,
                        text=True, check=False, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "Traceback" not in done.stderr and "Event loop" not in done.stderr
  assert [l.split("] ", 1)[1] for l in done.stderr.splitlines()
          if l.startswith("W")] == [
              f"checkpoint {step} is damaged ({why}); resuming from step 200"]
  assert metrics(tmp_path / "run") == straight


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

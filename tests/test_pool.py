"""The worker pool (experiments/pool.py): its size, cores, flags, order, and
the lifetime of its workers: a call's error or a dead worker stops the run
and every worker, a killed parent takes its workers along, and the run
directory stays locked while a worker lives.

No JAX program is compiled here; the tests start small pools of spawned
workers that import no JAX (about a second of CPU apiece). What the command
line makes of it: tests/test_lifetime.py.
"""

import io
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

# Spawned workers import this module (for the functions they call): nothing
# here imports JAX at the top, so a worker starts in under a second.
from experiments import pool
from experiments import progress

FLAG = "--xla_cpu_multi_thread_eigen=false"


def _echo(value, delay):
  """Returns ``value`` after ``delay`` seconds (a worker's call)."""
  time.sleep(delay)
  return value


def _fail(name):
  raise ValueError(f"job {name} failed")


def _done(tracker):
  """Which of the tracker's items are marked complete."""
  return tracker._complete.tolist()  # pylint: disable=protected-access


def _tracker(n):
  return progress.Tracker([progress.Item(1)] * n, stream=io.StringIO(),
                          tty=False)


@pytest.mark.parametrize("workers,calls,expected", [
    (0, 10, 4), (0, 3, 3), (0, 1, 1), (2, 10, 2), (8, 5, 5), (1, 1, 1),
    (6, 6, 6)])
def test_size_is_workers_or_one_per_core_at_most_one_per_call(
    monkeypatch, workers, calls, expected):
  monkeypatch.setattr(pool, "cores", lambda: [0, 2, 5, 7])
  assert pool.size(workers, calls) == expected


def test_cores_follow_the_affinity(monkeypatch):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 1, 3},
                      raising=False)
  assert pool.cores() == [1, 3, 5]
  monkeypatch.delattr(os, "sched_getaffinity", raising=False)
  monkeypatch.setattr(os, "cpu_count", lambda: 3)
  assert pool.cores() == [0, 1, 2]
  monkeypatch.setattr(os, "cpu_count", lambda: None)
  assert pool.cores() == [0]


def test_cores_of_this_process():
  if hasattr(os, "sched_getaffinity"):
    assert pool.cores() == sorted(os.sched_getaffinity(0))
  assert pool.cores() and all(isinstance(c, int) for c in pool.cores())


@pytest.mark.parametrize("before,after", [
    ({}, FLAG),
    ({"XLA_FLAGS": "--xla_foo=1"}, f"--xla_foo=1 {FLAG}"),
    ({"XLA_FLAGS": ""}, FLAG),
    # The user's choice (or an earlier call) stands.
    ({"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true"},
     "--xla_cpu_multi_thread_eigen=true"),
    ({"XLA_FLAGS": FLAG}, FLAG),
])
def test_single_threaded_sets_the_given_environment(monkeypatch, before,
                                                    after):
  monkeypatch.setenv("XLA_FLAGS", "--xla_untouched=1")
  env = dict(before, OTHER="x")
  pool.single_threaded(env)
  assert env == {"XLA_FLAGS": after, "OTHER": "x"}
  assert os.environ["XLA_FLAGS"] == "--xla_untouched=1"


def test_in_process_runs_in_order_and_counts_each_item():
  calls = [pool.Call(_echo, ("a", 0), 2), pool.Call(_echo, ("b", 0), 0),
           pool.Call(_echo, ("c", 0), 1)]
  with _tracker(3) as t:
    assert pool.run(calls, t, in_process=True) == ["a", "b", "c"]
    assert _done(t) == [True, True, True]
  with _tracker(0) as t:
    assert pool.run([], t) == []


def test_in_process_raises_the_call_s_exception():
  calls = [pool.Call(_echo, ("a", 0), 0), pool.Call(_fail, ("x",), 1),
           pool.Call(_echo, ("never", 0), 2)]
  with _tracker(3) as t:
    with pytest.raises(ValueError, match="^job x failed$"):
      pool.run(calls, t, in_process=True)
    assert _done(t) == [True, False, False]


def test_workers_return_results_in_call_order(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_foo=1")
  # The first call finishes last: results still come in call order.
  calls = [pool.Call(_echo, ("slow", 1.0), 0),
           pool.Call(_echo, ("fast", 0.0), 1),
           pool.Call(_echo, ("faster", 0.0), 2)]
  with _tracker(3) as t:
    assert pool.run(calls, t, workers=2) == ["slow", "fast", "faster"]
    assert _done(t) == [True, True, True]
  assert os.environ["XLA_FLAGS"] == "--xla_foo=1"  # Restored after the run.
  # A worker's exception comes back through progress.Tracker.wait, tested
  # with a spawned worker in test_progress.py; a second pool here would cost
  # two more worker starts.


_ORPHAN_PARENT = """
import io, sys, time
from experiments import pool, progress
calls = [pool.Call(time.sleep, (120,), i) for i in range(2)]
with progress.Tracker([progress.Item(1)] * 2, stream=io.StringIO(),
                      tty=False) as t:
  pool.run(calls, t, workers=2)
"""


def _children(pid: int) -> list[int]:
  out = []
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
      except OSError:
        continue
      if int(fields[1]) == pid and fields[0] != "Z":
        out.append(int(entry))
  return out


def _alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl")
def test_workers_die_with_a_killed_parent():
  """SIGKILL of the main process (a scheduler's, `timeout -s KILL`) used to
  leave its pinned workers running, reparented to init."""
  parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_PARENT],
                            cwd=os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__))))
  try:
    deadline = time.time() + 60
    workers = []
    while time.time() < deadline and len(workers) < 2:
      time.sleep(0.5)  # Spawned workers start a Python of their own.
      workers = [c for c in _children(parent.pid)
                 if "spawn_main" in open(f"/proc/{c}/cmdline").read()]
    assert len(workers) == 2, workers
    time.sleep(3)  # Past their initializer, inside time.sleep(120).
    parent.kill()
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(map(_alive, workers)):
      time.sleep(0.2)
    assert not any(map(_alive, workers)), workers
  finally:
    if parent.poll() is None:
      parent.kill()


# --- Lifetime ----------------------------------------------------------------


def _report_until_stopped(started, marker):
  """Writes ``started``, reports progress until the run stops, then writes
  ``marker``."""
  with open(started, "w"):
    pass
  n = 0
  try:
    while True:
      n += 1
      progress.report(0, n)
      time.sleep(0.02)
  except progress.Stopped:
    with open(marker, "w") as f:
      f.write("stopped")
    raise


def _die_after(started, how):
  """Dies once ``started`` exists."""
  while not os.path.exists(started):
    time.sleep(0.02)
  if how == "exit":
    os._exit(3)  # pylint: disable=protected-access
  os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("exitcode,expected", [
    (-9, "signal 9, SIGKILL"), (-15, "signal 15, SIGTERM"),
    (-2, "signal 2, SIGINT"), (-99, "signal 99"), (3, "exit code 3"),
    (0, "exit code 0"), (None, "exit code unknown")])
def test_ending_says_how_a_process_ended(exitcode, expected):
  assert pool.ending(exitcode) == expected


@pytest.mark.parametrize("how,ended", [("kill", "signal 9, SIGKILL")])
def test_a_dead_worker_is_one_error_naming_its_job_and_stops_the_others(
    tmp_path, how, ended):
  """It was a BrokenProcessPool naming nothing; the other worker, in the
  middle of a job, stops at its next report (not killed at the deadline).
  (``how="exit"``, os._exit(3), gives "exit code 3" the same way: one
  spawn fewer in make test; ``ending`` is tested for every case.)"""
  started, marker = tmp_path / "started", tmp_path / "stopped"
  calls = [pool.Call(_report_until_stopped, (str(started), str(marker)), 0,
                     "job a"),
           pool.Call(_die_after, (str(started), how), 1, "job b=1")]
  with _tracker(2) as t:
    with pytest.raises(pool.WorkerDied) as info:
      pool.run(calls, t, workers=2)
  assert str(info.value) == f"the worker for job b=1 died ({ended})"
  assert marker.read_text() == "stopped"
  assert not multiprocessing.active_children()


def test_a_worker_s_exception_keeps_its_traceback_and_names_its_job():
  with _tracker(2) as t:
    with pytest.raises(ValueError) as info:
      pool.run([pool.Call(_fail, ("x",), 1, "job x")], t, workers=1)
  err = info.value
  assert str(err) == "job x failed"
  (note,) = err.__notes__
  assert note.startswith("ojax: job x raised this in its worker (pid ")
  assert "in _fail" in str(err.__cause__)  # The worker's traceback.
  assert not multiprocessing.active_children()


def _hold_until(started, go):
  with open(started, "w"):
    pass
  while not os.path.exists(go):
    time.sleep(0.02)


def test_the_run_directory_stays_locked_until_its_last_worker_ends(tmp_path):
  """A SIGKILL of the main process released its lock while its workers
  went on writing; now they hold the same lock until they end."""
  from experiments import rundir  # pylint: disable=import-outside-toplevel
  started, go = tmp_path / "started", tmp_path / "go"
  workdir = rundir.open_workdir(str(tmp_path / "run"), "x")
  done = []

  def run_pool():
    with _tracker(1) as t:
      done.append(pool.run([pool.Call(_hold_until, (str(started), str(go)),
                                      0, "job w")], t, workers=1))
  thread = threading.Thread(target=run_pool)
  thread.start()
  try:
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline:
      time.sleep(0.02)
    assert started.exists()
    workdir.close()  # The main process lets go; its worker has not.
    with pytest.raises(rundir.ConfigError, match="is in use by pid"):
      rundir.open_workdir(str(tmp_path / "run"), "x")
  finally:
    go.touch()
    thread.join()
  assert done == [[None]]
  rundir.open_workdir(str(tmp_path / "run"), "x").close()  # Free now.

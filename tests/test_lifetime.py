"""Process lifetime of a run (issue 18 item 1): SIGTERM, Ctrl-C and a dead
worker stop it with one line and exit codes 143, 130 and 1, leaving no
process behind; a resumed run gives the uninterrupted numbers.

The fast tests feed ``experiments.main``'s functions the ways a run stops;
the slow ones send real signals to real runs (``tests/kill_trials.py``,
which also runs on its own with more trials). The pool itself:
tests/test_pool.py.
"""

import os
import signal
import sys
import threading
import types

import pytest

from experiments import checkpoint
from experiments import main
from experiments import pool
from experiments import rundir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kill_trials  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_sigterm_inside_a_checkpoint_write_waits_for_its_end():
  """As Ctrl-C does (tests/test_resume.py): the write is not cut."""
  if threading.current_thread() is not threading.main_thread():
    pytest.skip("signals reach the main thread only")
  on_sigterm = main._on_sigterm  # pylint: disable=protected-access
  before = signal.signal(signal.SIGTERM, on_sigterm)
  finished = []
  try:
    with pytest.raises(main.Terminated):
      with checkpoint._ctrl_c_after():  # pylint: disable=protected-access
        signal.raise_signal(signal.SIGTERM)
        finished.append(True)
    assert signal.getsignal(signal.SIGTERM) is on_sigterm
  finally:
    signal.signal(signal.SIGTERM, before)
  assert finished == [True]


# What main.execute and main.main make of the ways a run stops.
W, R = "runs/x/1", "python -m experiments.main --config=c.py --workdir=W"
STOPS = [
    (KeyboardInterrupt(), 130,
     f"interrupted: 0 of 0 jobs finished in {W}. Resume with: {R}"),
    (main.Terminated(), 143,
     f"terminated: 0 of 0 jobs finished in {W}. Resume with: {R}"),
    (pool.WorkerDied("job depth=1-bp", -9), 1,
     f"the worker for job depth=1-bp died (signal 9, SIGKILL): 0 of 0 jobs "
     f"finished in {W}; the finished jobs are kept. Resume with: {R}"),
    (rundir.ConfigError("job a: bad\n  thing"), 2, "job a: bad thing"),
]


def _setup(monkeypatch, raised):
  def run(*args, **kwargs):
    raise raised
  monkeypatch.setattr(main, "harness",
                      lambda config: types.SimpleNamespace(run=run))
  parsed = types.SimpleNamespace(config=None, command="c", workers=0,
                                 tensorboard=False)
  return main.Setup(parsed, None, [], types.SimpleNamespace(path=W), R)


@pytest.mark.parametrize("raised,code,line", STOPS)
def test_execute_stops_with_one_line_and_its_exit_code(monkeypatch, raised,
                                                       code, line):
  with pytest.raises(main.UserError) as info:
    main.execute(_setup(monkeypatch, raised))
  assert (str(info.value), info.value.code) == (line, code)


@pytest.mark.parametrize("raised,code,line", STOPS)
def test_main_prints_the_line_and_exits_with_its_code(monkeypatch, capsys,
                                                      raised, code, line):
  s = _setup(monkeypatch, raised)
  monkeypatch.setattr(main, "setup", lambda parsed: s)
  monkeypatch.setattr(main, "_PARSED", [None])
  with pytest.raises(SystemExit) as info:
    main.main([])
  assert info.value.code == code
  assert capsys.readouterr().err == f"ojax: error: {line}\n"


@pytest.mark.parametrize("raised,code,line", [
    (KeyboardInterrupt(), 130,
     "interrupted before training started; nothing was run."),
    (main.Terminated(), 143,
     "terminated before training started; nothing was run.")])
def test_a_stop_before_training_is_one_line(monkeypatch, capsys, raised,
                                            code, line):
  def setup(parsed):
    raise raised
  monkeypatch.setattr(main, "setup", setup)
  monkeypatch.setattr(main, "_PARSED", [None])
  with pytest.raises(SystemExit) as info:
    main.main([])
  assert info.value.code == code
  assert capsys.readouterr().err == f"ojax: error: {line}\n"


def test_a_stop_after_the_run_finished_is_one_line(monkeypatch, capsys,
                                                   tmp_path):
  summary = tmp_path / "summary.md"
  summary.write_text("# done")
  s = _setup(monkeypatch, None)
  monkeypatch.setattr(main, "setup", lambda parsed: s)
  monkeypatch.setattr(main, "execute", lambda s: str(summary))
  monkeypatch.setattr(main, "_PARSED", [None])

  def info(*args):
    raise main.Terminated()
  monkeypatch.setattr(main.logging, "info", info)
  with pytest.raises(SystemExit) as got:
    main.main([])
  assert got.value.code == 143
  assert capsys.readouterr().err == (
      f"ojax: error: terminated after the run had finished; its results are "
      f"in {W}.\n")


def test_a_bug_keeps_its_traceback_with_where_the_run_stopped(monkeypatch):
  with pytest.raises(ZeroDivisionError) as info:
    main.execute(_setup(monkeypatch, ZeroDivisionError("bug")))
  assert info.value.__notes__ == [
      f"ojax: error: 0 of 0 jobs finished in {W}; the finished jobs are "
      "kept."]


# --- Real signals to real runs (make test-slow) ------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_kill_trials_of_the_job_runner(tmp_path):
  """SIGKILL, SIGTERM and SIGINT of the main process, SIGKILL of a worker:
  each stops within seconds (143, 130 and 1 with one line), leaves no
  process, and the resumed run's numbers are the uninterrupted run's."""
  assert kill_trials.main([
      "--trials=1", "--signals=KILL,TERM,INT,WORKER",
      f"--root={tmp_path}"]) == 0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_kill_trials_of_meta_plasticity(tmp_path):
  """The meta harness uses the same pool and stops the same way."""
  assert kill_trials.main([
      "--trials=1", "--signals=TERM,INT,WORKER", "--name=meta_plasticity",
      f"--root={tmp_path}"]) == 0

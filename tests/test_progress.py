"""Progress of a run (experiments/progress.py) and its TensorBoard curves
(experiments/events.py)."""

import concurrent.futures
import io
import json
import logging
import multiprocessing
import os
import shutil
import struct
import threading

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import events
from experiments import progress
from experiments import report
from experiments import runner
from experiments.configs import deep_online


class Clock:
  """A clock the test moves by hand."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _tracker(items, tty, clock, stream=None):
  return progress.Tracker(items, stream=stream, tty=tty, clock=clock)


def test_line_weighs_jobs_by_cost_and_times_work_after_the_first_chunk():
  clock = Clock()
  items = [progress.Item(100, scale=2, cost=1.0),
           progress.Item(100, scale=2, cost=3.0)]
  with _tracker(items, False, clock) as t:
    assert t.line() == "jobs 0/2 | 0% | elapsed 0s | left: estimating"
    clock.now = 5.0
    progress.report(1, 10)  # The first chunk (compiling): not timed.
    assert t.line() == "jobs 0/2 | 7% | elapsed 5s | left: estimating"
    clock.now = 15.0
    progress.report(1, 60)  # 50 samples x 2 points in 10 s.
    # 3 * 0.6 / 4 = 45% done; cost rate 3 * 0.5 / 10 s: 2.2 / 0.15 s left.
    assert t.line() == ("jobs 0/2 | 45% | 10 samples/s | elapsed 15s | "
                        "left ~20s")
    clock.now = 75.0
    progress.report(1, 100)
    progress.report(0, 100)
    assert t.line() == "jobs 2/2 | 100% | 5.43 samples/s | elapsed 1m15s"


def test_resumed_and_finished_work_counts_as_done_but_not_in_the_rate():
  clock = Clock()
  items = [progress.Item(1000), progress.Item(1000), progress.Item(1000)]
  with _tracker(items, False, clock) as t:
    t.complete(0)  # Finished in an earlier session.
    progress.resume(1, 500)  # Resumed from its checkpoint at 500.
    assert t.line() == "jobs 1/3 | 50% | elapsed 0s | left: estimating"
    clock.now = 10.0
    progress.report(1, 600)
    clock.now = 20.0
    progress.report(1, 800)
    # 200 samples in the 10 s after the first chunk; 1,200 left.
    assert t.line() == "jobs 1/3 | 60% | 20 samples/s | elapsed 20s | left ~1m"
    progress.resume(1, 900)  # E.g. a seed that stopped early: no work.
    assert t.line() == "jobs 1/3 | 63% | 20 samples/s | elapsed 20s | left ~60s"
    t.complete(2)  # Its future returned early (e.g. a plateau): done.
    assert t.line().startswith("jobs 2/3 | 96% |")


def test_terminal_line_is_redrawn_in_place_at_most_twice_a_second():
  clock, out = Clock(), io.StringIO()
  with _tracker([progress.Item(100)], True, clock, out):
    for i in range(1, 10):  # Nine updates within 0.45 s: one redraw.
      clock.now = 0.05 * i
      progress.report(0, i)
    assert out.getvalue().count("jobs") == 1
    clock.now = 0.6
    progress.report(0, 50)
    assert out.getvalue().count("jobs") == 2
  text = out.getvalue()
  draws = [d for d in text.split("\r") if d.strip()]
  assert len(draws) == 3  # 49 samples in the 0.55 s after the first chunk:
  assert draws[-1] == ("jobs 0/1 | 50% | 89.1 samples/s | elapsed 1s | "
                       "left ~10s\n")
  assert "\n" not in text[:-1]  # One line, rewritten.


def test_log_lines_come_every_30_seconds_and_at_the_end(caplog):
  clock = Clock()
  with caplog.at_level(logging.INFO, logger="ojax"):
    with _tracker([progress.Item(100)], False, clock):
      for i in range(1, 100):
        clock.now = i
        progress.report(0, i)
  lines = [r.getMessage() for r in caplog.records if r.name == "ojax"]
  assert [line.split(" | ")[2] for line in lines] == [
      "1 samples/s", "1 samples/s", "1 samples/s", "1 samples/s"]
  assert lines[0].startswith("jobs 0/1 | 30% |")
  assert lines[-1] == "jobs 0/1 | 99% | 1 samples/s | elapsed 1m39s | left ~10s"


def test_close_on_an_error_ends_the_line_and_leaves_nothing_running():
  clock, out = Clock(), io.StringIO()
  threads = threading.active_count()
  with pytest.raises(RuntimeError):
    with _tracker([progress.Item(10)], True, clock, out):
      progress.report(0, 3)
      raise RuntimeError("stop")
  assert out.getvalue().endswith("\n")
  assert threading.active_count() == threads
  assert not multiprocessing.active_children()
  assert progress._TRACKER is None and progress._SHARED is None  # pylint: disable=protected-access
  progress.report(0, 5)  # After the run: a no-op.


def test_spawned_workers_feed_the_tracker_and_stop_with_the_run():
  clock = Clock()
  ctx = multiprocessing.get_context("spawn")
  with _tracker([progress.Item(100), progress.Item(100)], False,
                clock) as t:
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=ctx, initializer=progress.attach,
        initargs=(t.shared,)) as pool:
      concurrent.futures.wait([pool.submit(progress.resume, 0, 40),
                               pool.submit(progress.report, 1, 100)])
      t.poll()
      assert t.line().startswith("jobs 1/2 | 70% |")
      pool.submit(progress.report, 0, 70).result()
      t.complete(0)  # Its count stops short: complete counts it whole.
      assert t.line() == "jobs 2/2 | 100% | elapsed 0s"
      t.stop()  # The run stops (experiments.pool.run on an error):
      with pytest.raises(progress.Stopped):  # so do the workers.
        pool.submit(progress.report, 1, 100).result()


def _read_events(path):
  """(step, tag, value) of every scalar in a TensorBoard event file."""
  from tensorboardX.proto.event_pb2 import Event  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  out, pos = [], 0
  while pos < len(data):
    (n,), pos = struct.unpack("<Q", data[pos:pos + 8]), pos + 12
    event = Event.FromString(data[pos:pos + n])
    pos += n + 4
    out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
  return out


def _run_events(run_dir):
  found = {}
  for root, _, files in os.walk(os.path.join(run_dir, events.DIR)):
    names = [f for f in files if f.startswith("events.out.tfevents")]
    if names:
      assert len(names) == 1, root
      found[os.path.relpath(root, run_dir)] = _read_events(
          os.path.join(root, names[0]))
  return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, fast_runs):  # pylint: disable=unused-argument
  """A tiny sweep (2 lr x 2 seeds, a split per seed): its run directory and
  the metrics.jsonl rows of its results."""
  c = deep_online.get_config()  # split_per_seed: split job k holds seed k.
  c.dataset, c.seeds, c.num_samples, c.eval_every = "digits", 2, 100, 50
  c.passes, c.tune = 0, False  # num_samples; no tuning arms.
  c.axis_values, c.model.width = (1,), 8
  c.arms = {"bp": {"oja_lr": 0.0}}
  c.claim = None  # No bp_oja arm: no claim.
  config_lib._set(c, "sweep.lr", (0.01, 0.03))  # pylint: disable=protected-access
  run_dir = str(tmp_path_factory.mktemp("run"))
  prepared = runner.prepare(c)
  results = runner.run_jobs(prepared.jobs, run_dir, prepared.data)
  rows = list(report.metric_rows(runner.merge_splits(results, prepared.jobs),
                                 c.experiment))  # metrics.jsonl's rows.
  return run_dir, prepared, json.loads(json.dumps(report.jsonable(rows)))


def test_a_run_writes_tensorboard_curves_equal_to_metrics_jsonl(tiny_run):
  run_dir, _, rows = tiny_run
  found = _run_events(run_dir)
  expected = {}
  for r in rows:
    run = f"tensorboard/depth=1/bp/lr={r['lr']:g}/seed_{r['seed']}"
    for key, value in r.items():
      if key in ("experiment", "job", "axis", "axis_value", "arm", "lr",
                 "seed", "samples", "diverged_at", "data_split"):
        continue
      tags = ([(f"diagnostics/{key}/layer_{i}", v) for i, v in
               enumerate(value)] if isinstance(value, list) else
              [(key, value)])
      for tag, v in tags:
        if v is not None:  # Online metrics before the first step.
          expected[run, r["samples"], tag] = float(np.float32(v))
  got = [((run, step, tag), v) for run, evs in found.items()
         for step, tag, v in evs]
  assert sorted(found) == [f"tensorboard/depth=1/bp/lr={lr}/seed_{s}"
                           for lr in ("0.01", "0.03") for s in (0, 1)]
  assert dict(got) == expected and len(got) == len(expected)
  assert {k[2] for k in expected} >= {
      "test_accuracy", "test_loss", "online_accuracy", "train_loss",
      "diagnostics/weight_norm/layer_1"}
  assert {k[1] for k in expected} == {0, 50, 100}
  # What `tensorboard --logdir` reads (tensorboard is a test dependency).
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(
      os.path.join(run_dir, "tensorboard/depth=1/bp/lr=0.03/seed_1")).Reload()
  assert [(e.step, e.value) for e in acc.Scalars("test_accuracy")] == [
      (k[1], v) for k, v in sorted(expected.items())
      if k[0].endswith("lr=0.03/seed_1") and k[2] == "test_accuracy"]


def test_finished_jobs_write_missing_curves_once_and_none_when_off(
    tiny_run, tmp_path):
  run_dir, prepared, _ = tiny_run
  shutil.copytree(os.path.join(run_dir, "jobs"), tmp_path / "jobs")
  job, data = prepared.jobs[1], prepared.data  # Split 1: seed_1.
  runner.run_job(job, str(tmp_path), data, tensorboard=False)  # Loaded.
  assert not (tmp_path / events.DIR).exists()
  result = runner.run_job(job, str(tmp_path), data)
  leaves = {f"tensorboard/depth=1/bp/lr={lr}/seed_1" for lr in
            ("0.01", "0.03")}
  first = _run_events(tmp_path)
  assert set(first) == leaves
  assert first == {k: v for k, v in _run_events(run_dir).items()
                   if k in leaves}
  shutil.rmtree(tmp_path / "tensorboard/depth=1/bp/lr=0.01/seed_1")
  runner.run_job(job, str(tmp_path), data)  # Writes the missing one.
  assert _run_events(tmp_path) == first
  events.write(str(tmp_path), result)  # Replaces, never appends.
  assert _run_events(tmp_path) == first
  assert os.listdir(tmp_path / "tensorboard/depth=1/bp/lr=0.01") == [
      "seed_1"]


def test_a_job_with_too_many_curves_writes_none_and_says_so(tmp_path, caplog,
                                                            monkeypatch):
  job = config_lib.Job("big", None, "val", deep_online.get_config())
  job.config.axis = ""
  points = events.MAX_CURVES + 1  # One seed each: one curve too many.
  history = {"samples": np.array([0, 10]),
             "test_accuracy": np.zeros((2, points, 1)),
             "diverged_at": np.full((2, points, 1), -1)}
  result = runner.JobResult(job, [{"lr": 0.1 + i} for i in range(points)],
                            history)
  with caplog.at_level(logging.INFO, logger="ojax"):
    events.write(str(tmp_path), result)
  assert not (tmp_path / events.DIR).exists()
  assert [r.getMessage() for r in caplog.records] == [
      f"big: no TensorBoard curves ({points} grid points x seeds > "
      f"{events.MAX_CURVES}); its numbers are in metrics.jsonl"]
  monkeypatch.setattr(events, "MAX_CURVES", points)  # At the cap: written.
  events.write(str(tmp_path), result)
  assert len(os.listdir(tmp_path / events.DIR / "val")) == points

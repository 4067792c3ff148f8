"""Run directories (experiments/rundir.py): lock, resume check, the writer.

Pure Python: no JAX program is compiled. Expected messages and file contents
are written out by hand from the module's documentation.
"""

import datetime
import json
import logging
import math
import os
import types

import numpy as np
import pytest

from experiments import config as config_lib
from experiments import rundir
from experiments.config import ConfigError, Job
from experiments.configs import base


def _job(job_id: str = "bp", **fields) -> Job:
  """A job on a small base config; ``fields``: top-level overrides."""
  c = base.get_base_config()
  c.experiment = "t"
  c.seeds, c.num_samples, c.eval_every = 2, 300, 100
  with c.unlocked():
    for k, v in fields.items():
      setattr(c, k, v)
  return Job(job_id, None, "bp", c)


def _strict(text: str):
  """``json.loads`` that refuses NaN and the infinities."""

  def refuse(name):
    raise ValueError(f"non-strict JSON constant {name}")

  return json.loads(text, parse_constant=refuse)


# --- The lock and the directory checks --------------------------------------


def test_a_second_open_of_a_locked_workdir_is_refused_until_it_closes(
    tmp_path):
  # flock locks belong to an open file description: a second open() in this
  # process conflicts with the first just as another process would.
  path = str(tmp_path / "run")
  first = rundir.open_workdir(path, "t")
  try:
    with open(os.path.join(path, ".lock")) as f:
      assert f.read() == f"pid {os.getpid()}"
    with pytest.raises(ConfigError) as err:
      rundir.open_workdir(path, "t")
    message = str(err.value)
    assert message == (f"--workdir={path} is in use by pid {os.getpid()}; "
                       "wait for it to finish or choose another --workdir.")
    assert "\n" not in message
  finally:
    first.close()
  again = rundir.open_workdir(path, "t")  # Released by close().
  again.close()


def test_lock_false_skips_the_lock(tmp_path):
  path = str(tmp_path / "run")
  first = rundir.open_workdir(path, "t")
  try:
    other = rundir.open_workdir(path, "t", lock=False)
    other.close()
  finally:
    first.close()


def test_without_a_path_every_run_gets_a_fresh_directory(tmp_path,
                                                         monkeypatch):
  class Fixed(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
      return cls(2026, 1, 2, 3, 4, 5)

  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(rundir, "datetime", types.SimpleNamespace(
      datetime=Fixed))
  a = rundir.open_workdir(None, "exp")
  b = rundir.open_workdir(None, "exp")  # In the same second.
  try:
    assert a.path == os.path.join("runs", "exp", "20260102-030405")
    assert b.path == os.path.join("runs", "exp", "20260102-030405-2")
  finally:
    a.close()
    b.close()


def test_a_file_is_refused_as_workdir_in_one_line(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  with pytest.raises(ConfigError, match="^--workdir=.* is an existing file; "
                     "give a directory.$"):
    rundir.open_workdir(str(path), "t")
  with pytest.raises(ConfigError) as err:
    rundir.open_workdir(str(path / "sub"), "t")
  assert str(err.value) == (f"--workdir={path / 'sub'} cannot be created: "
                            f"{path} is a file.")
  assert os.listdir(tmp_path) == ["file"]  # Nothing created.


def test_an_unwritable_workdir_is_refused_in_one_line(tmp_path, monkeypatch):
  # Tests may run as root, whom chmod does not stop: the probe fails instead.
  def no_files(*args, **kwargs):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(rundir.tempfile, "mkstemp", no_files)
  with pytest.raises(ConfigError) as err:
    rundir.open_workdir(str(tmp_path), "t")
  assert str(err.value) == (f"--workdir={tmp_path} is not writable: "
                            "Permission denied.")
  with pytest.raises(ConfigError) as err:
    rundir.check_workdir(str(tmp_path / "a" / "b"))
  assert str(err.value) == (f"--workdir={tmp_path / 'a' / 'b'} cannot be "
                            f"created in {tmp_path}: Permission denied.")
  assert not os.path.exists(tmp_path / "a")


# --- The resume check ----------------------------------------------------


def _stored(run_dir, job: Job) -> None:
  """``job``'s fingerprint stored beside a checkpoint at step 100."""
  rundir.write_fingerprint(run_dir, job)
  os.makedirs(os.path.join(rundir.job_paths(run_dir, job)[1], "100"))


def _resume_error(run_dir, job: Job) -> str:
  """The refusal of ``check_resume`` (one line), or '' if it resumes."""
  try:
    rundir.check_resume(run_dir, [job], restart=False)
  except ConfigError as err:
    assert "\n" not in str(err)
    return str(err)
  return ""


# (stored job's fields, present job's fields, part of the refusal or "").
RESUMES = [
    ({}, {}, ""),
    ({"num_samples": 300}, {"num_samples": 400},
     "holds job bp from another config (num_samples: 300 -> 400); use a new "
     "--workdir, or --restart"),
    ({"lr": 0.01}, {"lr": 0.02}, "(lr: 0.01 -> 0.02)"),
    ({"seed": 0}, {"seed": 1}, "(seed: 0 -> 1)"),
    # Fields that do not change the numbers (config.NOT_NUMERIC).
    ({"checkpoint_every": 100}, {"checkpoint_every": 50}, ""),
    # eval_batch_size does, in test_loss's last bits (issue 18 item 6).
    ({"eval_batch_size": 100}, {"eval_batch_size": 7},
     "(eval_batch_size: 100 -> 7)"),
    ({"experiment": "t"}, {"experiment": "u"}, ""),
    # config.GROWABLE: meta_steps may grow on resume, never shrink.
    ({"meta_steps": 10}, {"meta_steps": 20}, ""),
    ({"meta_steps": 20}, {"meta_steps": 10}, "(meta_steps: 20 -> 10)"),
    # A field the stored run did not have.
    ({}, {"extra_field": 3}, "(extra_field: '<unset>' -> 3)"),
]


@pytest.mark.parametrize("old,new,refusal", RESUMES, ids=[
    "same", "num_samples", "lr", "seed", "checkpoint_every",
    "eval_batch_size", "experiment", "meta_steps_grows",
    "meta_steps_shrinks", "new_field"])
def test_check_resume_by_stored_fingerprint(tmp_path, old, new, refusal):
  _stored(str(tmp_path), _job(**old))
  message = _resume_error(str(tmp_path), _job(**new))
  if refusal:
    assert refusal in message, message
    assert message.startswith(f"--workdir={tmp_path} ")
  else:
    assert message == ""


def test_a_result_of_another_config_is_refused(tmp_path):
  result_path = rundir.job_paths(str(tmp_path), _job())[0]
  os.makedirs(os.path.dirname(result_path))
  old = config_lib.fingerprint(_job(num_samples=300).config)
  rundir.write_json(result_path, {"job": "bp", "fingerprint": old})
  assert "(num_samples: 300 -> 400)" in _resume_error(
      str(tmp_path), _job(num_samples=400))
  assert _resume_error(str(tmp_path), _job(num_samples=300)) == ""


def test_more_than_four_differences_are_cut_short(tmp_path):
  _stored(str(tmp_path), _job())
  message = _resume_error(str(tmp_path), _job(a=1, b=2, c=3, d=4, e=5))
  assert ("(a: '<unset>' -> 1; b: '<unset>' -> 2; c: '<unset>' -> 3; "
          "d: '<unset>' -> 4; ...)") in message


@pytest.mark.parametrize("damage", [None, "{not json", "[1, 2]"])
def test_checkpoints_without_a_readable_fingerprint_are_refused(tmp_path,
                                                                damage):
  job = _job()
  _stored(str(tmp_path), job)
  fp_path = rundir.job_paths(str(tmp_path), job)[2]
  if damage is None:
    os.remove(fp_path)
  else:
    with open(fp_path, "w") as f:
      f.write(damage)
  assert _resume_error(str(tmp_path), job) == (
      f"--workdir={tmp_path}: job bp has checkpoints but "
      f"{os.path.join('checkpoints', 'bp', 'fingerprint.json')} is missing "
      "or damaged, so they cannot be checked against this config; use a new "
      "--workdir, or --restart to discard them.")
  # Without checkpoints there is nothing to check: it starts afresh.
  os.rmdir(os.path.join(rundir.job_paths(str(tmp_path), job)[1], "100"))
  assert _resume_error(str(tmp_path), job) == ""


def test_restart_clears_all_but_what_it_keeps(tmp_path):
  run_dir = str(tmp_path)
  _stored(run_dir, _job(num_samples=300))
  for name in rundir.RESTART_KEEPS + ("report.md",):
    (tmp_path / name).write_text(name)
  os.symlink(str(tmp_path / "run.log"), str(tmp_path / "link"))
  rundir.check_resume(run_dir, [_job(num_samples=400)], restart=True)
  assert sorted(os.listdir(run_dir)) == sorted(rundir.RESTART_KEEPS)
  assert (tmp_path / "run.log").read_text() == "run.log"
  assert _resume_error(run_dir, _job(num_samples=400)) == ""


def test_where_stopped_names_finished_and_partial_jobs(tmp_path):
  run_dir = str(tmp_path)
  jobs = [_job("a"), _job("b"), _job("c")]
  assert rundir.where_stopped(run_dir, jobs) == "0 of 3 jobs finished"
  result_path = rundir.job_paths(run_dir, jobs[0])[0]
  os.makedirs(os.path.dirname(result_path))
  rundir.write_json(result_path, {})
  for step in ("100", "200", "tmp-300"):
    os.makedirs(os.path.join(rundir.job_paths(run_dir, jobs[1])[1], step))
  assert rundir.where_stopped(run_dir, jobs) == (
      "1 of 3 jobs finished; last checkpoint of b at 200/300 samples")


def test_steps_are_the_numeric_folders_in_order(tmp_path):
  assert not rundir.steps(str(tmp_path / "none"))
  for name in ("1000", "200", "30", "tmp", "fingerprint.json"):
    os.makedirs(tmp_path / name)
  assert rundir.steps(str(tmp_path)) == [30, 200, 1000]


# --- The one writer ---------------------------------------------------------


def test_write_json_is_strict_json(tmp_path):
  path = str(tmp_path / "x.json")
  obj = {"nan": math.nan, "inf": [1.5, math.inf, -math.inf],
         "array": np.array([[1.0, np.nan], [np.inf, 2.0]]),
         "finite": np.array([0.5, 1.0], np.float32),
         "ints": np.array([1, 2]), "scalar": np.float32(-np.inf),
         "int": np.int64(3), "nested": ({"a": np.float64(np.nan)},)}
  assert rundir.write_json(path, obj) == path
  with open(path) as f:
    text = f.read()
  assert _strict(text) == {
      "nan": None, "inf": [1.5, None, None],
      "array": [[1.0, None], [None, 2.0]], "finite": [0.5, 1.0],
      "ints": [1, 2], "scalar": None, "int": 3, "nested": [{"a": None}]}
  assert os.listdir(tmp_path) == ["x.json"]


def test_write_jsonl_writes_one_strict_line_per_row(tmp_path):
  path = str(tmp_path / "x.jsonl")
  rundir.write_jsonl(path, iter([{"a": 1}, {"a": math.nan}, [np.inf]]))
  with open(path) as f:
    lines = f.read().split("\n")
  assert lines == ['{"a": 1}', '{"a": null}', "[null]", ""]
  assert [_strict(ln) for ln in lines[:-1]] == [{"a": 1}, {"a": None},
                                                [None]]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "x.jsonl")
  rundir.write_jsonl(path, [{"old": 1}])

  def rows():
    yield {"new": 1}
    yield {"new": 2}
    raise OSError(28, "No space left on device")

  with pytest.raises(OSError, match="No space left"):
    rundir.write_jsonl(path, rows())
  assert os.listdir(tmp_path) == ["x.jsonl"]
  with open(path) as f:
    assert f.read() == '{"old": 1}\n'
  with pytest.raises(TypeError):  # Refused before a byte is written.
    rundir.write_json(path, {"bad": {1, 2}})
  assert os.listdir(tmp_path) == ["x.jsonl"]
  with open(path) as f:
    assert f.read() == '{"old": 1}\n'


def test_write_text_replaces_the_file(tmp_path):
  path = str(tmp_path / "a.md")
  rundir.write_text(path, "old")
  rundir.write_text(path, "new")
  assert (tmp_path / "a.md").read_text() == "new"
  assert os.listdir(tmp_path) == ["a.md"]


def test_read_json_of_a_damaged_or_missing_file_is_none(tmp_path, caplog):
  damaged = tmp_path / "d.json"
  damaged.write_text('{"a": [1, 2')
  with caplog.at_level(logging.WARNING, logger="ojax"):
    assert rundir.read_json(str(damaged)) is None
  assert len(caplog.records) == 1
  assert caplog.records[0].getMessage().startswith(
      f"{damaged} is damaged (")
  assert caplog.records[0].getMessage().endswith("); rebuilding it")
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="ojax"):
    assert rundir.read_json(str(damaged), warn=False) is None
    assert rundir.read_json(str(tmp_path / "missing.json"),
                            warn=False) is None
  assert not caplog.records


def test_read_json_reads_strict_files_and_older_bare_nan(tmp_path):
  path = str(tmp_path / "x.json")
  rundir.write_json(path, {"a": [1.0, math.nan]})
  assert rundir.read_json(path) == {"a": [1.0, None]}
  (tmp_path / "old.json").write_text('{"a": [1.0, NaN]}')
  old = rundir.read_json(str(tmp_path / "old.json"))
  assert old["a"][0] == 1.0 and math.isnan(old["a"][1])

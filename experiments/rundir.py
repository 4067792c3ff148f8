"""Run directories: the lock, the fingerprints, the resume check, the writer.

Guarantees (docs/running.md):

- One run at a time: ``fcntl.flock`` on ``<run_dir>/.lock``; a second
  process gets a ``ConfigError`` at once. The lock stays until no writer of
  the run is left: the worker processes hold the same open lock file
  (``experiments.pool.hold_in_workers``), and the kernel releases it when
  the last of them and the main process has ended, however they end (a
  SIGKILL of the main process kills its workers: ``pool.die_with_parent``).
- Without ``--workdir`` every run gets a fresh directory, never reused.
- A job stores a fingerprint of its resolved config (every field that changes
  its numbers) beside its checkpoints (``checkpoints/<id>/fingerprint.json``)
  and in its result (``jobs/<id>.json``); :func:`check_resume` refuses a run
  directory whose stored fingerprints differ from the present ones.
- Every file is written by one writer (:func:`write_text`, and on it
  :func:`write_json` and :func:`write_jsonl`): to a temporary name, then
  renamed, so a reader sees the old file or the new one, never half; JSON is
  strict (a non-finite number is written as ``null``).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import math
import os
import shutil
import tempfile
from typing import Any, Iterable, NamedTuple, Optional

import numpy as np

from experiments import config as config_lib
from experiments import pool
from experiments.config import ConfigError, Job

_log = logging.getLogger("ojax")
# Files a --restart keeps: the lock and what a caller (experiments/results.py)
# writes into the run directory around the run.
RESTART_KEEPS = (".lock", "run.log", "results_run.json")


# --- The one writer ----------------------------------------------------------


def jsonable(x: Any) -> Any:
  """Plain JSON types; non-finite floats become None (strict JSON)."""
  if isinstance(x, dict):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    if x.dtype.kind == "f":
      finite = np.isfinite(x)
      if finite.all():
        return x.tolist()
      x = x.astype(object)
      x[~finite] = None
    return jsonable(x.tolist())
  if isinstance(x, np.generic):
    return jsonable(x.item())
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def _atomic(path: str, write) -> str:
  """Calls ``write(file)`` on ``<path>.tmp``, then renames it to ``path``.

  A failed write (e.g. a full disk) leaves the old file and no ``.tmp``.
  """
  tmp = f"{path}.tmp"
  try:
    with open(tmp, "w") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_text(path: str, text: str) -> str:
  """Writes ``text`` to ``path`` atomically; returns ``path``."""
  return _atomic(path, lambda f: f.write(text))


def write_json(path: str, obj: Any, indent: Optional[int] = 1) -> str:
  """Writes ``obj`` as strict JSON (NaN and infinities as ``null``),
  atomically; returns ``path``."""
  return write_text(path, json.dumps(jsonable(obj), indent=indent,
                                     allow_nan=False))


def write_jsonl(path: str, rows: Iterable[Any]) -> str:
  """Writes one strict-JSON line per row, atomically; returns ``path``."""

  def write(f):
    for row in rows:
      f.write(json.dumps(jsonable(row), allow_nan=False) + "\n")

  return _atomic(path, write)


def read_json(path: str, warn: bool = True) -> Optional[Any]:
  """The JSON in ``path``, or None (with a warning) if it is damaged.

  Non-finite numbers are ``null`` (files of older versions may hold bare
  ``NaN``, which is read too); a reader that wants numbers maps ``null`` to
  NaN (``experiments.schema.array``).
  """
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as err:
    if warn:
      _log.warning("%s is damaged (%s); rebuilding it", path,
                   " ".join(str(err).split())[:120])
    return None


# --- Creating and locking --------------------------------------------------


class Workdir(NamedTuple):
  path: str
  lock: Any  # The open lock file; closing it releases the lock.

  def close(self) -> None:
    """Releases the lock (once the workers holding it too have ended)."""
    pool.release_in_workers(self.lock)
    self.lock.close()


def _writable_dir(path: str) -> Optional[str]:
  """Why no file can be created in the directory ``path``, or None."""
  try:
    fd, probe = tempfile.mkstemp(prefix=".ojax-probe-", dir=path)
  except OSError as err:
    return err.strerror or str(err)
  os.close(fd)
  os.remove(probe)
  return None


def check_workdir(path: Optional[str]) -> None:
  """Refuses a ``--workdir`` that cannot be a run directory, creating nothing.

  It must be a directory, or not exist yet under a directory (the nearest
  existing ancestor) where files can be created.
  """
  if path is None:
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"--workdir={path} is an existing file; give a "
                      "directory.")
  parent = os.path.abspath(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ConfigError(f"--workdir={path} cannot be created: {parent} is a "
                      "file.")
  why = _writable_dir(parent)
  if why:
    what = "is not writable" if parent == os.path.abspath(path) else (
        f"cannot be created in {parent}")
    raise ConfigError(f"--workdir={path} {what}: {why}.")


def open_workdir(path: Optional[str], experiment: str,
                 lock: bool = True) -> Workdir:
  """Creates (or reopens) a run directory and locks it for this process.

  Without ``path`` a fresh ``runs/<experiment>/<timestamp>[-n]`` is created
  atomically (``os.mkdir`` fails if it exists), so two runs never share one.
  The lock is ``fcntl.flock`` on ``<path>/.lock``: held until the process
  ends (or :meth:`Workdir.close`) and every worker it started ends; a
  second process gets a ``ConfigError`` at once instead of waiting.
  ``lock=False`` (the other hosts of a ``--distributed`` run, which share
  the lead host's directory) skips it.
  """
  if path is None:
    root = os.path.join("runs", experiment or "run")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
      os.makedirs(root, exist_ok=True)
      for n in range(1, 10000):
        path = os.path.join(root, stamp if n == 1 else f"{stamp}-{n}")
        try:
          os.mkdir(path)
          break
        except FileExistsError:
          continue
    except OSError as err:
      raise ConfigError(f"cannot create a run directory in "
                        f"{os.path.abspath(root)}: {err.strerror}; pass "
                        "--workdir.") from None
  else:
    check_workdir(path)
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as err:
      raise ConfigError(f"--workdir={path} cannot be created: "
                        f"{err.strerror}.") from None
  if not lock:
    return Workdir(path, open(os.devnull))  # pylint: disable=consider-using-with
  try:
    lock_file = open(os.path.join(path, ".lock"), "a+")  # pylint: disable=consider-using-with
  except OSError as err:
    raise ConfigError(f"--workdir={path} is not writable: {err.strerror}."
                      ) from None
  try:
    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock_file.seek(0)
    owner = lock_file.read().strip() or "another process"
    lock_file.close()
    raise ConfigError(f"--workdir={path} is in use by {owner}; wait for it "
                      "to finish or choose another --workdir.") from None
  lock_file.seek(0)
  lock_file.truncate()
  lock_file.write(f"pid {os.getpid()}")
  lock_file.flush()
  pool.hold_in_workers(lock_file)  # Locked until the last writer is gone.
  return Workdir(path, lock_file)


# --- Fingerprints and the resume check -------------------------------------


def job_paths(run_dir: str, job: Job) -> tuple[str, str, str]:
  """``(jobs/<id>.json, checkpoints/<id>, checkpoints/<id>/fingerprint.json)``
  of a job in ``run_dir``."""
  ckpt = os.path.join(run_dir, "checkpoints", job.id)
  return (os.path.join(run_dir, "jobs", f"{job.id}.json"), ckpt,
          os.path.join(ckpt, "fingerprint.json"))


def write_fingerprint(run_dir: str, job: Job) -> dict[str, Any]:
  """Writes the job's fingerprint beside its checkpoints; returns it."""
  fp = config_lib.fingerprint(job.config)
  path = job_paths(run_dir, job)[2]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  write_json(path, fp, indent=None)
  return fp


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """The fields that differ, but for a ``config_lib.GROWABLE`` one raised."""
  keys = sorted(set(old) | set(new))
  grown = lambda k: (k in config_lib.GROWABLE and k in old and k in new  # pylint: disable=unnecessary-lambda-assignment
                     and new[k] > old[k])
  return [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
          for k in keys if old.get(k) != new.get(k) and not grown(k)]


def steps(ckpt_dir: str) -> list[int]:
  """The finished checkpoint steps in ``ckpt_dir`` (orbax step folders)."""
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())


def check_resume(run_dir: str, jobs: list[Job], restart: bool) -> None:
  """Refuses to reuse a job's results or checkpoints under another config.

  Each job's fingerprint is stored twice: in ``checkpoints/<id>/
  fingerprint.json`` (written before its first checkpoint) and in its result
  ``jobs/<id>.json``. Any stored fingerprint that differs from the job's
  present one is a ``ConfigError`` naming the fields; so is a job with
  checkpoints whose fingerprint cannot be read (they cannot be checked).
  The run calls it before it starts, and ``runner.run_job`` again for its
  job as the job starts (the job's files may have been written since). With
  ``restart`` everything in ``run_dir`` but :data:`RESTART_KEEPS` is
  removed first. A run without jobs (meta_plasticity) is one job named
  ``run``, whose fingerprint sits in ``checkpoints/run/fingerprint.json``.
  """
  if restart:
    for name in os.listdir(run_dir):
      if name in RESTART_KEEPS:
        continue
      target = os.path.join(run_dir, name)
      if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
      elif os.path.lexists(target):
        os.remove(target)
    return
  for job in jobs:
    fp = config_lib.fingerprint(job.config)
    result_path, ckpt_dir, fp_path = job_paths(run_dir, job)
    result = (read_json(result_path, warn=False)
              if os.path.exists(result_path) else None)
    stored_fp = (read_json(fp_path, warn=False)
                 if os.path.exists(fp_path) else None)
    result_fp = result.get("fingerprint") if isinstance(result, dict) else None
    for old in (result_fp, stored_fp):
      diff = _differences(old, fp) if isinstance(old, dict) else []
      if diff:
        raise ConfigError(
            f"--workdir={run_dir} holds job {job.id} from another config "
            f"({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}); use "
            "a new --workdir, or --restart to discard the old results.")
    if (not isinstance(stored_fp, dict) and result_fp is None and
        steps(ckpt_dir)):
      raise ConfigError(
          f"--workdir={run_dir}: job {job.id} has checkpoints but "
          f"{os.path.relpath(fp_path, run_dir)} is missing or damaged, so "
          "they cannot be checked against this config; use a new --workdir, "
          "or --restart to discard them.")


def where_stopped(run_dir: str, jobs: list[Job]) -> str:
  """Which jobs of ``run_dir`` are finished and where the others stopped."""
  finished, partial = 0, []
  for job in jobs:
    result_path, ckpt_dir, _ = job_paths(run_dir, job)
    if os.path.exists(result_path):
      finished += 1
      continue
    done = steps(ckpt_dir)
    if done:
      partial.append(f"{job.id} at {done[-1]}/{job.config.num_samples}")
  return (f"{finished} of {len(jobs)} jobs finished" +
          (f"; last checkpoint of {', '.join(partial)} samples" if partial
           else ""))

"""Orbax checkpoints of a job: stacked states plus metrics so far.

Each checkpoint is a step folder (step = samples done) holding the
``TrainState`` stacked over (grid point, seed), without device padding, and
the evaluation history as JSON. Orbax writes into a temporary folder and
renames it when complete, so a write that is interrupted (even by SIGKILL)
never replaces the last good checkpoint. Then the sha256 of each of the
step's files goes into its :data:`DIGEST` file; a restore reads a step only
if every file matches, so a step damaged anyway (a flipped byte, a truncated,
emptied or missing file, no digest) is never handed to orbax: it is skipped
for the latest good one (or none: the job starts over) with one warning line.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import threading
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from experiments import rundir
from ojax.train import Progress

_log = logging.getLogger("ojax")
# In each step folder: {"sha256": {path in the step: sha256 of the file}}.
DIGEST = "ojax_digest.json"


def _to_json(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Strict JSON: a non-finite number is None, read back as NaN."""
  return [{k: rundir.jsonable(np.asarray(v)) for k, v in h.items()}
          for h in history]


def _from_json(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [{k: (v if k == "samples" else np.asarray(v, np.float64 if k not in
                                                    ("diverged_at",)
                                                    else np.int64))
           for k, v in h.items()} for h in history]


def _file_digests(step_dir: str) -> dict[str, str]:
  """The sha256 of every file of a step folder (its digest left out)."""
  out = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel.startswith(DIGEST):  # The digest and its writer's .tmp.
        continue
      sha = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda f=f: f.read(1 << 20), b""):
          sha.update(block)
      out[rel] = sha.hexdigest()
  return out


def why_damaged(step_dir: str) -> Optional[str]:
  """Why a step folder's files are not those its save wrote, or None."""
  path = os.path.join(step_dir, DIGEST)
  if not os.path.exists(path):
    return f"no {DIGEST}: an older version's or a cut-short save"
  stored = rundir.read_json(path, warn=False)
  stored = stored.get("sha256") if isinstance(stored, dict) else None
  if not isinstance(stored, dict):
    return f"{DIGEST} is unreadable"
  try:
    now = _file_digests(step_dir)
  except OSError as err:
    return f"unreadable: {err.strerror or err}"
  for rel in sorted(set(stored) | set(now)):
    if rel not in now:
      return f"{rel} is missing"
    if now[rel] != stored.get(rel):
      return (f"{rel} does not match its sha256" if rel in stored else
              f"{rel} was not saved with it")
  return None


class _DropOrbax(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return "orbax" not in record.pathname


@contextlib.contextmanager
def _quiet_orbax():
  """Silences orbax's own log lines (we log one warning per damaged step)."""
  logger, drop = logging.getLogger("absl"), _DropOrbax()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


@contextlib.contextmanager
def _ctrl_c_after():
  """Holds a Ctrl-C (SIGINT), or a SIGTERM that the command line turns into
  an exception (``experiments.main.Terminated``), that arrives inside the
  block until its end.

  Orbax starts writer threads inside ``save``; an interrupt among them leaves
  threads writing into a folder that is then freed. Held, the step is
  either written completely or not started, and the interrupt follows.
  """
  if threading.current_thread() is not threading.main_thread():
    yield  # Only the main thread takes signals.
    return
  # Python handlers (which raise), called at the end; SIG_DFL stays.
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT,
                                                     signal.SIGTERM)}
  handlers = {sig: h for sig, h in handlers.items() if callable(h)}
  held = []
  for sig in handlers:
    signal.signal(sig, lambda signum, _: held.append(signum))
  try:
    yield
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  if held:
    handlers[held[0]](held[0], None)  # Raises (KeyboardInterrupt).


class Checkpointer:
  """Saves and restores :class:`ojax.train.Progress` under one directory."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    with _quiet_orbax():  # It reads (and may warn about) every step.
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=max_to_keep, create=True,
              cleanup_tmp_directories=jax.process_index() == 0))

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, progress: Progress) -> None:
    """Writes ``progress`` as step ``progress.samples_done``, then its
    :data:`DIGEST`, and waits.

    Steps from this one on (they could not be restored) are deleted first:
    orbax writes no step below its latest. A Ctrl-C during the write is
    raised once the step is complete. A save that fails leaves no step (a
    finished one without its digest is deleted).
    """
    with _ctrl_c_after():
      self._save(progress)

  def _save(self, progress: Progress) -> None:
    step = progress.samples_done
    for later in self._manager.all_steps():
      if later >= step:
        self._manager.delete(later)
    try:
      with _quiet_orbax():  # A failure is raised here, once, not logged.
        self._manager.save(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(progress.states),
                history=ocp.args.JsonSave(_to_json(progress.history))))
        self._manager.wait_until_finished()
      if jax.process_index() == 0:  # Once all hosts' files are there.
        step_dir = self._step_dir(step)
        rundir.write_json(os.path.join(step_dir, DIGEST),
                          {"sha256": _file_digests(step_dir)}, indent=None)
    except BaseException:
      with _quiet_orbax():  # Writer threads log their own failure here.
        try:  # Let them end first: freeing their folder mid-write fails.
          self._manager.wait_until_finished()
        except BaseException:  # pylint: disable=broad-except
          pass
        try:  # A finished step without its digest would be skipped anyway.
          if (jax.process_index() == 0 and
              step in self._manager.all_steps() and not os.path.exists(
                  os.path.join(self._step_dir(step), DIGEST))):
            self._manager.delete(step)
        except Exception:  # pylint: disable=broad-except
          pass
        # An unfinished step stays a temporary folder (never restored);
        # free its space at once (a full disk).
        for _ in range(20):
          tmp = [os.path.join(self.directory, n)
                 for n in os.listdir(self.directory)
                 if n.startswith(f"{step}.orbax-checkpoint-tmp")]
          if not tmp:
            break
          for path in tmp:
            shutil.rmtree(path, ignore_errors=True)
          time.sleep(0.1)
      raise

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore(self, like_states: Any) -> Optional[Progress]:
    """The latest good checkpoint, shaped like ``like_states``, or None.

    A step is read only if its files match its :data:`DIGEST`. Damaged
    steps are skipped with one warning line naming the latest of them and
    the step used instead (None: the job starts over).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_states)
    with _quiet_orbax():
      steps = sorted(self._manager.all_steps(), reverse=True)
    damaged, good = [], None
    for step in steps:
      why = why_damaged(self._step_dir(step))
      if why is None:
        try:
          with _quiet_orbax():
            restored = self._manager.restore(
                step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    history=ocp.args.JsonRestore()))
          history = restored["history"]
          if not history or history[-1].get("samples") != step:
            raise ValueError("history does not end at the step")
          good = Progress(int(step), restored["state"], _from_json(history))
          break
        except Exception as err:  # pylint: disable=broad-except
          why = " ".join(str(err).split())[:120]
      damaged.append((step, why))
    if damaged:
      (step, why), *others = damaged
      _log.warning(
          "checkpoint %s is damaged (%s)%s; %s", self._step_dir(step), why,
          "; so are steps " + ", ".join(str(s) for s, _ in others)
          if others else "", f"resuming from step {good.samples_done}"
          if good else "no good step is left: the job starts over")
    return good

  def close(self) -> None:
    self._manager.close()

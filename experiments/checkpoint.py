"""Orbax checkpoints of a job: stacked states plus metrics so far.

Each checkpoint is a step folder (step = samples done) holding the
``TrainState`` stacked over (grid point, seed), without device padding, and
the evaluation history as JSON. Orbax writes into a temporary folder and
renames it when complete, so a write that is interrupted (even by SIGKILL)
never replaces the last good checkpoint. A step that is damaged anyway (a
truncated or emptied file) is skipped with a warning and the previous one is
used.
"""

from __future__ import annotations

import contextlib
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


def _to_json(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Strict JSON: a non-finite number is None, read back as NaN."""
  return [{k: rundir.jsonable(np.asarray(v)) for k, v in h.items()}
          for h in history]


def _from_json(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [{k: (v if k == "samples" else np.asarray(v, np.float64 if k not in
                                                    ("diverged_at",)
                                                    else np.int64))
           for k, v in h.items()} for h in history]


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

  def save(self, progress: Progress) -> None:
    """Writes ``progress`` as step ``progress.samples_done`` and waits.

    A step already there (one that could not be restored) is replaced. A
    Ctrl-C during the write is raised once the step is complete.
    """
    with _ctrl_c_after():
      self._save(progress)

  def _save(self, progress: Progress) -> None:
    step = progress.samples_done
    if step in self._manager.all_steps():
      self._manager.delete(step)
    try:
      with _quiet_orbax():  # A failure is raised here, once, not logged.
        self._manager.save(
            step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(progress.states),
                history=ocp.args.JsonSave(_to_json(progress.history))))
        self._manager.wait_until_finished()
    except BaseException:
      with _quiet_orbax():  # Writer threads log their own failure here.
        try:  # Let them end first: freeing their folder mid-write fails.
          self._manager.wait_until_finished()
        except BaseException:  # pylint: disable=broad-except
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
    """The latest readable checkpoint, shaped like ``like_states``, or None.

    A step that cannot be read is skipped with a one-line warning.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_states)
    with _quiet_orbax():
      steps = sorted(self._manager.all_steps(), reverse=True)
    for step in steps:
      try:
        with _quiet_orbax():
          restored = self._manager.restore(
              step, args=ocp.args.Composite(
                  state=ocp.args.StandardRestore(abstract),
                  history=ocp.args.JsonRestore()))
        history = restored["history"]
        if not history or history[-1].get("samples") != step:
          raise ValueError("history does not end at the step")
        return Progress(int(step), restored["state"], _from_json(history))
      except Exception as err:  # pylint: disable=broad-except
        _log.warning("checkpoint %s/%d is damaged (%s); trying an earlier "
                     "one", self.directory, step,
                     " ".join(str(err).split())[:120])
    return None

  def close(self) -> None:
    self._manager.close()

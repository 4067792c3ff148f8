"""Orbax checkpoints of a training run: stacked states plus metrics so far.

Each checkpoint is a step folder (step = samples done) holding the
``TrainState`` stacked over seeds and the evaluation history as JSON. Orbax
writes into a temporary folder and renames it when complete, so a write that is
interrupted (even by SIGKILL) never replaces the last good checkpoint; restore
always takes the latest *finished* step.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from ojax.train import Progress


def _to_json(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [{k: np.asarray(v).tolist() for k, v in h.items()} for h in history]


def _from_json(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return [{k: (v if k == "samples" else np.asarray(v)) for k, v in h.items()}
          for h in history]


class Checkpointer:
  """Saves and restores :class:`ojax.train.Progress` under one directory."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def save(self, progress: Progress) -> None:
    """Writes ``progress`` as step ``progress.samples_done`` and waits."""
    self._manager.save(
        progress.samples_done,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(progress.states),
            history=ocp.args.JsonSave(_to_json(progress.history))))
    self._manager.wait_until_finished()

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore(self, like_states: Any) -> Optional[Progress]:
    """The latest finished checkpoint, shaped like ``like_states``, or None."""
    step = self._manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_states)
    restored = self._manager.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            history=ocp.args.JsonRestore()))
    return Progress(int(step), restored["state"],
                    _from_json(restored["history"]))

  def close(self) -> None:
    self._manager.close()


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON so that readers see the old file or the new one, never half."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)

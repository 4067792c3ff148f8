"""TensorBoard event files of a run: ``tensorboard --logdir runs/``.

Each finished job writes one TensorBoard run per (grid point, seed):

    <run_dir>/tensorboard/<axis>=<value>/<arm>[/<field>=<v>,...]/seed_<s>

e.g. ``tensorboard/depth=10/bp_oja/seed_3`` or, in a sweep,
``tensorboard/kernel_init=he/val/lr=0.01,oja_lr=0.001/seed_0`` (no axis
level without an axis). ``seed_<s>`` is the seed's index in the run's
``metrics.jsonl`` (with ``split_per_seed``, split job ``k`` holds seed
``k``). Steps are training samples; the scalars are the job's evaluation
history, as in metrics.jsonl: each scalar metric under its own name
(``test_accuracy``, ``test_loss``, ``online_accuracy``, ``train_loss``,
``memory_capacity``, ...), each per-layer diagnostic of ``ojax.metrics`` as
``diagnostics/<name>/layer_<l>`` (``layer_0`` the first), any other vector
as ``<name>/<i>``. Values that are not finite (the step metrics before the
first step, a diverged seed's loss) are left out; ``diverged_at`` and
``data_split`` are not curves.

metrics.jsonl stays the record; these files are an extra view of it. They
are written from the job's final history, each run into a fresh folder
renamed into place, so a resumed job's curves are whole and never doubled.
The writer is tensorboardX's (no TensorFlow), one summary per evaluation.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from typing import Any

import numpy as np

from experiments import config as config_lib
from ojax import metrics as metrics_lib

DIR = "tensorboard"
# A job with more (grid point, seed) curves than this writes none (one info
# line says so): bad_init's 324-point grids would make ~23,000 runs and
# ~370 MB; a tuning grid is read from its tables, not from curves.
MAX_CURVES = 256
NOT_CURVES = ("samples", "diverged_at", "data_split")
_LAYERED = metrics_lib.DIAGNOSTICS + metrics_lib.FEEDBACK_DIAGNOSTICS


def _name(value: Any) -> str:
  """A path component: what a job id uses (``config._slug``)."""
  return config_lib._slug(value) or "_"  # pylint: disable=protected-access


def run_dirs(run_dir: str, result: Any) -> dict[tuple[int, int], str]:
  """The folder of each (grid point, seed) of a job result."""
  job = result.job
  cfg = job.config
  base = [run_dir, DIR]
  if cfg.axis:
    base.append(f"{_name(cfg.axis.split('.')[-1])}={_name(job.axis_value)}")
  base.append(_name(job.arm or "run"))
  first = 0  # Split job k of split_per_seed holds the merged seeds k*S...
  if config_lib.SPLIT_TAG in job.id:
    first = int(job.id.rsplit(config_lib.SPLIT_TAG, 1)[1]) * cfg.seeds
  num_seeds = result.history["diverged_at"].shape[2]
  out = {}
  for g, point in enumerate(result.grid):
    grid = [",".join(f"{_name(k)}={v:g}" for k, v in point.items())
            ] if point else []
    for s in range(num_seeds):
      out[g, s] = os.path.join(*base, *grid, f"seed_{first + s}")
  return out


def _tags(key: str, values_E: np.ndarray) -> list[tuple[str, np.ndarray]]:
  """(tag, values over evaluations) of one (grid point, seed)'s metric."""
  if values_E.ndim == 1:
    return [(key, values_E)]
  flat = values_E.reshape(len(values_E), -1)
  name = (lambda i: f"diagnostics/{key}/layer_{i}") if key in _LAYERED else (
      lambda i: f"{key}/{i}")
  return [(name(i), flat[:, i]) for i in range(flat.shape[1])]


def write(run_dir: str, result: Any, only_missing: bool = False) -> None:
  """Writes a finished job's event files, replacing any it had.

  ``result``: a ``runner.JobResult``. ``only_missing``: do nothing if every
  folder of the job exists (a job finished in an earlier session).
  """
  dirs = run_dirs(run_dir, result)
  if len(dirs) > MAX_CURVES:
    logging.getLogger("ojax").info(
        "%s: no TensorBoard curves (%d grid points x seeds > %d); its "
        "numbers are in metrics.jsonl", result.job.id, len(dirs), MAX_CURVES)
    return
  if only_missing and all(os.path.isdir(d) for d in dirs.values()):
    return
  from tensorboardX import FileWriter  # pylint: disable=g-import-not-at-top
  from tensorboardX.proto.summary_pb2 import Summary  # pylint: disable=g-import-not-at-top
  h = result.history
  steps = [int(x) for x in h["samples"]]
  keys = [k for k in h if k not in NOT_CURVES]
  for (g, s), path in dirs.items():
    tags = [t for k in keys for t in _tags(k, np.asarray(h[k][:, g, s],
                                                         np.float64))]
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    writer = FileWriter(tmp, max_queue=len(steps) + 1, flush_secs=3600)
    try:
      for e, step in enumerate(steps):
        values = [Summary.Value(tag=tag, simple_value=float(v[e]))
                  for tag, v in tags if math.isfinite(v[e])]
        if values:
          writer.add_summary(Summary(value=values), step)
    finally:
      writer.close()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)

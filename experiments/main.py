r"""Runs one named experiment: ``make experiment NAME=deep_online``.

  python experiments/main.py --config=experiments/configs/deep_online.py \
      --config.seeds=10 --config.dataset=mnist [--workdir=runs/mine]

Every config field is a flag (``--config.FIELD=VALUE``). The run directory
(``--workdir``, default ``runs/<experiment>/<timestamp>``) receives the config,
metrics, figures, ``summary.md`` and orbax checkpoints; running again with the
same ``--workdir`` resumes. Bad input gets one line on stderr and exit code 2,
before anything is written.
"""

from __future__ import annotations

import datetime
import importlib.util
import logging as logging_std
import os
import re
import shlex
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, experiments/configs/<name>.py.",
    lock_config=True)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first: one "
    "process per host. On SLURM, Open MPI or Kubernetes the cluster is found "
    "automatically; elsewhere pass the three flags below.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (--distributed).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (--distributed).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (--distributed).")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default runs/<experiment>/<timestamp>. "
    "An existing one is resumed.")

CONFIG_DIR = os.path.join(_ROOT, "experiments", "configs")


def experiment_names() -> list[str]:
  """The experiments that have a config file."""
  return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                if f.endswith(".py") and f not in ("__init__.py", "base.py"))


def _fail(message: str) -> None:
  print(f"ojax: error: {message}", file=sys.stderr)
  sys.exit(2)


def _unknown_config_field(argv: list[str]) -> str:
  """Names the first ``--config.a.b=v`` whose field does not exist, or ''."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
              None)
  if path is None:
    return ""
  spec = importlib.util.spec_from_file_location("_ojax_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    field = arg[len("--config."):].split("=", 1)[0]
    node = config
    for i, part in enumerate(field.split(".")):
      if not hasattr(node, "keys") or part not in node:
        where = ".".join(field.split(".")[:i]) or "config"
        known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else (
            "none: it is not a group")
        return (f"bad flag {arg}: no config field {field!r}; fields of "
                f"{where}: {known}.")
      node = node[part]
  return ""


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that answers bad input with one line, not a trace."""
  for arg in argv[1:]:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1]
      if not os.path.isfile(path):
        name = os.path.basename(path).removesuffix(".py")
        _fail(f"unknown experiment {name!r} (no {path}); experiments: "
              f"{', '.join(experiment_names())}.")
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError,
          ValueError) as err:
    unknown = _unknown_config_field(argv)
    if unknown:
      _fail(unknown)
    text = " ".join(re.sub(r"\\n|\\'|'", " ", str(err)).split())
    _fail(f"bad flag: {text}")
  return []


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; use --config.FIELD=VALUE.")
  config = _CONFIG.value
  if config is None:
    _fail("--config is required, e.g. --config=experiments/configs/"
          f"deep_online.py; experiments: {', '.join(experiment_names())}.")
  if _DISTRIBUTED.value and not _WORKDIR.value:
    _fail("--distributed needs --workdir on a file system every host shares.")
  from experiments import runners  # Heavy (JAX); after the flags are good.
  if _DISTRIBUTED.value:
    import jax  # pylint: disable=g-import-not-at-top
    # Cross-process collectives for CPU devices (GPUs and TPUs ignore this).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  try:
    runner = runners.get(config)
    prepared = runner.prepare(config)
  except Exception as err:  # pylint: disable=broad-except
    if not runners.is_user_error(err):
      raise
    _fail(str(err))
  run_dir = _WORKDIR.value or os.path.join(
      "runs", config.experiment,
      datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
  os.makedirs(run_dir, exist_ok=True)
  command = " ".join(shlex.quote(a) for a in sys.argv)
  summary = runner.run(config, prepared, run_dir, command)
  if os.path.exists(summary):  # Only the lead host writes reports.
    logging.info("wrote %s", summary)
    with open(summary) as f:
      print(f.read())
    print(f"run directory: {run_dir}")


class _DropOrbaxInfo(logging_std.Filter):
  """Keeps orbax's per-checkpoint INFO lines out of the progress log."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno > logging_std.INFO or "orbax" not in record.pathname


if __name__ == "__main__":
  logging.get_absl_handler().addFilter(_DropOrbaxInfo())
  app.run(main, flags_parser=_parse_flags)

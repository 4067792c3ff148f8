r"""Runs one named experiment: ``make experiment NAME=deep_online``.

  python -m experiments.main --config=experiments/configs/deep_online.py \
      --config.seeds=10 --config.dataset=mnist [--workdir=runs/mine]

Every config field is a flag (``--config.FIELD=VALUE``). The run directory
(``--workdir``, default a fresh ``runs/<experiment>/<timestamp>``) receives the
config, metrics, figures, ``summary.md`` and orbax checkpoints; running again
with the same ``--workdir`` resumes if the config is the same. Bad input gets
one line on stderr and exit code 2, before anything is written.
"""

from __future__ import annotations

import errno
import importlib.util
import logging as logging_std
import os
import re
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, experiments/configs/<name>.py.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory; default a fresh runs/<experiment>/"
    "<timestamp>. An existing one is resumed if its config is the same.")
_RESTART = flags.DEFINE_bool(
    "restart", False, "Discard the results and checkpoints already in "
    "--workdir and start over.")
_ALLOW_LARGE = flags.DEFINE_bool(
    "allow_large", False, "Run jobs that the size estimate refuses.")
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

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "configs")


class UserError(Exception):
  """Bad input: one line to the user, exit code 2."""


def experiment_names() -> list[str]:
  """The experiments that have a config file."""
  return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                if f.endswith(".py") and f not in ("__init__.py", "base.py"))


def _fail(message: str, code: int = 2) -> None:
  print(f"ojax: error: {message}", file=sys.stderr)
  sys.exit(code)


def _one_line(err: BaseException) -> str:
  return " ".join(re.sub(r"\\n|\\'|'", " ", str(err)).split())


def load_config_file(path: str):
  """The module's ``get_config()``; a ``UserError`` for any problem."""
  if not os.path.isfile(path):
    name = os.path.basename(path).removesuffix(".py")
    raise UserError(f"unknown experiment {name!r} (no {path}); experiments: "
                    f"{', '.join(experiment_names())}.")
  try:
    spec = importlib.util.spec_from_file_location("_ojax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as err:  # pylint: disable=broad-except
    raise UserError(f"config file {path} cannot be loaded: "
                    f"{type(err).__name__}: {_one_line(err)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise UserError(f"config file {path} has no get_config() function.")
  try:
    return module.get_config()
  except Exception as err:  # pylint: disable=broad-except
    raise UserError(f"config file {path}: get_config() raised "
                    f"{type(err).__name__}: {_one_line(err)}") from None


def config_fields(argv: list[str]) -> list[str]:
  """The dotted fields of ``--config.a.b=v`` flags, each at most once."""
  fields = [a[len("--config."):].split("=", 1)[0] for a in argv
            if a.startswith("--config.")]
  twice = sorted({f for f in fields if fields.count(f) > 1})
  if twice:
    raise UserError(f"--config.{twice[0]} is given more than once; give each "
                    "field once.")
  return fields


def _unknown_field(config, fields: list[str]) -> str:
  for field in fields:
    node = config
    for i, part in enumerate(field.split(".")):
      if not hasattr(node, "keys") or part not in node:
        where = ".".join(field.split(".")[:i]) or "config"
        known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else (
            "none: it is not a group")
        return (f"bad flag --config.{field}: no config field {field!r}; "
                f"fields of {where}: {known}.")
      node = node[part]
  return ""


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that answers bad input with one line, not a trace."""
  try:
    path = next((a.split("=", 1)[1] for a in argv[1:]
                 if a.startswith("--config=")), None)
    fields = config_fields(argv[1:])
    if path is not None:
      unknown = _unknown_field(load_config_file(path), fields)
      if unknown:
        raise UserError(unknown)
    try:
      return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError,
            ValueError) as err:
      raise UserError(f"bad flag: {_one_line(err)}") from None
  except UserError as err:
    _fail(str(err))
  return []


def _is_disk_full(err: BaseException) -> bool:
  while err is not None:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(err):
      return True
    err = err.__cause__ or err.__context__
  return False


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; use --config.FIELD=VALUE.")
  config = _CONFIG.value
  if config is None:
    _fail("--config is required, e.g. --config=experiments/configs/"
          f"deep_online.py; experiments: {', '.join(experiment_names())}.")
  if _DISTRIBUTED.value and not _WORKDIR.value:
    _fail("--distributed needs --workdir on a file system every host shares.")
  from experiments import runner  # Heavy (JAX); after the flags are good.
  if _DISTRIBUTED.value:
    import jax  # pylint: disable=g-import-not-at-top
    # Cross-process collectives for CPU devices (GPUs and TPUs ignore this).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  command = " ".join(shlex.quote(a) for a in sys.argv)
  try:
    prepared = runner.prepare(config, config_fields(sys.argv[1:]),
                              _ALLOW_LARGE.value)
    workdir = runner.open_workdir(_WORKDIR.value, config.experiment)
  except (ValueError, UserError) as err:
    _fail(_one_line(err))
  resume = command if _WORKDIR.value else (
      f"{command} --workdir={shlex.quote(workdir.path)}")
  try:
    summary = runner.run(config, prepared, workdir.path, command,
                         restart=_RESTART.value)
  except KeyboardInterrupt:
    _fail(f"interrupted; {workdir.path} keeps every finished job and the "
          f"last checkpoint. Resume with: {resume}", 130)
  except runner.ConfigError as err:
    _fail(_one_line(err))
  except Exception as err:  # pylint: disable=broad-except
    if not _is_disk_full(err):
      raise
    _fail(f"disk full while writing to {workdir.path}; the finished jobs and "
          f"the last good checkpoint are kept. Free space, then: {resume}")
  if os.path.exists(summary):  # Only the lead host writes reports.
    logging.info("wrote %s", summary)
    with open(summary) as f:
      print(f.read())
    print(f"run directory: {workdir.path}")


class _DropOrbaxInfo(logging_std.Filter):
  """Keeps orbax's per-checkpoint INFO lines out of the progress log."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno > logging_std.INFO or "orbax" not in record.pathname


def run() -> None:
  """The console entry point (``ojax-experiment``)."""
  logging.get_absl_handler().addFilter(_DropOrbaxInfo())
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()

r"""Runs one named experiment: ``make experiment NAME=deep_online``.

  python -m experiments.main --config=experiments/configs/deep_online.py \
      --config.seeds=10 --config.dataset=mnist [--workdir=runs/mine]

Every config field is a flag (``--config.FIELD=VALUE``). The run directory
(``--workdir``, default a fresh ``runs/<experiment>/<timestamp>``) receives the
config, metrics, figures, ``summary.md`` and orbax checkpoints; running again
with the same ``--workdir`` resumes if the config is the same (docs/running.md
states the guarantees). Bad input gets one line on stderr, ``ojax: error:
...``, and exit code 2, before anything is compiled or written.

Two stages, both usable without the command line: :func:`parse` (flags ->
config, no JAX) and :func:`setup` (validation, data, size estimate, run
directory, lock and resume check: everything before compiling). :func:`check`
does both for a list of arguments, as the tests do. The task picks the
harness (:func:`harness`): ``experiments.tasks.meta_plasticity`` for
``meta``, else the job runner ``experiments.runner``; both share the run
directory (``experiments.rundir``) and the worker pool
(``experiments.pool``).

The modules with JAX are imported inside the functions that need them, so
that ``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

import errno
import importlib.util
import logging as logging_std
import os
import shlex
import signal
import sys
from typing import Any, NamedTuple, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "configs")


def _define_flags(flag_values: flags.FlagValues,
                  sys_argv: Optional[list[str]] = None) -> dict[str, Any]:
  """This program's flags on ``flag_values``; returns their holders."""
  kw = {"flag_values": flag_values}
  return {
      "config": config_flags.DEFINE_config_file(
          "config", None, "Experiment config file, experiments/configs/"
          "<name>.py.", lock_config=True, sys_argv=sys_argv, **kw),
      "workdir": flags.DEFINE_string(
          "workdir", None, "Run directory; default a fresh runs/<experiment>/"
          "<timestamp>. An existing one is resumed if its config is the "
          "same.", **kw),
      "restart": flags.DEFINE_bool(
          "restart", False, "Discard the results and checkpoints already in "
          "--workdir and start over.", **kw),
      "allow_large": flags.DEFINE_bool(
          "allow_large", False, "Run jobs that the size estimate refuses.",
          **kw),
      "distributed": flags.DEFINE_bool(
          "distributed", False, "Call jax.distributed.initialize() first: "
          "one process per host. On SLURM, Open MPI or Kubernetes the "
          "cluster is found automatically; elsewhere pass the three flags "
          "below.", **kw),
      "coordinator_address": flags.DEFINE_string(
          "coordinator_address", None, "host:port of process 0 "
          "(--distributed).", **kw),
      "num_processes": flags.DEFINE_integer(
          "num_processes", None, "Number of processes (--distributed).",
          lower_bound=1, **kw),
      "process_id": flags.DEFINE_integer(
          "process_id", None, "This process's index (--distributed).",
          lower_bound=0, **kw),
      "workers": flags.DEFINE_integer(
          "workers", 0, "Run the jobs in this many worker processes, each "
          "pinned to its own core with single-threaded XLA (0: one per core; "
          "1: in this process). Every job is computed the same way whichever "
          "worker runs it, so the numbers do not depend on this.",
          lower_bound=0, **kw),
      "cpu_devices": flags.DEFINE_integer(
          "cpu_devices", None, "Split the CPU into this many single-threaded "
          "XLA devices (0: one per core) and spread each job's (grid point, "
          "seed) pairs over them. Off by default: numbers then differ from a "
          "one-device run in the last bits (docs/running.md). Refused if "
          "XLA_FLAGS already sets another device count.", lower_bound=0,
          **kw),
      "tensorboard": flags.DEFINE_bool(
          "tensorboard", True, "Also write each job's curves as TensorBoard "
          "event files under <workdir>/tensorboard (tensorboard --logdir "
          "runs/); --notensorboard skips them (a large sweep spends a few "
          "percent of its time on them). metrics.jsonl is the same either "
          "way.", **kw),
  }


_FLAGS = _define_flags(flags.FLAGS)


class UserError(Exception):
  """Bad input: one line to the user, exit code 2 (``code``)."""

  code = 2


class Interrupted(UserError):
  """Ctrl-C (exit code 130) or SIGTERM (143): one line."""

  def __init__(self, message: str, code: int = 130):
    super().__init__(message)
    self.code = code


class Failed(UserError):
  """The run stopped on a failure that is not the input's (a worker that
  died): one line, exit code 1."""

  code = 1


class Terminated(KeyboardInterrupt):
  """SIGTERM (what ``timeout`` and schedulers send), raised in the main
  thread by :func:`run`'s handler: it stops a run as Ctrl-C does, with
  exit code 143 (128 + 15)."""


def _on_sigterm(signum, frame) -> None:
  del signum, frame
  raise Terminated()


def _stopped(err: KeyboardInterrupt) -> tuple[str, int]:
  """What stopped the run and its exit code: SIGTERM or Ctrl-C."""
  return ("terminated", 143) if isinstance(err, Terminated) else (
      "interrupted", 130)


class Parsed(NamedTuple):
  """A command line, parsed: the config with its overrides applied."""

  config: Any  # ml_collections.ConfigDict
  cli_fields: list[str]  # Dotted fields given as --config.FIELD.
  workdir: Optional[str]
  restart: bool
  allow_large: bool
  distributed: Optional[tuple[Any, Any, Any]]  # (address, processes, id)
  cpu_devices: Optional[int]  # --cpu_devices (None: XLA's default).
  workers: int  # --workers (0: one per core).
  program: str  # How to run this program again, e.g. python -m ...
  args: tuple[str, ...]  # The arguments after the program.
  tensorboard: bool = True  # --tensorboard: write TensorBoard event files.

  @property
  def command(self) -> str:
    """The command line, quoted for a shell."""
    return " ".join([self.program] + [shlex.quote(a) for a in self.args])


class Setup(NamedTuple):
  """Everything :func:`setup` checked: ready to compile and run."""

  parsed: Parsed
  prepared: Any  # runner.Prepared (or meta_plasticity.Prepared)
  jobs: list[Any]  # config.Job
  workdir: Any  # rundir.Workdir: open and locked; close() releases it.
  resume: str  # The command that resumes this run.


def harness(config) -> Any:
  """The module that runs ``config``'s task: ``prepare``, ``jobs_of`` and
  ``run`` of ``experiments.tasks.meta_plasticity`` for task ``meta``, else
  of the job runner ``experiments.runner``."""
  # Imported here: both load JAX, which --help does not need.
  if config.get("task") == "meta":
    from experiments.tasks import meta_plasticity  # pylint: disable=g-import-not-at-top
    return meta_plasticity
  from experiments import runner  # pylint: disable=g-import-not-at-top
  return runner


def experiment_names() -> list[str]:
  """The experiments that have a config file."""
  return sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
                if f.endswith(".py") and f not in ("__init__.py", "base.py"))


def one_line(err: BaseException | str) -> str:
  return " ".join(str(err).split())


def _required_fields(task: str) -> tuple[str, list[str]]:
  """Where a config of ``task`` starts from, and the dotted fields it has
  (an empty group counts as one field: its contents vary)."""
  if task == "meta":
    where = "experiments/configs/meta_plasticity.py's get_config()"
    module = importlib.import_module("experiments.configs.meta_plasticity")
    start = module.get_config()
  else:
    base = importlib.import_module("experiments.configs.base")
    name = "get_memory_base_config" if task == "memory" else "get_base_config"
    where = f"experiments/configs/base.py's {name}()"
    start = getattr(base, name)()

  def leaves(node, prefix=""):
    for key, value in node.items():
      if hasattr(value, "keys") and len(value):
        yield from leaves(value, f"{prefix}{key}.")
      else:
        yield prefix + key
  return where, list(leaves(start))


def load_config_file(path: str):
  """The module's ``get_config()``; a ``UserError`` for any problem: no such
  file, a directory, unreadable, not loadable, no ``get_config``, which
  raises or returns no ``ConfigDict``, or one that lacks a field of its
  task's base config (which the code would miss after minutes)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  if os.path.isdir(path):
    raise UserError(f"config file {path} is a directory; give a .py file, "
                    "e.g. experiments/configs/deep_online.py.")
  if not os.path.isfile(path):
    name = os.path.basename(path).removesuffix(".py")
    raise UserError(f"unknown experiment {name!r} (no {path}); experiments: "
                    f"{', '.join(experiment_names())}.")
  try:
    with open(path, "rb") as f:
      f.read(1)
  except OSError as err:
    raise UserError(f"config file {path} cannot be read: "
                    f"{err.strerror or one_line(err)}.") from None
  try:
    spec = importlib.util.spec_from_file_location("_ojax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except BaseException as err:  # pylint: disable=broad-except
    if isinstance(err, KeyboardInterrupt):
      raise
    raise UserError(f"config file {path} cannot be loaded: "
                    f"{type(err).__name__}: {one_line(err)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise UserError(f"config file {path} has no get_config() function.")
  try:
    config = module.get_config()
  except BaseException as err:  # pylint: disable=broad-except
    if isinstance(err, KeyboardInterrupt):
      raise
    raise UserError(f"config file {path}: get_config() raised "
                    f"{type(err).__name__}: {one_line(err)}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"config file {path}: get_config() returned "
                    f"{type(config).__name__}, not a ConfigDict.")
  task = config.get("task", "classifier")
  if task in ("classifier", "memory", "meta"):  # Else validation says so.
    where, fields = _required_fields(task)
    missing = [f for f in fields if not _has(config, f)]
    if missing:
      shown = ", ".join(missing[:8]) + (
          f" and {len(missing) - 8} more" if len(missing) > 8 else "")
      raise UserError(f"config file {path}: get_config() lacks the field"
                      f"{'s' if len(missing) > 1 else ''} {shown}; a "
                      f"task={task!r} config has every field of {where}.")
  return config


def _has(config, field: str) -> bool:
  """True if the dotted ``field`` is in ``config`` (even if it is None)."""
  node = config
  for part in field.split("."):
    if not hasattr(node, "keys") or part not in node:
      return False
    node = node[part]
  return True


def config_fields(args: Sequence[str]) -> list[str]:
  """The dotted fields of ``--config.a.b=v`` flags, each at most once."""
  fields = [a.lstrip("-")[len("config."):].split("=", 1)[0] for a in args
            if a.startswith(("--config.", "-config."))]
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


def _program(argv0: str) -> str:
  if os.path.basename(argv0) in ("main.py", "__main__.py", ""):
    return "python -m experiments.main"
  return shlex.quote(os.path.basename(argv0))


def _config_paths(args: Sequence[str]) -> list[str]:
  """The config files named by ``--config=PATH`` or ``--config PATH``."""
  paths = []
  for i, a in enumerate(args):
    if a.startswith(("--config=", "-config=")):
      paths.append(a.split("=", 1)[1])
    elif a in ("--config", "-config") and i + 1 < len(args):
      paths.append(args[i + 1])
  return paths


# Seconds --distributed waits for the other processes (jax's default).
DISTRIBUTED_TIMEOUT_S = 300


def _check_flags(v: dict[str, Any], given: set[str], task: str) -> None:
  """Refuses program flags that would change nothing, or clash."""
  if not v["distributed"]:
    for name in ("coordinator_address", "num_processes", "process_id"):
      if name in given:
        raise UserError(f"--{name} changes nothing without --distributed; "
                        "add --distributed or drop it.")
  elif v["coordinator_address"] is not None and not (
      v["coordinator_address"].rpartition(":")[0] and
      v["coordinator_address"].rpartition(":")[2].isdigit()):
    raise UserError(f"--coordinator_address={v['coordinator_address']} must "
                    "be host:port, e.g. 10.0.0.1:1234.")
  elif v["num_processes"] is not None and v["process_id"] is not None and (
      v["process_id"] >= v["num_processes"]):
    raise UserError(f"--process_id={v['process_id']} must be below "
                    f"--num_processes={v['num_processes']} (0 is the "
                    "coordinator).")
  if v["restart"] and not v["workdir"]:
    raise UserError("--restart changes nothing without --workdir: a run "
                    "without one starts in a fresh directory.")
  key = "xla_force_host_platform_device_count="
  count = next((f.split("=", 1)[1] for f in os.environ.get(
      "XLA_FLAGS", "").split() if key in f), None)
  if v["cpu_devices"] is not None and count is not None and count != str(
      v["cpu_devices"] or _cores()):
    raise UserError(f"--cpu_devices={v['cpu_devices']} changes nothing: "
                    f"XLA_FLAGS already sets --{key}{count}; drop one of "
                    "them.")
  if task == "meta":
    why = {"workers": "its worker count is --config.processes",
           "tensorboard": "it writes no TensorBoard curves",
           "cpu_devices": "each of its workers computes on one device",
           "distributed": "it runs on one host",
           "allow_large": "it has no size estimate to override"}
    for name, reason in why.items():
      if name in given:
        flag = f"--{'no' * (name == 'tensorboard' and not v[name])}{name}"
        raise UserError(f"{flag} changes nothing for task 'meta' "
                        f"(meta_plasticity): {reason}; drop it.")


def _check_workdir_name(workdir: Optional[str]) -> None:
  """A --workdir whose name is not UTF-8 (the checkpoints' and reports'
  file names must be) is refused."""
  if workdir is None:
    return
  try:
    workdir.encode("utf-8")
  except UnicodeEncodeError as err:
    bad = os.fsencode(workdir)[err.start:err.start + 1] if (
        0xDC80 <= ord(workdir[err.start]) <= 0xDCFF) else None
    what = f"byte {bad.hex()}" if bad else (
        f"character {ascii(workdir[err.start])[1:-1]}")
    raise UserError(
        f"--workdir={ascii(workdir)[1:-1]} is not a UTF-8 name ({what} at "
        f"position {err.start}); checkpoints and reports need UTF-8 file "
        "names: choose another --workdir.") from None


def _parse(argv: Sequence[str], flag_values: flags.FlagValues,
           holders: dict[str, Any]) -> Parsed:
  argv = list(argv)
  paths = _config_paths(argv[1:])
  if len(paths) > 1:
    raise UserError(f"--config is given {len(paths)} times "
                    f"({', '.join(paths)}); give one config file.")
  path = paths[0] if paths else None
  fields = config_fields(argv[1:])
  if path is not None:
    unknown = _unknown_field(load_config_file(path), fields)
    if unknown:
      raise UserError(unknown)
  try:
    rest = flag_values(argv)
  except (flags.Error, AttributeError, KeyError, TypeError,
          ValueError) as err:
    raise UserError(f"bad flag: {one_line(err)}") from None
  if len(rest) > 1:
    raise UserError(f"unexpected arguments {rest[1:]}; use "
                    "--config.FIELD=VALUE.")
  v = {k: h.value for k, h in holders.items()}
  if v["config"] is None:
    raise UserError("--config is required, e.g. --config=experiments/configs/"
                    f"deep_online.py; experiments: "
                    f"{', '.join(experiment_names())}.")
  if v["distributed"] and not v["workdir"]:
    raise UserError("--distributed needs --workdir on a file system every "
                    "host shares.")
  _check_workdir_name(v["workdir"])
  _check_flags(v, {k for k, h in holders.items() if h.present},
               v["config"].get("task", "classifier"))
  return Parsed(v["config"], fields, v["workdir"], v["restart"],
                v["allow_large"],
                (v["coordinator_address"], v["num_processes"],
                 v["process_id"]) if v["distributed"] else None,
                v["cpu_devices"], v["workers"], _program(argv[0]),
                tuple(argv[1:]), v["tensorboard"])


def parse(argv: Sequence[str]) -> Parsed:
  """Parses a command line (``argv[0]`` is the program) without JAX.

  Uses fresh flag objects, so it can be called any number of times in one
  process. Raises ``UserError`` (one line) on bad input.
  """
  flag_values = flags.FlagValues()
  return _parse(argv, flag_values, _define_flags(flag_values, list(argv)))


def _resume_command(parsed: Parsed, workdir: str) -> str:
  """The command line again, on the same run directory, without --restart."""
  args = [a for a in parsed.args if a not in ("--restart", "-restart")]
  if not parsed.workdir:
    args.append(f"--workdir={workdir}")
  return parsed._replace(args=tuple(args)).command


def setup(parsed: Parsed) -> Setup:
  """Everything before compiling; raises ``UserError`` (one line).

  In order: the ``--workdir`` can be a run directory (nothing created), the
  config is valid (one validation path, ``experiments.config``), the data
  loads, the jobs fit the machine (``runner.check_size``), then the run
  directory is created (a fresh one without ``--workdir``) and locked, and
  its stored fingerprints match (``rundir.check_resume``; with ``--restart``
  its old contents are removed instead). The lock is held until the process
  ends or ``setup.workdir.close()``.
  """
  # Imported here (not for --help); pool first: before JAX starts.
  from experiments import pool  # pylint: disable=g-import-not-at-top
  pool.single_threaded()  # Before JAX starts its backend.
  if parsed.workers == 1 and hasattr(os, "sched_setaffinity"):
    # Computes here: on one core, as a worker would (runner.run_jobs).
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  if parsed.cpu_devices is not None:
    split_cpu(parsed.cpu_devices)
  from experiments import rundir  # pylint: disable=g-import-not-at-top
  config = parsed.config
  try:
    rundir.check_workdir(parsed.workdir)
    import jax  # pylint: disable=g-import-not-at-top
    if config.get("task") != "meta":  # Before the runner's imports, a wait.
      from experiments import config as config_lib  # pylint: disable=g-import-not-at-top
      config_lib.validate(config, parsed.cli_fields)
    if parsed.distributed:
      # Cross-process collectives for CPU devices (GPUs, TPUs ignore this).
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      logging.info("%s", distributed_wait(parsed.distributed))
      await_coordinator(parsed.distributed)
      try:
        jax.distributed.initialize(
            *parsed.distributed,
            initialization_timeout=DISTRIBUTED_TIMEOUT_S)
      except ValueError:
        raise
      except Exception as err:  # pylint: disable=broad-except
        raise UserError(f"--distributed failed: {one_line(err)[:300]}"
                        ) from None
    task = harness(config)
    prepared = task.prepare(config, parsed.cli_fields, parsed.allow_large)
    jobs = task.jobs_of(config, prepared)
    if config.get("task") != "meta":
      warning = padding_warning(jobs, len(jax.devices()),
                                parsed.cpu_devices)
      if warning:
        print(f"ojax: warning: {warning}", file=sys.stderr, flush=True)
    lead = not parsed.distributed or jax.process_index() == 0
    # Hosts of a --distributed run share the lead host's directory and lock.
    workdir = rundir.open_workdir(parsed.workdir, config.experiment,
                                  lock=lead)
  except ValueError as err:
    raise UserError(one_line(err)) from None
  try:
    if lead or not parsed.restart:  # Only the lead host clears it.
      rundir.check_resume(workdir.path, jobs, parsed.restart)
  except ValueError as err:
    workdir.close()
    raise UserError(one_line(err)) from None
  if parsed.distributed:  # The lead host has cleared it (--restart).
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("ojax: run directory ready")
  return Setup(parsed, prepared, jobs, workdir,
               _resume_command(parsed, workdir.path))


def distributed_wait(distributed: tuple[Any, Any, Any]) -> str:
  """The line --distributed logs before it waits for the other processes."""
  address, processes, index = distributed
  wait = f"waits up to {DISTRIBUTED_TIMEOUT_S} s"
  if address is None:
    return (f"--distributed: this process {wait} for the cluster's "
            "coordinator and processes (address, count and index from the "
            "environment: SLURM, Open MPI or Kubernetes).")
  who = (f"process {index}" if index is not None else "this process") + (
      f" of {processes}" if processes is not None else "")
  if index == 0:
    others = (f"the other {processes - 1} processes" if processes else
              "the other processes")
    return (f"--distributed: {who} starts the coordinator at {address} and "
            f"{wait} for {others} to connect.")
  return (f"--distributed: {who} {wait} for the coordinator at {address} "
          "(process 0) and the other processes.")


def await_coordinator(distributed: tuple[Any, Any, Any]) -> None:
  """Waits up to ``DISTRIBUTED_TIMEOUT_S`` for the coordinator's port to
  open (a process other than 0, given its address); ``UserError`` if it
  does not. jax's own wait ends the process with a fatal log instead."""
  import socket  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  address, _, index = distributed
  if not address or not index:
    return
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + DISTRIBUTED_TIMEOUT_S
  while True:
    try:
      socket.create_connection((host.strip("[]"), int(port)),
                               timeout=1).close()
      return
    except OSError as err:
      left = deadline - time.monotonic()
      if left <= 0:
        raise UserError(
            f"--distributed: no coordinator answered at {address} within "
            f"{DISTRIBUTED_TIMEOUT_S} s ({err.strerror or one_line(err)}); "
            "start process 0 there, or check --coordinator_address."
            ) from None
      time.sleep(min(1.0, left))


def padding_warning(jobs: Sequence[Any], devices: int,
                    cpu_devices: Optional[int] = None) -> str:
  """Why the jobs' device padding wastes work ("" if it wastes little).

  A job's (grid point, seed) pairs are padded to a multiple of the device
  count (``ojax.train.shard``); padded pairs are computed and dropped.
  """
  from experiments import config as config_lib  # pylint: disable=g-import-not-at-top
  pairs = [len(config_lib.sweep_grid(j.config)) * j.config.seeds
           for j in jobs]

  def work(d):
    return sum(-(-p // d) * d for p in pairs)
  if not pairs or devices <= 1 or work(devices) < 1.5 * sum(pairs):
    return ""
  best = max(d for d in range(1, devices + 1) if work(d) == sum(pairs))
  lo, hi = min(pairs), max(pairs)
  flag = (f"--cpu_devices={cpu_devices} pads" if cpu_devices is not None
          else f"the {devices} devices pad")
  advice = ("leave --cpu_devices off" if best == 1 else
            f"use --cpu_devices={best} (no padding)") if (
                cpu_devices is not None) else (
                    f"use {best} device{'s' * (best > 1)} (no padding)")
  return (f"{flag} each job's {lo if lo == hi else f'{lo}-{hi}'} "
          f"(grid point x seed) pairs to a multiple of {devices} devices: "
          f"{work(devices) / sum(pairs):.1f}x the work ({work(devices)} pairs "
          f"computed for {sum(pairs)}); {advice}, or give each job more "
          "pairs (seeds, sweep).")


def check(argv: Sequence[str]) -> Setup:
  """:func:`parse` then :func:`setup`: a command line up to compiling."""
  return setup(parse(argv))


def is_disk_full(err: Optional[BaseException]) -> bool:
  """True if ``err`` (or what caused it) is a full disk or quota."""
  seen = set()
  while err is not None and id(err) not in seen:
    seen.add(id(err))
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(err) or "Disk quota" in str(err):
      return True
    err = err.__cause__ or err.__context__
  return False


def execute(s: Setup) -> str:
  """Runs a checked setup; returns the path of summary.md.

  Raises ``UserError`` (one line) when the run stops on a config problem
  found while running or a full disk (exit code 2), a worker that died
  (``Failed``, 1), Ctrl-C or SIGTERM (``Interrupted``, 130 or 143); the
  finished jobs and each job's last good checkpoint stay in the run
  directory, and no worker is left running. Any other exception (a bug) is
  raised with notes naming its job and where the run stopped.
  """
  from experiments import pool  # pylint: disable=g-import-not-at-top
  from experiments import rundir  # pylint: disable=g-import-not-at-top
  path = s.workdir.path
  try:
    return harness(s.parsed.config).run(
        s.parsed.config, s.prepared, path, s.parsed.command,
        workers=s.parsed.workers, tensorboard=s.parsed.tensorboard)
  except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated).
    word, code = _stopped(err)
    raise Interrupted(
        f"{word}: {rundir.where_stopped(path, s.jobs)} in {path}. "
        f"Resume with: {s.resume}", code) from None
  except pool.WorkerDied as err:
    raise Failed(
        f"{err}: {rundir.where_stopped(path, s.jobs)} in {path}; the "
        f"finished jobs are kept. Resume with: {s.resume}") from None
  except rundir.ConfigError as err:
    raise UserError(one_line(err)) from None
  except Exception as err:  # pylint: disable=broad-except
    if not is_disk_full(err):
      err.add_note(f"ojax: error: {rundir.where_stopped(path, s.jobs)} in "
                   f"{path}; the finished jobs are kept.")
      raise
    raise UserError(
        f"disk full while writing to {path}: "
        f"{rundir.where_stopped(path, s.jobs)}; the last good checkpoints "
        f"are kept. Free space, then resume with: {s.resume}") from None


def fail(message: str, code: int = 2) -> None:
  print(f"ojax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


_PARSED: list[Parsed] = []


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, answering bad input with one line."""
  try:
    _PARSED[:] = [_parse(argv, flags.FLAGS, _FLAGS)]
  except UserError as err:
    fail(str(err))
  except KeyboardInterrupt as err:
    word, code = _stopped(err)
    fail(f"{word} before anything was written.", code)
  return argv[:1]


def main(argv: list[str]) -> None:
  del argv  # Parsed by _parse_flags.
  try:
    s = setup(_PARSED[0])
  except UserError as err:
    fail(str(err), err.code)
  except KeyboardInterrupt as err:
    word, code = _stopped(err)
    fail(f"{word} before training started; nothing was run.", code)
  try:
    summary = execute(s)
  except UserError as err:
    fail(str(err), err.code)
  try:
    if os.path.exists(summary):  # Only the lead host writes reports.
      logging.info("wrote %s", summary)
      with open(summary) as f:
        print(f.read())
      print(f"run directory: {s.workdir.path}")
  except KeyboardInterrupt as err:
    word, code = _stopped(err)
    fail(f"{word} after the run had finished; its results are in "
         f"{s.workdir.path}.", code)


def _cores() -> int:
  """The cores this process may use."""
  return len(os.sched_getaffinity(0)) if hasattr(
      os, "sched_getaffinity") else os.cpu_count() or 1


def split_cpu(devices: int = 0, environ=None) -> None:
  """Makes XLA see ``devices`` single-threaded CPU devices (0: one per core).

  Jobs spread their (grid point, seed) pairs over the devices
  (``ojax.train.shard``). Takes effect only before JAX starts its backend;
  appends to XLA_FLAGS and leaves the flags the user set there alone.
  """
  environ = os.environ if environ is None else environ
  current = environ.get("XLA_FLAGS", "")
  devices = devices or _cores()
  if "xla_force_host_platform_device_count" not in current:
    environ["XLA_FLAGS"] = (
        current + f" --xla_force_host_platform_device_count={devices}").strip()
  from experiments import pool  # pylint: disable=g-import-not-at-top
  pool.single_threaded(environ)


class _DropOrbaxInfo(logging_std.Filter):
  """Keeps orbax's per-checkpoint INFO lines out of the progress log."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno > logging_std.INFO or "orbax" not in record.pathname


def run() -> None:
  """The console entry point (``ojax-experiment``).

  SIGTERM stops the run as Ctrl-C does (:class:`Terminated`, exit code
  143).
  """
  signal.signal(signal.SIGTERM, _on_sigterm)
  logging.get_absl_handler().addFilter(_DropOrbaxInfo())
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()

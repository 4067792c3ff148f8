"""One pool of worker processes for every harness (jobs, meta units).

Each worker is a fresh process (spawned) pinned to its own core, with
single-threaded XLA:CPU (``--xla_cpu_multi_thread_eigen=false`` in its
XLA_FLAGS): BENCHMARKS.md measured one such worker per core as the fastest
layout. Workers report their progress to the run's ``progress.Tracker``
through its shared array, whose stop flag ends them at their next report when
the run stops (Ctrl-C, an error): see ``experiments.progress``.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from typing import Any, Callable, NamedTuple, Optional, Sequence

from experiments import progress
from ojax import train


class Call(NamedTuple):
  """``fn(*args)``, counted as the tracker's item ``item`` when it returns."""

  fn: Callable[..., Any]
  args: tuple[Any, ...]
  item: int


def cores() -> list[int]:
  """The cores this process may run on."""
  if hasattr(os, "sched_getaffinity"):
    return sorted(os.sched_getaffinity(0))
  return list(range(os.cpu_count() or 1))


def single_threaded(environ=None) -> None:
  """``ojax.train.single_threaded_cpu`` in ``environ`` (default: this
  process's environment, which the workers it spawns inherit).

  Single-threaded XLA:CPU unless XLA_FLAGS says otherwise: one
  single-threaded worker per core (``--workers``) uses the machine best.
  Takes effect in this process only before JAX starts its backend; unlike
  the library's default, it does not raise if that has happened (the
  command line calls it before, tests and worker pools after).
  """
  train.single_threaded_cpu(os.environ if environ is None else environ)


def die_with_parent(parent: int) -> None:
  """On Linux, has the kernel SIGKILL this process when its parent dies.

  A SIGKILL or SIGTERM of the main process (what ``timeout`` and schedulers
  send) otherwise leaves the spawned workers running, reparented to init,
  writing checkpoints into a run directory whose lock is gone. ``parent``:
  the parent's pid, to catch a parent that died before this call.
  """
  if not sys.platform.startswith("linux"):
    return
  pr_set_pdeathsig = 1
  if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig,
                                             signal.SIGKILL) != 0:
    return
  if os.getppid() != parent:
    os._exit(1)  # pylint: disable=protected-access


def init_worker(counter, cpus: list[int], label: str = "worker",
                shared: Any = None, parent: Optional[int] = None) -> None:
  """Pins a fresh worker process to its own core; logs progress.

  The initializer of every pool (:func:`run`); ``shared``: the run's
  ``progress.Tracker.shared``, fed by the worker; ``parent``: the pid of
  the process that made the pool: the worker dies with it
  (:func:`die_with_parent`).
  """
  if parent is not None:
    die_with_parent(parent)
  progress.attach(shared)
  with counter.get_lock():
    index = counter.value
    counter.value += 1
  if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {cpus[index % len(cpus)]})
  logging.basicConfig(level=logging.INFO,
                      format=f"[{label} {index}] %(message)s")


def size(workers: int, calls: int) -> int:
  """The number of workers :func:`run` starts: ``workers`` (0: one per
  core), at most one per call."""
  return min(workers or len(cores()), calls)


def run(calls: Sequence[Call], tracker: progress.Tracker, workers: int = 0,
        label: str = "worker", in_process: bool = False) -> list[Any]:
  """The calls' results, in order: here one after the other with
  ``in_process`` (or without calls), else in a pool of :func:`size`
  workers.

  ``tracker`` counts each call's item complete when it returns; the first
  exception (or a Ctrl-C) stops the run (``progress.Tracker.wait``). The
  functions and arguments must pickle (a worker is a fresh process).
  """
  if in_process or not calls:
    results = []
    for call in calls:
      results.append(call.fn(*call.args))
      tracker.complete(call.item)
    return results
  flags_before: Optional[str] = os.environ.get("XLA_FLAGS")
  single_threaded()  # The spawned workers inherit it.
  ctx = multiprocessing.get_context("spawn")
  try:
    with concurrent.futures.ProcessPoolExecutor(
        size(workers, len(calls)), mp_context=ctx, initializer=init_worker,
        initargs=(ctx.Value("i", 0), cores(), label,
                  tracker.shared, os.getpid())) as pool:
      return tracker.wait([pool.submit(c.fn, *c.args) for c in calls],
                          [c.item for c in calls])
  finally:
    if flags_before is None:
      os.environ.pop("XLA_FLAGS", None)
    else:
      os.environ["XLA_FLAGS"] = flags_before

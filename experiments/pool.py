"""One pool of worker processes for every harness (jobs, meta units).

Each worker is a fresh process (spawned) pinned to its own core, with
single-threaded XLA:CPU (``--xla_cpu_multi_thread_eigen=false`` in its
XLA_FLAGS): BENCHMARKS.md measured one such worker per core as the fastest
layout. Workers report their progress to the run's ``progress.Tracker``
through its shared array, whose stop flag ends them at their next report when
the run stops (Ctrl-C, SIGTERM, an error): see ``experiments.progress``.

Lifetime: nothing outlives the run. When :func:`run` returns or raises, every
worker has ended: a stopped run gives them :data:`STOP_GRACE` s, then kills
them (:func:`stop`). A worker ignores Ctrl-C (the main process decides),
and on Linux the kernel kills it when the main process dies, even by SIGKILL
(:func:`die_with_parent`). It holds the run directory's lock open too
(:func:`hold_in_workers`), so no second run can take the directory while a
worker might still write. A worker that dies is :class:`WorkerDied`, naming
its call; a call's exception is raised with a note naming the call and the
worker's traceback as its cause.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
from multiprocessing import connection
from multiprocessing import reduction
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable, NamedTuple, Optional, Sequence

from experiments import progress


class Call(NamedTuple):
  """``fn(*args)``, counted as the tracker's item ``item`` when it returns;
  ``name`` (e.g. ``job depth=1-bp``) names it in errors."""

  fn: Callable[..., Any]
  args: tuple[Any, ...]
  item: int
  name: str = ""


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
  # Imported here: a worker that runs no JAX (a test's) starts in a second.
  from ojax import train  # pylint: disable=g-import-not-at-top
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


# --- Files the workers hold --------------------------------------------------

_HELD: list[Any] = []  # Open files every worker started now holds too.


def hold_in_workers(file: Any) -> None:
  """Every worker :func:`run` starts from now on holds ``file`` (an open
  file of this process) open too, until it ends.

  The run directory's lock (``experiments.rundir.open_workdir``): an
  ``flock`` belongs to the open file, so the directory stays locked until
  the last of the main process and its workers is gone, however they end.
  """
  _HELD.append(file)


def release_in_workers(file: Any) -> None:
  """Workers started from now on no longer hold ``file``."""
  if file in _HELD:
    _HELD.remove(file)


class _Held:
  """An open file descriptor of the main process, passed to a spawned
  worker (the same open file, not a copy)."""

  def __init__(self, fd: int):
    self.fd = fd

  def __reduce__(self):
    return _held, (reduction.DupFd(self.fd),)


def _held(dup: Any) -> _Held:
  return _Held(dup.detach())


# --- Running calls -----------------------------------------------------------

STOP_GRACE = 3.0  # Seconds a stopped run gives its workers before killing.


class WorkerDied(Exception):
  """A worker process ended without returning its call's result (killed by
  a signal, ``os._exit``, a crash in native code)."""

  def __init__(self, name: str, exitcode: Optional[int]):
    super().__init__(f"the worker for {name} died ({ending(exitcode)})")
    self.name, self.exitcode = name, exitcode


def ending(exitcode: Optional[int]) -> str:
  """How a process ended, from its ``multiprocessing`` exit code:
  ``signal 9, SIGKILL`` (negative: killed by that signal) or ``exit code
  3``."""
  if exitcode is None:
    return "exit code unknown"
  if exitcode < 0:
    try:
      return f"signal {-exitcode}, {signal.Signals(-exitcode).name}"
    except ValueError:
      return f"signal {-exitcode}"
  return f"exit code {exitcode}"


class _RemoteTraceback(Exception):
  """A worker's traceback, as text (the cause of the re-raised error)."""

  def __str__(self) -> str:
    return self.args[0]


def _serve(conn: Any, counter: Any, cpus: list[int], label: str,
           shared: Any, parent: int, held: list[_Held]) -> None:
  """A worker: :func:`init_worker`, then each ``(fn, args)`` sent on
  ``conn``, answered ``("ok", result)`` or ``("error", exception,
  traceback)``, until ``None``. ``held``: files it keeps open until it
  ends (:func:`hold_in_workers`)."""
  del held  # Open until this process ends.
  # Ctrl-C on a terminal reaches every process of the group: the main
  # process alone decides (it raises the stop flag, then kills the rest).
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  init_worker(counter, cpus, label, shared, parent)
  while True:
    try:
      task = conn.recv()
    except EOFError:
      return
    if task is None:
      return
    fn, args = task
    try:
      reply = ("ok", fn(*args))
    except BaseException as err:  # pylint: disable=broad-except
      reply = ("error", err, traceback.format_exc())
    try:
      conn.send(reply)
    except Exception as err:  # pylint: disable=broad-except
      # The result or the exception does not pickle.
      conn.send(("error", RuntimeError(
          f"{type(err).__name__} sending a {reply[0]} reply: {err}"),
                 reply[2] if reply[0] == "error" else ""))


def _name(call: Call) -> str:
  return call.name or f"item {call.item}"


def run(calls: Sequence[Call], tracker: progress.Tracker, workers: int = 0,
        label: str = "worker", in_process: bool = False) -> list[Any]:
  """The calls' results, in order: here one after the other with
  ``in_process`` (or without calls), else in a pool of :func:`size`
  workers.

  ``tracker`` counts each call's item complete when it returns. The first
  exception a call raises is raised here (from a worker: with a note naming
  the call, and the worker's traceback as its cause); a worker that dies
  raises :class:`WorkerDied`. Either, or any exception here (a Ctrl-C),
  stops the run: :func:`stop` ends every worker within :data:`STOP_GRACE`
  s, so none is left when this returns. The functions and arguments must pickle (a
  worker is a fresh process).
  """
  if in_process or not calls:
    results = []
    for call in calls:  # An exception's traceback shows the call here.
      results.append(call.fn(*call.args))
      tracker.complete(call.item)
    return results
  flags_before: Optional[str] = os.environ.get("XLA_FLAGS")
  single_threaded()  # The spawned workers inherit it.
  ctx = multiprocessing.get_context("spawn")
  procs, conns = [], []
  try:
    counter = ctx.Value("i", 0)
    held = [_Held(f.fileno()) for f in _HELD if not f.closed]
    for _ in range(size(workers, len(calls))):
      mine, theirs = ctx.Pipe()
      procs.append(ctx.Process(
          target=_serve, args=(
              theirs, counter, cores(), label, tracker.shared, os.getpid(),
              held)))
      conns.append(mine)
      procs[-1].start()
      theirs.close()
    return _serve_calls(calls, tracker, procs, conns, label)
  except BaseException:
    tracker.stop()
    raise
  finally:
    stop(procs, conns)
    if flags_before is None:
      os.environ.pop("XLA_FLAGS", None)
    else:
      os.environ["XLA_FLAGS"] = flags_before


def _serve_calls(calls: Sequence[Call], tracker: progress.Tracker,
                 procs: list[Any], conns: list[Any], label: str
                 ) -> list[Any]:
  """Hands the calls to idle workers in order until all have returned."""
  todo = list(range(len(calls)))[::-1]
  idle = list(range(len(procs)))[::-1]
  running: dict[int, int] = {}  # Worker -> call.
  results: list[Any] = [None] * len(calls)
  while todo or running:
    while idle and todo:
      w, i = idle.pop(), todo.pop()
      running[w] = i
      try:
        conns[w].send((calls[i].fn, calls[i].args))
      except OSError:  # It died idle: its pipe is closed.
        procs[w].join(1.0)
        raise WorkerDied(_name(calls[i]), procs[w].exitcode) from None
    connection.wait(
        [conns[w] for w in running] + [procs[w].sentinel for w in running],
        timeout=progress.POLL_EVERY)
    for w, i in list(running.items()):
      if not conns[w].poll():
        if procs[w].is_alive():
          continue
        reply = None  # Died without a word.
      else:
        try:
          reply = conns[w].recv()
        except (EOFError, OSError):
          reply = None
      if reply is None:
        procs[w].join(1.0)
        raise WorkerDied(_name(calls[i]), procs[w].exitcode)
      if reply[0] == "error":
        err = reply[1]
        err.__cause__ = _RemoteTraceback(f"\n'''\n{reply[2]}'''")
        err.add_note(f"ojax: {_name(calls[i])} raised this in its {label} "
                     f"(pid {procs[w].pid}).")
        raise err
      results[i] = reply[1]
      del running[w]
      idle.append(w)
      tracker.complete(calls[i].item)
    tracker.poll()
  return results


def stop(procs: Sequence[Any], conns: Sequence[Any],
         grace: Optional[float] = None) -> None:
  """Ends the workers: each exits when told (idle) or at its next progress
  report once the run's stop flag is up (``progress.Tracker.stop``); those
  still alive after ``grace`` s (default :data:`STOP_GRACE`) are killed.

  A killed worker loses at most its work since its last checkpoint: every
  file is written to a temporary name and renamed
  (``experiments.rundir``, orbax).
  """
  grace = STOP_GRACE if grace is None else grace
  for conn in conns:
    try:
      conn.send(None)
    except (OSError, ValueError):
      pass  # Dead already.
  deadline = time.monotonic() + grace
  try:
    live = [p for p in procs if p.is_alive()]
    while live and time.monotonic() < deadline:
      # Reads (and drops) replies, so that no worker blocks sending one.
      for conn in connection.wait(
          [c for c in conns if not c.closed] + [p.sentinel for p in live],
          timeout=deadline - time.monotonic()):
        if conn in conns:
          try:
            conn.recv()
          except (EOFError, OSError):
            conn.close()
      live = [p for p in procs if p.is_alive()]
  finally:
    # A second Ctrl-C now waits until every worker is gone.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK,
                                     {signal.SIGINT, signal.SIGTERM})
    try:
      for p in procs:
        if p.is_alive():
          p.kill()
      for p in procs:
        p.join()
      for conn in conns:
        conn.close()
    finally:
      signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

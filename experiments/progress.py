"""Progress of a run: items done, rate, elapsed and estimated time left.

The main process makes one :class:`Tracker` over a run's items (the jobs of
``runner.run_jobs``, or meta_plasticity's units) and shows

    jobs 3/12 | 41% | 1,850 samples/s | elapsed 4m12s | left ~6m

on a terminal as one line of stderr rewritten in place (at most every
:data:`TTY_EVERY` s), otherwise as a log line every :data:`LOG_EVERY` s, and
once more when it closes. The percentage and the time left weigh each item
by its cost (``Item.cost``, e.g. the size estimate's seconds), so a deep job
counts for more than a shallow one; the rate counts ``Item.scale`` units per
count (grid points x seeds per sample). The rate and the time left are
measured from the end of the first chunk of work anywhere (its compilation
is not counted) and shown once :data:`RATE_AFTER` s have been measured;
until then the line says ``left: estimating``.

Items report their absolute count with :func:`report` (and with
:func:`resume` the count an earlier session reached, shown as done but not
timed). Workers of a spawned pool :func:`attach` the tracker's
``Tracker.shared`` array in their initializer: two doubles per item (its
count, and how much of it was reported as work), written by the one process
that runs the item, and a stop flag that the main process raises when the
run stops (Ctrl-C, SIGTERM, an error; :meth:`Tracker.stop`), on which a
worker's next report raises :class:`Stopped`. The main process reads the
array in :meth:`Tracker.poll`, called by :func:`report` in this process and
by ``experiments.pool.run`` while it waits on its workers, so no thread or
process is started here.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence, TextIO

import numpy as np

_log = logging.getLogger("ojax")
TTY_EVERY = 0.5  # Seconds between redraws of the terminal line.
LOG_EVERY = 30.0  # Seconds between log lines.
POLL_EVERY = 0.5  # Seconds between reads while waiting on workers.
RATE_AFTER = 10.0  # Seconds of timed work before a rate is shown.

_SHARED: Any = None  # The array report() writes to, in this process.
_TRACKER: Optional[Tracker] = None  # This process's tracker, if any.


class Item(NamedTuple):
  """One unit of work the tracker counts."""

  total: float  # The count it reports up to (samples per point, steps).
  scale: float = 1.0  # Rate units per count (grid points x seeds).
  cost: Optional[float] = None  # Its share of the work (default total*scale).


class Stopped(Exception):
  """The run a worker serves has stopped (Ctrl-C, or an error elsewhere)."""


def attach(shared: Any) -> None:
  """Sends this process's :func:`report` calls to a tracker's shared array
  (a pool initializer's job)."""
  global _SHARED
  _SHARED = shared


def check() -> None:
  """Raises :class:`Stopped` in a worker whose run has stopped, so that it
  ends its item now and starts no other (:meth:`Tracker.stop`)."""
  if _SHARED is not None and _SHARED[len(_SHARED) - 1]:
    raise Stopped("the run has stopped")


def report(index: Optional[int], done: float) -> None:
  """Item ``index`` has reached ``done`` (absolute, this session's work).
  Raises :class:`Stopped` if the run has stopped (:func:`check`)."""
  _write(index, done, resumed=False)


def resume(index: Optional[int], done: float) -> None:
  """Item ``index`` is at ``done`` without work now: finished or resumed
  earlier. Counted as done, not timed. Raises :class:`Stopped` likewise."""
  _write(index, done, resumed=True)


def _write(index: Optional[int], done: float, resumed: bool) -> None:
  check()
  if _SHARED is None or index is None:
    return
  before = _SHARED[2 * index]
  if not resumed and done > before:
    _SHARED[2 * index + 1] += done - before
  _SHARED[2 * index] = max(before, done)
  if _TRACKER is not None:
    _TRACKER.poll()


def duration(seconds: float) -> str:
  """``42s``, ``4m12s``, ``2h05m``."""
  s = int(round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _left(seconds: float) -> str:
  """Time left, rounded: ``~40s`` (up to tens), ``~6m``, ``~2h05m``."""
  if seconds < 60:
    return f"~{max(math.ceil(seconds / 10), 1) * 10}s"
  if seconds < 3600:
    return f"~{int(round(seconds / 60))}m"
  return "~" + duration(seconds)


def _rate(r: float) -> str:
  return f"{r:,.0f}" if r >= 100 else f"{r:.3g}"


class Tracker:
  """Counts a run's items and shows its progress (see the module doc).

  Use as a context manager: inside it :func:`report` in this process feeds
  it, and ``shared`` may be handed to workers (:func:`attach`).
  """

  def __init__(self, items: Sequence[Item], *, label: str = "jobs",
               unit: str = "samples", stream: Optional[TextIO] = None,
               tty: Optional[bool] = None,
               clock: Callable[[], float] = time.monotonic):
    self.items = list(items)
    n = len(self.items)
    self.label, self.unit, self.clock = label, unit, clock
    self._stream = stream
    self.tty = tty if tty is not None else bool(
        getattr(self.stream, "isatty", lambda: False)())
    # Per item (its count, the part of it reported as work this session),
    # then the stop flag (:func:`check`).
    self.shared = multiprocessing.get_context("spawn").RawArray(
        "d", 2 * n + 1)
    self._view = np.frombuffer(self.shared, np.float64)[:2 * n].reshape(n, 2)
    self._total = np.array([i.total for i in self.items], np.float64)
    self._scale = np.array([i.scale for i in self.items], np.float64)
    self._cost = np.array([i.total * i.scale if i.cost is None else i.cost
                           for i in self.items], np.float64)
    self._complete = np.zeros(n, bool)
    self._start = clock()
    self._anchor: Optional[tuple[float, float, float]] = None
    self._now = (0.0, 0.0)  # (measured units, measured cost) at last poll.
    # When a line was last shown: a terminal's first at once, a log's later.
    self._shown = -np.inf if self.tty else self._start
    self._width = 0  # Of the terminal line drawn.
    self._last = ""  # The last log line.
    self._closed = False
    self._outer: tuple[Any, Any] = (None, None)

  @property
  def stream(self) -> TextIO:
    return self._stream or sys.stderr

  # --- Counting ---

  def complete(self, index: int) -> None:
    """Item ``index`` is finished (its own count may stop short)."""
    self._complete[index] = True
    self.poll()

  def _fractions(self) -> tuple[np.ndarray, np.ndarray]:
    """Per item: the fraction done, and the count reported as work."""
    done, worked = self._view[:, 0].copy(), self._view[:, 1].copy()
    total = np.maximum(self._total, 1e-300)
    counted = np.where(self._complete, 1.0, np.minimum(done / total, 1.0))
    counted[self._total <= 0] = self._complete[self._total <= 0]
    return counted, np.minimum(worked, self._total)

  def poll(self) -> None:
    """Reads the updates; shows a line if one is due."""
    now = self._read()
    if now - self._shown >= (TTY_EVERY if self.tty else LOG_EVERY):
      self._show(self.line(now), now)

  def _read(self) -> float:
    """Takes in the counts; returns the time."""
    _, measured = self._fractions()
    units = float((measured * self._scale).sum())
    cost = float((measured / np.maximum(self._total, 1e-300) *
                  self._cost).sum())
    now = self.clock()
    if self._anchor is None and cost > 0:
      self._anchor = (now, units, cost)  # The first chunk ends: not timed.
    self._now = (units, cost)
    return now

  def line(self, now: Optional[float] = None, final: bool = False) -> str:
    """The progress line at ``now`` (the last poll's counts). A rate and the
    time left need :data:`RATE_AFTER` s of timed work (but a ``final``
    line's rate)."""
    now = self.clock() if now is None else now
    counted, _ = self._fractions()
    n = len(self.items)
    jobs = int(((counted >= 1.0) | self._complete).sum())
    all_cost = float(self._cost.sum())
    frac = (float((counted * self._cost).sum()) / all_cost if all_cost > 0
            else jobs / max(n, 1))
    parts = [f"{self.label} {jobs}/{n}",
             f"{100 if jobs == n else min(int(frac * 100 + 1e-6), 99)}%"]
    rate = None
    if self._anchor is not None and now > self._anchor[0] and (
        final or now - self._anchor[0] >= RATE_AFTER):
      t0, units0, cost0 = self._anchor
      units, cost = self._now
      if cost > cost0:
        rate = ((units - units0) / (now - t0), (cost - cost0) / (now - t0))
        parts.append(f"{_rate(rate[0])} {self.unit}/s")
    parts.append(f"elapsed {duration(now - self._start)}")
    if jobs < n:
      parts.append(f"left {_left(all_cost * (1 - frac) / rate[1])}" if rate
                   else "left: estimating")
    return " | ".join(parts)

  # --- Output ---

  def _show(self, line: str, now: float, end: str = "\r") -> None:
    self._shown = now
    if not self.tty:
      if line != self._last:  # The last line can repeat the one before.
        _log.info("%s", line)
      self._last = line
      return
    # Ends at the line's start: anything else written overwrites it.
    self.stream.write("\r" + line.ljust(self._width) + end)
    self.stream.flush()
    self._width = len(line)

  def close(self) -> None:
    """Shows the final line (a terminal's ends with a newline)."""
    global _SHARED, _TRACKER
    if self._closed:
      return
    self._closed = True
    if _TRACKER is self:
      _SHARED, _TRACKER = self._outer
    now = self._read()
    self._show(self.line(now, final=True), now, end="\n")

  def __enter__(self) -> Tracker:
    global _SHARED, _TRACKER
    self._outer = (_SHARED, _TRACKER)
    _SHARED, _TRACKER = self.shared, self
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def stop(self) -> None:
    """Raises the stop flag: each worker's next :func:`report` raises
    :class:`Stopped` (``experiments.pool.run`` calls it when a run stops)."""
    self.shared[len(self.shared) - 1] = 1.0

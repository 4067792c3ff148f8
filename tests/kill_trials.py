r"""Kill trials: a run stopped from outside leaves no process behind and resumes
to the numbers of an uninterrupted run (issue 18 item 1).

  .venv/bin/python tests/kill_trials.py --trials=10 [--signals=KILL,TERM]
      [--name=recurrent_memory] [--workers=2] [--root=DIR] [--keep]

Runs the config's quick size (``QUICK_ARGS``, with a checkpoint at every
evaluation and ``--workers`` worker processes) uninterrupted into one
directory (twice: the second, with the compilation cache filled, must give
the same files and is timed), then for each signal ``--trials`` times: starts it in a fresh
directory, waits until training has started (a job's fingerprint file
appears) plus a random part of the uninterrupted run's training time, and
sends

- ``KILL``: SIGKILL to the main process (``timeout -s KILL``, a scheduler);
- ``TERM``: SIGTERM to the main process (``timeout``, a scheduler): exit
  code 143 and one line ``ojax: error: terminated: ...``;
- ``INT``: SIGINT to the main process alone (``kill -INT``): exit code 130
  and one line ``ojax: error: interrupted: ...``;
- ``WORKER``: SIGKILL to one worker: exit code 1 and one line naming the
  worker's job.

Every trial checks that the run stopped within ``--stop_s`` seconds, that
from one second after the main process ended no process of the run is left
(every process carrying the trial's marker in its environment, spawned
workers included), that the run directory's lock was never free while one
was, and that a resumed run exits 0 with ``metrics.jsonl`` and every
``jobs/*.json`` byte-identical to the uninterrupted run's. It prints one
line per trial and a last line with the counts; exit code 0 if every trial
passed. ``tests/test_lifetime.py`` runs it with one trial per signal.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM,
           "INT": signal.SIGINT, "WORKER": signal.SIGKILL}
MARKER = "OJAX_KILL_TRIAL"
META = False  # Trials of meta_plasticity (--name).
# What each signal's run must print and exit with (None: no line, killed).
EXPECTED = {"KILL": (-9, None), "TERM": (143, r"terminated: "),
            "INT": (130, r"interrupted: "),
            "WORKER": (1, r"the worker for (job|unit|test) .+ died "
                          r"\(signal 9, SIGKILL\): ")}


def quick_args(name: str) -> list[str]:
  sys.path.insert(0, ROOT)
  from experiments import results  # pylint: disable=import-outside-toplevel
  return results.quick_args(name)


def command(name: str, workdir: str, workers: int) -> list[str]:
  """The run's command line: the quick size, a checkpoint at every
  evaluation, the workers."""
  args = quick_args(name)
  if name == "meta_plasticity":  # Its worker count is a config field.
    args = [a for a in args if not a.startswith("--config.processes=")]
    extra = [f"--config.processes={workers}"]
  else:
    every = [a.split("=", 1)[1] for a in args
             if a.startswith("--config.eval_every=")]
    extra = [f"--workers={workers}",
             f"--config.checkpoint_every={every[0] if every else 100}"]
  return [sys.executable, "-m", "experiments.main",
          f"--config=experiments/configs/{name}.py", *args, *extra,
          f"--workdir={workdir}"]


def processes(token: str) -> list[int]:
  """The live processes whose environment carries ``MARKER=token``."""
  found = []
  needle = f"{MARKER}={token}".encode() + b"\0"
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/environ", "rb") as f:
        env = f.read()
    except OSError:
      continue
    if needle in env:
      found.append(int(entry))
  return found


def children(pid: int) -> list[int]:
  """The spawned workers of ``pid``."""
  out = []
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      with open(f"/proc/{entry}/cmdline", "rb") as f:
        cmdline = f.read()
    except OSError:
      continue
    if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
      out.append(int(entry))
  return out


def lock_free(workdir: str) -> bool:
  """True if the run directory's lock can be taken now (released at once)."""
  path = os.path.join(workdir, ".lock")
  if not os.path.exists(path):
    return True
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      return False
    fcntl.flock(f, fcntl.LOCK_UN)
    return True


def started(workdir: str) -> bool:
  """Training has started: a job's fingerprint is written before it trains
  (meta_plasticity: its config.json, written as its units start)."""
  return bool(glob.glob(os.path.join(workdir, "checkpoints", "*",
                                     "fingerprint.json"))) or (
                                         META and os.path.exists(os.path.join(
                                             workdir, "config.json")))


def outputs(workdir: str) -> dict[str, bytes]:
  """metrics.jsonl and jobs/*.json, by path relative to ``workdir``."""
  paths = [os.path.join(workdir, "metrics.jsonl")] + sorted(
      glob.glob(os.path.join(workdir, "jobs", "*.json")))
  out = {}
  for path in paths:
    with open(path, "rb") as f:
      out[os.path.relpath(path, workdir)] = f.read()
  return out


class Run:
  """One process of the command, marked in its environment."""

  def __init__(self, argv: list[str], env: dict[str, str], token: str):
    self.token = token
    self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
        argv, cwd=ROOT, env={**env, MARKER: token}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)

  def finish(self, timeout: float = 900) -> tuple[int, str]:
    _, err = self.proc.communicate(timeout=timeout)
    return self.proc.returncode, err


def ojax_lines(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith("ojax:")]


def trial(kind: str, workdir: str, argv: list[str], env: dict[str, str],
          delay: float, stop_s: float, straight: dict[str, bytes]
          ) -> tuple[Optional[str], str]:
  """One trial: (what failed or None, what happened)."""
  token = f"{os.getpid()}-{os.path.basename(workdir)}-{time.time()}"
  run = Run(argv, env, token)
  proc = run.proc
  deadline = time.monotonic() + 600
  while (not started(workdir) and proc.poll() is None and
         time.monotonic() < deadline):
    time.sleep(0.02)
  time.sleep(delay)
  if proc.poll() is not None:
    run.finish()
    return "late", f"the run ended before the signal ({delay:.1f}s)"
  if kind == "WORKER":
    workers = children(proc.pid)
    if not workers:
      run.finish()
      return "late", "no worker to kill"
    os.kill(random.choice(workers), signal.SIGKILL)
  else:
    os.kill(proc.pid, SIGNALS[kind])
  tic = time.monotonic()
  rc, stderr = run.finish()
  stopped = time.monotonic() - tic
  with open(os.path.join(workdir, "trial.err"), "w") as f:
    f.write(stderr)
  if os.path.exists(os.path.join(workdir, "summary.md")):
    return "late", "the run had finished its work before the signal"
  # From now on the lock may be free only when no process of the run lives.
  broken_lock = False
  while time.monotonic() - tic < stopped + 1.0:
    if lock_free(workdir) and processes(token):
      broken_lock = True
    time.sleep(0.01)
  left = processes(token)
  what = f"exit {rc} after {stopped:.1f}s"
  want_rc, want_line = EXPECTED[kind]
  lines = ojax_lines(stderr)
  problems = []
  if left:
    problems.append(f"processes left: {left}")
  if broken_lock:
    problems.append("the lock was free while a process of the run lived")
  if stopped > stop_s:
    problems.append(f"stopped after {stopped:.1f}s > {stop_s}s")
  if rc != want_rc:
    problems.append(f"exit code {rc}, not {want_rc}")
  if want_line is not None:
    if "Traceback" in stderr:
      problems.append("a traceback")
    if len(lines) != 1 or not re.match(r"ojax: error: " + want_line,
                                       lines[0]) or not lines[0].endswith(
                                           f"--workdir={workdir}"):
      problems.append(f"lines {lines}")
    else:
      what += f"; {lines[0][:110]}..."
  # Resume.
  rc2, stderr2 = Run(argv, env, token + "-resume").finish()
  if rc2 != 0:
    problems.append(f"resume exit {rc2}: {stderr2[-500:]}")
  else:
    got = outputs(workdir)
    differ = sorted(k for k in set(got) | set(straight)
                    if got.get(k) != straight.get(k))
    if differ:
      problems.append(f"resumed files differ: {differ}")
  return ("; ".join(problems) or None), what


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trials", type=int, default=10)
  parser.add_argument("--signals", default="KILL,TERM")
  parser.add_argument("--name", default="recurrent_memory")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--stop_s", type=float, default=15.0,
                      help="the longest a stop may take")
  parser.add_argument("--root", default=None)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--keep", action="store_true")
  args = parser.parse_args(argv)
  # A shell's background job (`cmd &`) starts with SIGINT ignored, and its
  # children inherit that: they would never see the INT trials' signal.
  if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  global META
  META = args.name == "meta_plasticity"
  kinds = args.signals.split(",")
  if args.trials < 1 or not kinds or set(kinds) - set(SIGNALS):
    parser.error(f"--trials >= 1 and --signals among {', '.join(SIGNALS)}")
  rng = random.Random(args.seed)
  root = args.root or tempfile.mkdtemp(prefix="ojax-kill-trials-")
  os.makedirs(root, exist_ok=True)
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.path.join(root,
                                                                 "cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  try:
    # Twice: the first fills the compilation cache, the second is timed
    # (as the trials run) and must give the same files.
    runs = []
    for name in ("straight", "straight-2"):
      workdir = os.path.join(root, name)
      run = Run(command(args.name, workdir, args.workers), env, name)
      while not started(workdir) and run.proc.poll() is None:
        time.sleep(0.02)
      tic = time.monotonic()
      rc, stderr = run.finish()
      training = time.monotonic() - tic
      if rc != 0:
        print(f"the uninterrupted run failed (exit {rc}):\n"
              f"{stderr[-3000:]}")
        return 1
      runs.append(outputs(workdir))
    straight = runs[0]
    if runs[1] != straight:
      print("two uninterrupted runs differ")
      return 1
    print(f"uninterrupted {args.name}: {len(straight) - 1} jobs, training "
          f"{training:.1f}s (twice, same files)", flush=True)
    passed = {k: 0 for k in kinds}
    late = 0
    for kind in kinds:
      for i in range(args.trials):
        for attempt in range(4):
          workdir = os.path.join(root, f"{kind}-{i}-{attempt}")
          delay = rng.uniform(0.0, 0.8 * training) / (2 ** attempt)
          failed, what = trial(kind, workdir, command(
              args.name, workdir, args.workers), env, delay, args.stop_s,
                               straight)
          if failed != "late":
            break
          late += 1
        ok = failed is None
        passed[kind] += ok
        print(f"{kind} {i + 1}: {'ok' if ok else 'FAILED: ' + failed} "
              f"({what}; signal {delay:.1f}s into training)", flush=True)
    total = len(kinds) * args.trials
    print(f"kill trials ({args.name}, {args.workers} workers): " +
          ", ".join(f"{k} {passed[k]}/{args.trials}" for k in kinds) +
          f" passed ({sum(passed.values())}/{total}: stopped within "
          f"{args.stop_s:.0f}s, no process left, lock held while one "
          f"lived, exit code and line, resume byte-identical); {late} "
          "restarted because the run ended first", flush=True)
    return 0 if sum(passed.values()) == total else 1
  finally:
    if not args.keep and not args.root:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())

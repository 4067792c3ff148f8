"""Shared test fixtures, and one compilation cache for the whole run.

Many tests compile the same small programs: in-process runs, the command
line in subprocesses, the runner's spawned workers, and two xdist workers.
JAX's persistent compilation cache, in one fresh folder per test run (made
by the first process to import this file and inherited by every process it
starts), compiles each program once; the cache holds XLA's executables, so
no number changes. Set OJAX_TEST_JAX_CACHE to reuse a folder across runs.

The tests of Ctrl-C need it to raise: a shell's background job (`make test
&`) starts with SIGINT ignored, which every process it starts would inherit,
so each test process takes Python's default handler back.
"""

import atexit
import functools
import os
import shutil
import signal
import tempfile

if "OJAX_TEST_JAX_CACHE" not in os.environ:
  os.environ["OJAX_TEST_JAX_CACHE"] = tempfile.mkdtemp(prefix="ojax-jax-")
  atexit.register(shutil.rmtree, os.environ["OJAX_TEST_JAX_CACHE"], True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.environ["OJAX_TEST_JAX_CACHE"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def fast_runs():
  """Loads each data set once per module (programs: the cache above)."""
  # Imported here: the library's tests run without the harness installed.
  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  saved = data_lib.load
  data_lib.load = functools.lru_cache(maxsize=None)(saved)
  yield
  data_lib.load = saved

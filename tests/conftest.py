"""Shared test fixtures."""

import functools

import jax
from jax.experimental.compilation_cache import compilation_cache
import pytest



@pytest.fixture(scope="module")
def fast_runs(tmp_path_factory):
  """Loads each data set once; caches compiled programs on disk."""
  # Imported here: the library's tests run without the harness installed.
  from experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  saved = data_lib.load
  data_lib.load = functools.lru_cache(maxsize=None)(saved)
  old = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir",
                    str(tmp_path_factory.getbasetemp() / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  compilation_cache.reset_cache()
  yield
  data_lib.load = saved
  jax.config.update("jax_compilation_cache_dir", old)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  compilation_cache.reset_cache()

"""What users install: the distribution's name, version and contents.

`make test-min` runs these against the built wheel installed in a fresh
virtualenv with the lowest versions pyproject allows; in the development
venv (an editable install) the wheel-content test is skipped.
"""

import importlib.metadata
import json
import pathlib
import re

import pytest

import ojax

DIST = "ojax-plasticity"  # The package index's `ojax` is another project.
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _dist():
  return importlib.metadata.distribution(DIST)


def _from_a_wheel() -> bool:
  """Installed from a wheel: a RECORD and no editable marker (a checkout's
  egg-info, or an editable install, is not what users get)."""
  if _dist().read_text("RECORD") is None:
    return False
  text = _dist().read_text("direct_url.json")
  return not (text and json.loads(text).get("dir_info", {}).get("editable"))


def test_the_distribution_is_ojax_plasticity_and_imports_as_ojax():
  meta = _dist().metadata
  assert meta["Name"] == DIST
  assert meta["Version"] == ojax.__version__
  assert meta["License-Expression"] == "Apache-2.0"
  assert not list(_dist().entry_points)  # No console scripts that need extras.


def test_citation_names_the_same_version():
  cff = ROOT / "CITATION.cff"
  if not cff.exists():
    pytest.skip("no checkout beside the tests")
  version = re.search(r"^version: (\S+)$", cff.read_text(), re.M).group(1)
  assert version == ojax.__version__


def test_the_wheel_carries_the_library_only():
  if not _from_a_wheel():
    pytest.skip("not installed from a wheel: `make test-min` checks it")
  files = [str(f) for f in _dist().files]
  top = {f.split("/")[0] for f in files}
  assert top == {"ojax", f"ojax_plasticity-{ojax.__version__}.dist-info"}, top
  assert "ojax/py.typed" in files
  assert not any(f.startswith("experiments") for f in files)
  requires = _dist().requires or []
  core = sorted(r.split(">")[0].split("=")[0].strip() for r in requires
                if "extra ==" not in r)
  assert core == ["flax", "jax", "numpy", "optax"], core

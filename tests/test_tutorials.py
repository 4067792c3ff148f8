"""The tutorials in docs/tutorials run end to end, and are committed run.

Each notebook is executed at its small size (``OJAX_TUTORIAL_SMALL=1``, the
one switch every size in it derives from) in a temporary copy, with a
kernel that runs this test's own interpreter, so nothing has to be
installed by hand after ``make install``; any cell error fails the test.
The notebooks on disk must carry their full-size outputs, with at least one
figure, so that GitHub shows them.
"""

import json
import pathlib
import shutil
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TUTORIALS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "tutorials"
NOTEBOOKS = ("01_bp_oja_in_your_model.ipynb", "02_unsupervised_rules.ipynb",
             "03_meta_learn_a_rule.ipynb")
KERNEL = "ojax-tutorials"
MAX_BYTES = 1_000_000


def _kernel_spec(root: pathlib.Path) -> pathlib.Path:
  """A Jupyter data dir with a kernel spec that runs ``sys.executable``."""
  spec = root / "kernels" / KERNEL
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "ojax tutorials (test)", "language": "python"}))
  return root


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_with_outputs(name):
  path = TUTORIALS / name
  assert path.stat().st_size < MAX_BYTES, f"{name} is over {MAX_BYTES} bytes"
  nb = nbformat.read(path, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, name
  unrun = [i for i, c in enumerate(code) if c.execution_count is None]
  assert not unrun, f"{name}: code cells {unrun} were not run; execute it"
  outputs = [o for c in code for o in c.outputs]
  errors = [o for o in outputs if o.output_type == "error"]
  assert not errors, f"{name} was committed with an error: {errors[0].ename}"
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert images, f"{name} has no figure: commit it with its outputs"
  assert "SMALL=False" in "".join(
      o.get("text", "") for o in code[0].outputs), (
          f"{name} was not committed at full size")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_runs_small(name, tmp_path, monkeypatch):
  work = tmp_path / "work"
  work.mkdir()
  shutil.copy(TUTORIALS / name, work / name)
  monkeypatch.setenv("JUPYTER_PATH", str(_kernel_spec(tmp_path / "jupyter")))
  monkeypatch.setenv("OJAX_TUTORIAL_SMALL", "1")
  nb = nbformat.read(work / name, as_version=4)
  start = time.perf_counter()
  nbclient.NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                          resources={"metadata": {"path": str(work)}}
                          ).execute()
  seconds = time.perf_counter() - start
  print(f"{name}: {seconds:.0f} s at the small size")
  setup = next(c for c in nb.cells if c.cell_type == "code")
  first = "".join(o.get("text", "") for o in setup.outputs)
  assert "SMALL=True" in first, first
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert images, f"{name} drew no figure"

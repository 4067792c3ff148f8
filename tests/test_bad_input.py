"""Every bad command line: one clear line, exit code 2, nothing written.

The table runs in-process through ``experiments.main.check`` (parse,
validate, load data, size, run directory, lock, resume check: everything the
CLI does before compiling), which raises ``main.UserError`` with the line the
CLI prints as ``ojax: error: <line>`` and exit code 2. A few subprocess smoke
cases check that mapping: exit 2, exactly one ``ojax:`` line, no traceback,
no run directory.

``python tests/test_bad_input.py`` prints the table of cases and the line
each gives (docs/running.md shows it).
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import re
import subprocess
import sys
from typing import Callable, NamedTuple, Optional

import pytest

from experiments import config as config_lib
from experiments import data as data_lib
from experiments import main
from experiments import rundir
from experiments import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
DEEP = f"--config={CONFIGS}/deep_online.py"
MEMORY = f"--config={CONFIGS}/recurrent_memory.py"
TRICKS = f"--config={CONFIGS}/tricks.py"
META = f"--config={CONFIGS}/meta_plasticity.py"
# A deep_online run small enough to set up quickly (for workdir cases).
SMALL = [DEEP, "--config.seeds=2", "--config.num_samples=200",
         "--config.eval_every=100", "--config.axis_values=(2,)",
         "--config.select_arms=bp", "--config.split_per_seed=false"]


class Case(NamedTuple):
  """A bad command line and the text its one-line error must contain."""

  name: str
  args: list[str]  # "{tmp}" is replaced by the test's directory.
  expected: str
  # Makes the state the case needs under the test's directory (files, a
  # lock, a read-only mount); returns an object to keep alive, or None.
  prepare: Optional[Callable[..., object]] = None


def _config_file(text: str) -> Callable[..., object]:
  def prepare(tmp):
    (tmp / "cfg.py").write_text(text)
  return prepare


def _file(tmp):
  (tmp / "a_file").write_text("x")


def _hold_lock(tmp):
  os.makedirs(tmp / "run")
  return rundir.open_workdir(str(tmp / "run"), "deep_online")


def _stored_fingerprint(*changed: str, damage: bool = False):
  """Stores the fingerprint that SMALL with the ``changed`` flags gives job
  depth=2-bp in {tmp}/run, as a run with those flags would have."""
  def prepare(tmp):
    fields = {f.split("=", 1)[0] for f in changed}
    args = [a for a in SMALL if a.split("=", 1)[0] not in fields]
    parsed = main.parse(["ojax", *args, *changed])
    job = config_lib.validate(parsed.config, parsed.cli_fields)[0]
    ckpt = tmp / "run" / "checkpoints" / job.id
    os.makedirs(ckpt / "100")  # A checkpoint step.
    text = (json.dumps(config_lib.fingerprint(job.config)) if not damage
            else '{"lr": 0.0')
    (ckpt / "fingerprint.json").write_text(text)
  return prepare


def _readonly(tmp):
  """A read-only directory {tmp}/ro: a read-only tmpfs as root, else 0o555."""
  ro = tmp / "ro"
  ro.mkdir()
  if os.geteuid() != 0:
    ro.chmod(0o555)
    return None
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k",
                         "tmpfs", str(ro)], capture_output=True, check=False)
  if done.returncode:
    pytest.skip("cannot mount a read-only tmpfs: "
                f"{done.stderr.decode().strip()}")
  return _Unmount(str(ro))


class _Unmount:

  def __init__(self, path):
    self.path = path

  def close(self):
    subprocess.run(["umount", self.path], check=False)


CASES = [
    # --- Flags and config files.
    Case("no --config", [], "--config is required"),
    Case("positional argument", [DEEP, "positional"],
         "unexpected arguments ['positional']"),
    Case("unknown program flag", [DEEP, "--wrkdir=x"],
         "bad flag: Unknown command line flag 'wrkdir'"),
    Case("unknown experiment", [f"--config={CONFIGS}/nope.py"],
         "unknown experiment 'nope'"),
    Case("config file without get_config", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py has no get_config() function.",
         _config_file("X = 1\n")),
    Case("config file with a syntax error", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py cannot be loaded: SyntaxError: ",
         _config_file("def get_config(:\n")),
    Case("config file raising on import", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py cannot be loaded: RuntimeError: boom",
         _config_file("raise RuntimeError('boom')\n")),
    Case("get_config() raising", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py: get_config() raised KeyError: 'k'",
         _config_file("def get_config():\n  return {}['k']\n")),
    Case("unknown field", [DEEP, "--config.model.dpth=3"],
         "bad flag --config.model.dpth: no config field 'model.dpth'; "
         "fields of model: activation, beta,"),
    Case("unknown arm field", [DEEP, "--config.arms.bp.lrr=1"],
         "no config field 'arms.bp.lrr'; fields of arms.bp: lr, oja_lr."),
    Case("field below a number", [DEEP, "--config.lr.x=3"],
         "no config field 'lr.x'; fields of lr: none: it is not a group."),
    Case("not a float", [DEEP, "--config.arms.bp.lr=abc"],
         "bad flag: flag --config.arms.bp.lr=abc: could not convert string "
         "to float: 'abc'"),
    Case("not an integer", [DEEP, "--config.seeds=two"],
         "bad flag: flag --config.seeds=two: invalid literal for int()"),
    Case("scalar flag given twice", [DEEP, "--config.seeds=2",
                                     "--config.seeds=3"],
         "--config.seeds is given more than once; give each field once."),
    Case("tuple flag given twice", [DEEP, "--config.axis_values=(2,)",
                                    "--config.axis_values=(3,)"],
         "--config.axis_values is given more than once"),
    Case("--distributed without --workdir", [DEEP, "--distributed"],
         "--distributed needs --workdir"),
    # --- Values (one validation path: experiments/config.py).
    Case("negative lr on an arm", [DEEP, "--config.arms.bp.lr=-1"],
         "arm 'bp' at model.depth=2: lr=-1.0 must be finite and > 0."),
    Case("negative oja_lr on an arm", [DEEP,
                                       "--config.arms.bp_oja.oja_lr=-0.1"],
         "arm 'bp_oja' at model.depth=2: oja_lr=-0.1 must be finite and >= "
         "0."),
    Case("nan on an arm", [DEEP, "--config.arms.bp_oja.oja_lr=nan"],
         "arms.bp_oja.oja_lr=nan must be finite."),
    Case("nan anywhere (recurrent_memory)", [MEMORY, "--config.oja_lr=nan"],
         "oja_lr=nan must be finite."),
    Case("inf in a sweep", [DEEP, "--config.sweep.lr=(0.1,1e999)"],
         "sweep.lr[1]=inf must be finite."),
    Case("a tuple that does not parse", [DEEP,
                                         "--config.sweep.lr=(0.1,inf)"],
         "sweep.lr='(0.1,inf)' must be a number."),
    Case("negative value in a sweep", [DEEP, "--config.sweep.lr=(0.1,-1)"],
         "sweep.lr=-1 must be finite and > 0."),
    Case("unknown dataset", [DEEP, "--config.dataset=imagenet"],
         "dataset='imagenet' is not known; choose one of embedded_mnist,"),
    Case("unknown activation", [DEEP, "--config.model.activation=gelu"],
         "model.activation='gelu' is not known; choose one of softplus"),
    Case("unknown kernel init", [DEEP, "--config.model.kernel_init=zeros"],
         "model.kernel_init='zeros' is not known"),
    Case("unknown output", [DEEP, "--config.model.output_post=probs"],
         "model.output_post='probs' is not known; choose one of softmax, "
         "logits."),
    Case("unknown feedback", [DEEP, "--config.model.feedback=direct"],
         "model.feedback='direct' is not known"),
    Case("zero gain", [DEEP, "--config.model.gain=0"],
         "model.gain=0.0 must be finite and > 0."),
    Case("negative beta", [DEEP, "--config.model.beta=-10"],
         "model.beta=-10.0 must be finite and > 0."),
    Case("negative depth on the axis", [DEEP, "--config.axis_values=(0,-2)"],
         "arm 'bp' at model.depth=-2: model.depth=-2 must be finite and >= "
         "0."),
    Case("zero seeds", [DEEP, "--config.seeds=0"],
         "seeds=0 must be finite and > 0."),
    Case("zero samples", [DEEP, "--config.num_samples=0"],
         "num_samples=0 must be finite and > 0."),
    Case("batch size not dividing eval_every", [DEEP,
                                                "--config.batch_size=3"],
         "eval_every=1000 must be a multiple of batch_size=3."),
    Case("an arm's batch size not dividing eval_every",
         [TRICKS, "--config.eval_every=100"],
         "arm 'bp_batch16': eval_every=100 must be a multiple of "
         "batch_size=16."),
    Case("checkpoint_every off the evaluation grid",
         [DEEP, "--config.checkpoint_every=300"],
         "checkpoint_every=300 must be a multiple of eval_every=1000 (or 0)."),
    Case("unknown optimizer", [DEEP, "--config.optimizer=rmsprop"],
         "optimizer='rmsprop' is not known; choose one of sgd, adam."),
    Case("unknown Oja layers", [DEEP, "--config.oja_layers=some"],
         "oja_layers='some' is not known; choose all, hidden or a "
         "comma-separated list of layer_0,"),
    Case("seed beyond 32 bits", [DEEP, "--config.seed=1099511627776"],
         "seed=1099511627776 must be <= 2147483647"),
    Case("seed just beyond the bound", [DEEP, "--config.seed=2147483648"],
         "seed=2147483648 must be <= 2147483647"),
    Case("unknown axis field", [DEEP, "--config.axis=model.foo"],
         "config field 'model.foo' does not exist"),
    Case("unknown arm selected", [DEEP, "--config.select_arms=xx"],
         "select_arms names 'xx'; arms are bp, bp_he, bp_oja, bp_oja_he, "
         "bp_oja_hidden, bp_oja_orthogonal, bp_orthogonal."),
    Case("select_arms naming no arm", [DEEP, "--config.select_arms=,"],
         "select_arms=',' names no arm; arms are bp, bp_he, bp_oja, "
         "bp_oja_he, bp_oja_hidden, bp_oja_orthogonal, bp_orthogonal."),
    Case("unknown reference arm", [DEEP, "--config.reference_arm=zz"],
         "reference_arm='zz' is not an arm; arms are bp, bp_he, bp_oja, "
         "bp_oja_he, bp_oja_hidden, bp_oja_orthogonal, bp_orthogonal."),
    Case("a claim naming an arm the config lacks",
         [DEEP, "--config.claim.secondary=('bp_oja_hiden',)"],
         "claim.secondary names 'bp_oja_hiden', which is not an arm; arms "
         "are bp, bp_he, bp_oja, bp_oja_he, bp_oja_hidden, "
         "bp_oja_orthogonal, bp_orthogonal."),
    Case("meta_plasticity: meta_ks not in ks", [META,
                                                "--config.meta_ks=(7,)"],
         "meta_ks=(7,) must be a non-empty subset of ks=(5, 10, 20, 50)."),
    Case("meta_plasticity: claim names an unknown rule",
         [META, "--config.claim.reference=bp_sgd"],
         "claim names 'bp_sgd', which is not a rule of meta_plasticity; "
         "rules are bp, bp_oja, bp_acc, fa."),
    # --- Overrides that would change nothing.
    Case("a field every arm sets", [DEEP, "--config.lr=0.5"],
         "--config.lr changes nothing: every arm sets lr (bp, bp_he, bp_oja, "
         "bp_oja_he, bp_oja_hidden, bp_oja_orthogonal, bp_orthogonal); set "
         "--config.arms.<arm>.lr instead."),
    Case("a field every arm sets, bad value", [DEEP, "--config.lr=-1"],
         "--config.lr changes nothing: every arm sets lr"),
    Case("an axis every arm overrides", [DEEP, "--config.axis=lr",
                                         "--config.axis_values=(0.001,0.3)"],
         "axis='lr' would not apply: arms bp, bp_he, bp_oja, bp_oja_he, "
         "bp_oja_hidden, bp_oja_orthogonal, bp_orthogonal set lr; choose "
         "another axis or remove the override."),
    Case("a field the axis sets", [DEEP, "--config.model.depth=1000"],
         "--config.model.depth changes nothing: the axis sets model.depth to"
         " each of axis_values=(2, 5, 10, 20, 30); set --config.axis_values "
         "instead."),
    Case("a field the sweep sets", [MEMORY, "--config.lr=0.3"],
         "--config.lr changes nothing: sweep.lr=(0.1, 0.5) sets it; set "
         "--config.sweep.lr instead."),
    # --- Data.
    Case("validation split too large", [DEEP, "--config.validation=5000"],
         "validation=5000 must be between 1 and 3999 (the training set has "
         "4000 samples)."),
    Case("TFDS data set not on disk",
         [DEEP, "--config.dataset=kmnist", "--config.download=False",
          "--config.data_dir=/nonexistent/tfds",
          "--config.split_per_seed=false"],
         "TFDS dataset 'kmnist' is not in data_dir=/nonexistent/tfds and "
         "cannot be downloaded from here."),
    # --- Sizes beyond the machine (runner.check_size).
    Case("1000 layers", [DEEP, "--config.axis_values=(1000,)"],
         "job depth=1000-bp-split=0 has 1000 layers (> 200; compiling takes "
         "minutes); pass --allow_large to run it anyway."),
    # (Memory: 10,000 seeds need about 38 GiB, refused on machines with
    # less than 76 GiB; a million seeds are refused anywhere.)
    Case("a TFDS set with a split per seed",
         [DEEP, "--config.dataset=kmnist"],
         "data_split/split_per_seed resample the train/test split of an "
         "embedded dataset (embedded_mnist, digits); dataset='kmnist' has a "
         "fixed split (set --config.split_per_seed=false and "
         "--config.data_split=0)."),
    Case("a job per seed for too many seeds", [DEEP, "--config.seeds=1000"],
         "split_per_seed runs one job per seed: seeds=1000 is more than 100; "
         "set --config.split_per_seed=false to train the seeds together on "
         "one split."),
    Case("a million seeds", [DEEP, "--config.seeds=1000000",
                             "--config.split_per_seed=false"],
         "job depth=2-bp needs about 3795.3 GiB, more than 50% of this "
         "machine's"),
    Case("days of compute", [DEEP, "--config.num_samples=10000000"],
         "the jobs need an estimated 949 h of compute on one core (> 12 h);"
         " pass --allow_large to run them anyway."),
    # --- Run directories.
    Case("workdir is a file", [*SMALL, "--workdir={tmp}/a_file"],
         "--workdir={tmp}/a_file is an existing file; give a directory.",
         _file),
    Case("workdir below a file", [*SMALL, "--workdir={tmp}/a_file/run"],
         "--workdir={tmp}/a_file/run cannot be created: {tmp}/a_file is a "
         "file.", _file),
    Case("workdir not writable", [*SMALL, "--workdir={tmp}/ro"],
         "--workdir={tmp}/ro is not writable: ", _readonly),
    Case("workdir on a read-only path", [*SMALL, "--workdir={tmp}/ro/a/run"],
         "--workdir={tmp}/ro/a/run cannot be created in {tmp}/ro: ",
         _readonly),
    Case("workdir in use by another process", [*SMALL, "--workdir={tmp}/run"],
         f"--workdir={{tmp}}/run is in use by pid {os.getpid()}; wait for it"
         " to finish or choose another --workdir.", _hold_lock),
    # --- Resuming under another config (rundir.check_resume).
    Case("resume with another lr on an arm",
         [*SMALL, "--workdir={tmp}/run"],
         "--workdir={tmp}/run holds job depth=2-bp from another config "
         "(lr: 0.3 -> 0.03); use a new --workdir, or --restart to discard the"
         " old results.", _stored_fingerprint("--config.arms.bp.lr=0.3")),
    Case("resume with other num_samples and eval_every",
         [*SMALL, "--workdir={tmp}/run"],
         "holds job depth=2-bp from another config (eval_every: 200 -> "
         "100; num_samples: 400 -> 200)",
         _stored_fingerprint("--config.num_samples=400",
                             "--config.eval_every=200")),
    Case("resume with other seeds", [*SMALL, "--workdir={tmp}/run"],
         "holds job depth=2-bp from another config (seeds: 3 -> 2)",
         _stored_fingerprint("--config.seeds=3")),
    Case("checkpoints whose fingerprint is damaged",
         [*SMALL, "--workdir={tmp}/run"],
         "--workdir={tmp}/run: job depth=2-bp has checkpoints but "
         "checkpoints/depth=2-bp/fingerprint.json is missing or damaged, so "
         "they cannot be checked against this config",
         _stored_fingerprint(damage=True)),
]

def _fill(text: str, tmp) -> str:
  return text.replace("{tmp}", str(tmp))


def _argv(case: Case, tmp) -> list[str]:
  args = [_fill(a, tmp) for a in case.args]
  if not any(a.startswith("--workdir") for a in args) and (
      "--distributed" not in args):
    args.append(f"--workdir={tmp}/run")
  return ["ojax", *args]


def _snapshot(tmp) -> set[str]:
  """Every path under ``tmp`` but lock files (opening an existing run
  directory creates its ``.lock``; it holds no results)."""
  out = set()
  for root, dirs, files in os.walk(tmp):
    for name in dirs + files:
      if name != ".lock":
        out.add(os.path.relpath(os.path.join(root, name), tmp))
  return out


@pytest.fixture(scope="module", autouse=True)
def _fast(tmp_path_factory):
  """Loads each data set once."""
  saved = data_lib.load
  data_lib.load = functools.lru_cache(maxsize=None)(saved)
  yield
  data_lib.load = saved


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gives_one_line_and_writes_nothing(case, tmp_path,
                                                     monkeypatch):
  monkeypatch.chdir(tmp_path)  # A default runs/ would appear here.
  keep = case.prepare(tmp_path) if case.prepare else None
  try:
    before = _snapshot(tmp_path)
    with pytest.raises(main.UserError,
                       match=re.escape(_fill(case.expected, tmp_path))) as err:
      main.check(_argv(case, tmp_path))
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    assert _snapshot(tmp_path) == before  # Nothing written, no run dir.
  finally:
    if keep is not None:
      keep.close()


def test_the_case_names_are_distinct():
  assert len({c.name for c in CASES}) == len(CASES)


SMOKE = [
    (["--config=experiments/configs/nope.py"], "unknown experiment 'nope'"),
    ([DEEP, "--config.arms.bp.lr=nan"], "arms.bp.lr=nan must be "
     "finite."),
    ([DEEP, "--config.seeds=1000000", "--config.split_per_seed=false"],
     "job depth=2-bp needs about 3795.3 "
     "GiB"),
]


def test_the_cli_prints_one_ojax_line_exits_2_and_leaves_no_run_dir(
    tmp_path):
  def run(i_case):
    i, (args, _) = i_case
    return subprocess.run(
        [sys.executable, "-m", "experiments.main", *args,
         f"--workdir={tmp_path / f'run{i}'}"], capture_output=True, text=True,
        timeout=300, cwd=ROOT, check=False)
  with concurrent.futures.ThreadPoolExecutor(len(SMOKE)) as pool:
    procs = list(pool.map(run, enumerate(SMOKE)))
  for i, ((args, expected), proc) in enumerate(zip(SMOKE, procs)):
    lines = [l for l in proc.stderr.splitlines() if l.startswith("ojax:")]
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert lines == [f"ojax: error: {lines[0][len('ojax: error: '):]}"]
    assert expected in lines[0], lines
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / f"run{i}").exists()


def table() -> str:
  """The markdown table of every case and the line it gives."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  rows = ["| case | exit code | first line (`ojax: error: ...`) |",
          "|---|---|---|"]
  data_lib.load = functools.lru_cache(maxsize=None)(data_lib.load)
  for case in CASES:
    with tempfile.TemporaryDirectory() as d:
      tmp = pathlib.Path(d)
      cwd = os.getcwd()
      os.chdir(tmp)
      keep = case.prepare(tmp) if case.prepare else None
      try:
        main.check(_argv(case, tmp))
        line, code = "(no error)", 0
      except main.UserError as err:
        line, code = str(err).replace(str(tmp), "T"), 2
      finally:
        os.chdir(cwd)
        if keep is not None:
          keep.close()
    line = line.replace(ROOT + "/", "").replace("|", "\\|")
    rows.append(f"| {case.name} | {code} | {line} |")
  return "\n".join(rows)


if __name__ == "__main__":
  print(table())

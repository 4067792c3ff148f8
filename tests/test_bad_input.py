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
import shutil
import subprocess
import sys
from typing import Callable, NamedTuple, Optional

import ml_collections
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
ONLINE = f"--config={CONFIGS}/online.py"
BAD_INIT = f"--config={CONFIGS}/bad_init.py"
FA = f"--config={CONFIGS}/feedback_alignment.py"
NO_WORKDIR = "{no workdir}"  # In a case's args: do not add --workdir.
# A deep_online run small enough to set up quickly (for workdir cases).
SMALL = [DEEP, "--config.seeds=2", "--config.tune=false",
         "--config.passes=0", "--config.num_samples=200",
         "--config.eval_every=100", "--config.axis_values=(2,)",
         "--config.select_arms=bp", "--config.arms.bp.sweep.lr=(0.03,)",
         "--config.split_per_seed=false"]


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
         "no config field 'arms.bp.lrr'; fields of arms.bp: oja_lr, sweep."),
    Case("field below a number", [DEEP, "--config.lr.x=3"],
         "no config field 'lr.x'; fields of lr: none: it is not a group."),
    Case("not a float", [DEEP, "--config.arms.bp.oja_lr=abc"],
         "bad flag: flag --config.arms.bp.oja_lr=abc: could not convert "
         "string to float: 'abc'"),
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
    Case("negative lr in an arm's sweep",
         [DEEP, "--config.arms.bp.sweep.lr=(-1.0,)"],
         "arm 'bp' at model.depth=2: lr=-1.0 must be finite and > 0."),
    Case("negative oja_lr on an arm", [DEEP, "--config.arms.bp.oja_lr=-0.1"],
         "arm 'bp' at model.depth=2: oja_lr=-0.1 must be finite and >= 0."),
    Case("nan on an arm", [DEEP, "--config.arms.bp.oja_lr=nan"],
         "arms.bp.oja_lr=nan must be finite."),
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
    Case("zero samples", [DEEP, "--config.passes=0", "--config.num_samples=0"],
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
         "select_arms names 'xx'; arms are bp, bp_he, bp_norm, bp_oja."),
    Case("select_arms naming no arm", [DEEP, "--config.select_arms=,"],
         "select_arms=',' names no arm; arms are bp, bp_he, bp_norm, "
         "bp_oja."),
    Case("unknown reference arm", [DEEP, "--config.reference_arm=zz"],
         "reference_arm='zz' is not an arm; arms are bp, bp_he, bp_norm, "
         "bp_oja."),
    Case("a claim naming an arm the config lacks",
         [DEEP, "--config.claim.secondary=('bp_oja_hiden',)"],
         "claim.secondary names 'bp_oja_hiden', which is not an arm; arms "
         "are bp, bp_he, bp_norm, bp_oja."),
    Case("meta_plasticity: meta_ks not in ks", [META,
                                                "--config.meta_ks=(7,)"],
         "meta_ks=(7,) must be a non-empty subset of ks=(5, 10, 20, 50)."),
    Case("meta_plasticity: claim names an unknown rule",
         [META, "--config.claim.reference=bp_sgd"],
         "claim names 'bp_sgd', which is not a rule of meta_plasticity; "
         "rules are bp, bp_oja, bp_acc, fa."),
    # --- Overrides that would change nothing.
    Case("a field every arm sets", [DEEP, "--config.select_arms=bp,bp_he",
                                    "--config.oja_lr=0.5"],
         "--config.oja_lr changes nothing: every arm sets oja_lr (bp, "
         "bp_he); set --config.arms.<arm>.oja_lr instead."),
    Case("a field every arm sets, bad value",
         [DEEP, "--config.select_arms=bp,bp_he", "--config.oja_lr=-1"],
         "--config.oja_lr changes nothing: every arm sets oja_lr"),
    Case("an axis every arm overrides", [FA, "--config.axis=oja_lr",
                                         "--config.axis_values=(0.001,0.3)"],
         "axis='oja_lr' would not apply: arms bp, fa, fa_norm set oja_lr; "
         "choose another axis or remove the override."),
    Case("num_samples where passes set them", [DEEP,
                                               "--config.num_samples=100"],
         "--config.num_samples changes nothing: passes=3 sets each job's "
         "samples; set --config.passes instead (or --config.passes=0 to "
         "give num_samples)."),
    Case("a field the axis sets", [DEEP, "--config.model.depth=1000"],
         "--config.model.depth changes nothing: the axis sets model.depth to"
         " each of axis_values=(2, 5, 10, 20, 30); set --config.axis_values "
         "instead."),
    Case("a field the sweep sets", [BAD_INIT, "--config.model.gain=0.3"],
         "--config.model.gain changes nothing: sweep.model_gain=(0.1, 0.25, "
         "0.5, 1.0, 2.0, 3.0) sets it; set --config.sweep.model_gain "
         "instead."),
    # --- Data.
    Case("validation split too large", [DEEP, "--config.validation=5000"],
         "validation=5000 must be between 1 and 1000 for embedded_mnist: "
         "its validation samples come from a fixed pool of 1000 that no "
         "split's test set contains."),
    Case("TFDS data set not on disk",
         [DEEP, "--config.dataset=kmnist", "--config.download=False",
          "--config.data_dir=/nonexistent/tfds", "--config.passes=0",
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
         [DEEP, "--config.dataset=kmnist", "--config.passes=0"],
         "data_split/split_per_seed resample the train/test split of an "
         "embedded dataset (embedded_mnist, digits); dataset='kmnist' has a "
         "fixed split (set --config.split_per_seed=false and "
         "--config.data_split=0)."),
    Case("a job per seed for too many seeds", [DEEP, "--config.seeds=1000"],
         "split_per_seed runs one job per seed: seeds=1000 is more than 100; "
         "set --config.split_per_seed=false to train the seeds together on "
         "one split."),
    Case("a million seeds", [DEEP, "--config.seeds=1000000",
                             "--config.tuning_seed=1000000",
                             "--config.split_per_seed=false"],
         "job depth=2-bp needs about "),
    Case("days of compute", [DEEP, "--config.passes=2500"],
         "the jobs need an estimated 1235 h of compute on one core (> 12 h);"
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
         "(model.beta: 5.0 -> 10.0); use a new --workdir, or --restart to "
         "discard the old results.",
         _stored_fingerprint("--config.model.beta=5")),
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
    # --- Checked up front (issue 18): each once trained for minutes first.
    Case("a network with no hidden layer on the axis",
         [ONLINE, "--config.axis_values=((),)"],
         "arm 'bp' at model.hidden=(): model.hidden=() has no hidden layer "
         "(with model.depth=0); the reports compare hidden layers: give at "
         "least one width, e.g. (100,)."),
    Case("no gains for a claim counting gains",
         [BAD_INIT, "--config.sweep.model_gain=()"],
         "sweep.model_gain=() does not hold the gains the claim counts"),
    Case("the seeds as the axis",
         [MEMORY, "--config.axis=seeds", "--config.axis_values=(2,3)"],
         "axis='seeds' cannot be the axis: the seeds are what every "
         "comparison pairs over; choose one of batch_size, diagnostics, "
         "eval_every, lr, memory.delays, memory.eval_batch, "
         "memory.eval_length, memory.length, model.activation, model.beta, "
         "model.hidden, model.input_scale, model.radius, num_samples, "
         "oja_layers, oja_lr, optimizer"),
    Case("a field that changes no number as the axis",
         [MEMORY, "--config.axis=checkpoint_every"],
         "axis='checkpoint_every' cannot be the axis: it changes no job's "
         "numbers; choose one of batch_size,"),
    Case("a group as the axis", [MEMORY, "--config.axis=memory"],
         "axis='memory' cannot be the axis: it is a group of fields; choose "
         "one of batch_size,"),
    Case("an axis value twice", [MEMORY, "--config.axis_values=(1.0,0.5,1.0)"],
         "axis_values=(1.0, 0.5, 1.0) repeats 1.0; give each value once."),
    Case("axis values without an axis", [FA, "--config.axis_values=(2,3)"],
         "axis_values=(2, 3) change nothing without an axis; set "
         "--config.axis=FIELD too (e.g. model.depth), or drop them."),
    Case("reference_arm where the claim names its arms",
         [MEMORY, "--config.reference_arm=bp_oja"],
         "--config.reference_arm changes nothing: it is the baseline of a run "
         "without a claim, and this config's claim names its arms ("),
    Case("model.width where every job takes model.hidden",
         [ONLINE, "--config.model.width=64"],
         "--config.model.width changes nothing: every job has model.depth=0, "
         "which takes the widths from model.hidden."),
    Case("oja_layers where no job has Oja",
         [ONLINE, "--config.select_arms=bp", "--config.oja_layers=hidden"],
         "--config.oja_layers changes nothing: no job has an Oja term "
         "(oja_lr=0 and no Oja rate swept)."),
    Case("data_dir for an embedded dataset",
         [ONLINE, "--config.data_dir=/data/tfds"],
         "--config.data_dir changes nothing: every job's dataset is embedded "
         "in the package."),
    Case("--config given twice", [ONLINE, MEMORY],
         f"--config is given 2 times ({ONLINE[9:]}, {MEMORY[9:]}); give one "
         "config file."),
    Case("--config given twice, once with a space",
         [ONLINE, "--config", MEMORY[9:]], "--config is given 2 times"),
    Case("--num_processes without --distributed",
         [MEMORY, "--num_processes=2"],
         "--num_processes changes nothing without --distributed; add "
         "--distributed or drop it."),
    Case("--coordinator_address without --distributed",
         [MEMORY, "--coordinator_address=host:1234"],
         "--coordinator_address changes nothing without --distributed"),
    Case("--process_id without --distributed", [MEMORY, "--process_id=1"],
         "--process_id changes nothing without --distributed"),
    Case("--process_id not below --num_processes",
         [MEMORY, "--distributed", "--num_processes=2", "--process_id=2",
          "--workdir={tmp}/run"],
         "--process_id=2 must be below --num_processes=2 (0 is the "
         "coordinator)."),
    Case("--restart without --workdir", [MEMORY, "--restart", NO_WORKDIR],
         "--restart changes nothing without --workdir: a run without one "
         "starts in a fresh directory."),
    Case("a workdir name that is not UTF-8",
         [MEMORY, "--workdir={tmp}/run\udcffx"],
         "--workdir={tmp}/run\\udcffx is not a UTF-8 name (byte ff at "
         "position"),
    Case("a workdir name with a lone surrogate",
         [MEMORY, "--workdir={tmp}/run\ud800"],
         "--workdir={tmp}/run\\ud800 is not a UTF-8 name (character "
         "\\ud800 at position"),
    Case("meta_plasticity: one class per episode", [META, "--config.n_way=1"],
         "n_way=1 must be at least 2: an episode of one class is answered "
         "right by every rule, so every difference would be 0."),
    Case("meta_plasticity: test digits that are training digits",
         [META, "--config.test_digits=(4,5)"],
         "train_digits and test_digits must not overlap (both have 4): the "
         "test classes are unseen in meta-training."),
    Case("meta_plasticity: a test class that is a training class turned",
         [META, "--config.train_digits=(2,6)", "--config.test_digits=(3,9)",
          "--config.rotations=(0,2)"],
         "digit 9 turned 0 quarter turns (test_digits) is digit 6 turned 2 "
         "(train_digits): a 6 turned 180 degrees is a 9, and 0, 1 and 8 are "
         "themselves, so a test class would be a meta-training class; use "
         "rotations 90 degrees apart, e.g. (0, 1), not rotations=(0, 2)."),
    Case("meta_plasticity: one class twice in an episode",
         [META, "--config.rotations=(1,3)"],
         "digit 0 turned 3 quarter turns (train_digits) is digit 0 turned 1 "
         "(train_digits): a 6 turned 180 degrees is a 9, and 0, 1 and 8 are "
         "themselves, so an episode could hold one class twice"),
    Case("meta_plasticity: a digit twice",
         [META, "--config.train_digits=(0,1,1)"],
         "train_digits=(0, 1, 1) repeats 1; list each once."),
    Case("meta_plasticity: a rotation twice", [META, "--config.rotations=(0,0)"],
         "rotations=(0, 0) repeats 0; list each once."),
    Case("meta_plasticity: not a digit", [META, "--config.test_digits=(5,10)"],
         "test_digits=(5, 10) has 10; use digits 0..9."),
    Case("meta_plasticity: --workers", [META, "--workers=2"],
         "--workers changes nothing for task 'meta' (meta_plasticity): its "
         "worker count is --config.processes; drop it."),
    Case("meta_plasticity: --notensorboard", [META, "--notensorboard"],
         "--notensorboard changes nothing for task 'meta' (meta_plasticity): "
         "it writes no TensorBoard curves; drop it."),
    Case("meta_plasticity: --cpu_devices", [META, "--cpu_devices=4"],
         "--cpu_devices changes nothing for task 'meta' (meta_plasticity): "
         "each of its workers computes on one device; drop it."),
    Case("meta_plasticity: --allow_large", [META, "--allow_large"],
         "--allow_large changes nothing for task 'meta' (meta_plasticity): it"
         " has no size estimate to override; drop it."),
    Case("meta_plasticity: --distributed",
         [META, "--distributed", "--workdir={tmp}/run"],
         "--distributed changes nothing for task 'meta' (meta_plasticity): it"
         " runs on one host; drop it."),
]

def _fill(text: str, tmp) -> str:
  return text.replace("{tmp}", str(tmp))


def _argv(case: Case, tmp) -> list[str]:
  args = [_fill(a, tmp) for a in case.args if a != NO_WORKDIR]
  if not any(a.startswith("--workdir") for a in args) and (
      "--distributed" not in args) and NO_WORKDIR not in case.args:
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
    ([DEEP, "--config.arms.bp.oja_lr=nan"], "arms.bp.oja_lr=nan must be "
     "finite."),
    ([DEEP, "--config.seeds=1000000", "--config.tuning_seed=1000000",
      "--config.split_per_seed=false"],
     "job depth=2-bp needs about "),
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


# (arguments, the whole first line of stderr); "{tmp}" as in CASES. The
# workdir's name is bytes: not UTF-8, as a shell passes it.
FIRST_LINES = [
    ([ONLINE, MEMORY, "--workdir={tmp}/run"],
     f"ojax: error: --config is given 2 times ({ONLINE[9:]}, {MEMORY[9:]}); "
     "give one config file."),
    ([MEMORY, b"--workdir={tmp}/run\xff"],
     "ojax: error: --workdir={tmp}/run\\udcff is not a UTF-8 name (byte ff "
     "at position {n}); checkpoints and reports need UTF-8 file names: "
     "choose another --workdir."),
    ([MEMORY, "--config.axis_values=(1.0,1.0)", "--workdir={tmp}/run"],
     "ojax: error: axis_values=(1.0, 1.0) repeats 1.0; give each value "
     "once."),
]


def test_up_front_refusals_print_their_line_first_and_exit_2(tmp_path):
  def fill(a):
    if isinstance(a, bytes):
      return a.replace(b"{tmp}", os.fsencode(tmp_path))
    return _fill(a, tmp_path)

  def run(args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.main", *map(fill, args)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  with concurrent.futures.ThreadPoolExecutor(len(FIRST_LINES)) as pool:
    procs = list(pool.map(run, [args for args, _ in FIRST_LINES]))
  n = len(f"{tmp_path}/run")  # Where the byte is, in characters.
  for (args, expected), proc in zip(FIRST_LINES, procs):
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    assert proc.stderr.splitlines()[0] == _fill(expected, tmp_path).replace(
        "{n}", str(n))
    assert "Traceback" not in proc.stderr
  assert os.listdir(tmp_path) == []


# --- Warnings and lines that are not refusals -------------------------------


def _job(seeds: int, lrs: tuple = ()) -> config_lib.Job:
  """A job with ``seeds`` x ``len(lrs) or 1`` (grid point, seed) pairs."""
  cfg = ml_collections.ConfigDict(
      {"seeds": seeds, "task": "classifier",
       "sweep": {"lr": lrs, "oja_lr": (), "model_gain": ()}})
  return config_lib.Job("j", None, "bp", cfg)


# (pairs of each job as (seeds, lrs), devices, --cpu_devices, the warning).
# The work is counted by hand: each job's pairs rounded up to a multiple of
# the devices.
PADDING = [
    ([(1, ())], 64, 64, "--cpu_devices=64 pads each job's 1 (grid point x "
     "seed) pairs to a multiple of 64 devices: 64.0x the work (64 pairs "
     "computed for 1); leave --cpu_devices off, or give each job more pairs "
     "(seeds, sweep)."),
    ([(12, ())] * 5, 64, 0, "--cpu_devices=0 pads each job's 12 (grid point "
     "x seed) pairs to a multiple of 64 devices: 5.3x the work (320 pairs "
     "computed for 60); use --cpu_devices=12 (no padding), or give each job "
     "more pairs (seeds, sweep)."),
    ([(4, (0.1, 0.2)), (4, (0.1,) * 6)], 64, None, "the 64 devices pad each "
     "job's 8-24 (grid point x seed) pairs to a multiple of 64 devices: 4.0x"
     " the work (128 pairs computed for 32); use 8 devices (no padding), or "
     "give each job more pairs (seeds, sweep)."),
    ([(3, ())], 2, 2, ""),  # 4 pairs for 3: 1.33x, not worth a line.
    ([(16, ())], 6, 6, ""),  # 18 for 16.
    ([(1, ())], 1, None, ""),  # One device pads nothing.
]


@pytest.mark.parametrize("jobs, devices, flag, expected", PADDING)
def test_device_padding_is_named_with_its_cost(jobs, devices, flag,
                                               expected):
  jobs = [_job(seeds, lrs) for seeds, lrs in jobs]
  assert main.padding_warning(jobs, devices, flag) == expected


def test_cpu_devices_padding_warns_in_one_line_before_compiling(
    tmp_path, monkeypatch, capsys):
  import jax  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("XLA_FLAGS", "")  # split_cpu appends to it.
  monkeypatch.setattr(jax, "devices", lambda *a: [None] * 64)
  s = main.check(["ojax", MEMORY, "--cpu_devices=64", "--config.seeds=2",
                  "--config.select_arms=bp", "--config.axis_values=(1.0,)",
                  "--config.tune=false", "--config.arms.bp.sweep.lr=(0.1,0.5)",
                  f"--workdir={tmp_path}/run"])
  s.workdir.close()
  err = capsys.readouterr().err.splitlines()
  assert err == [  # 2 seeds x 2 rates (the arm's sweep.lr) = 4 pairs.
      "ojax: warning: --cpu_devices=64 pads each job's 4 (grid point x seed)"
      " pairs to a multiple of 64 devices: 16.0x the work (64 pairs computed "
      "for 4); use --cpu_devices=4 (no padding), or give each job more pairs"
      " (seeds, sweep)."]


def test_cpu_devices_that_xla_flags_override_are_refused(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  with pytest.raises(main.UserError, match=re.escape(
      "--cpu_devices=8 changes nothing: XLA_FLAGS already sets "
      "--xla_force_host_platform_device_count=4; drop one of them.")):
    main.parse(["ojax", MEMORY, "--cpu_devices=8"])
  assert main.parse(["ojax", MEMORY, "--cpu_devices=4"]).cpu_devices == 4


@pytest.mark.parametrize("distributed, expected", [
    (("10.0.0.1:1234", 4, 0), "--distributed: process 0 of 4 starts the "
     "coordinator at 10.0.0.1:1234 and waits up to 300 s for the other 3 "
     "processes to connect."),
    (("10.0.0.1:1234", 4, 2), "--distributed: process 2 of 4 waits up to "
     "300 s for the coordinator at 10.0.0.1:1234 (process 0) and the other "
     "processes."),
    ((None, None, None), "--distributed: this process waits up to 300 s for"
     " the cluster's coordinator and processes (address, count and index "
     "from the environment: SLURM, Open MPI or Kubernetes)."),
])
def test_distributed_says_what_it_waits_for(distributed, expected):
  assert main.distributed_wait(distributed) == expected


def test_distributed_logs_before_waiting_and_a_failure_is_one_line(
    tmp_path, monkeypatch, caplog):
  import socket  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  calls = []

  def initialize(*args, **kwargs):
    calls.append((args, kwargs, [r.getMessage() for r in caplog.records]))
    raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out.\n  more")
  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  monkeypatch.setattr(jax.config, "update", lambda *a: None)
  with socket.socket() as coordinator:  # A port that answers.
    coordinator.bind(("127.0.0.1", 0))
    coordinator.listen()
    address = f"127.0.0.1:{coordinator.getsockname()[1]}"
    with caplog.at_level("INFO"), pytest.raises(
        main.UserError, match=r"^--distributed failed: DEADLINE_EXCEEDED: "
        r"Barrier timed out. more$"):
      main.check(["ojax", MEMORY, "--distributed", "--num_processes=2",
                  f"--coordinator_address={address}", "--process_id=1",
                  f"--workdir={tmp_path}/run"])
  (args, kwargs, logged), = calls
  assert args == (address, 2, 1)
  assert kwargs == {"initialization_timeout": 300}
  assert logged[-1] == (f"--distributed: process 1 of 2 waits up to 300 s "
                        f"for the coordinator at {address} (process 0) and "
                        "the other processes.")
  assert not (tmp_path / "run").exists()


def test_distributed_without_a_coordinator_stops_in_one_line(
    tmp_path, monkeypatch):
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:  # A port that nothing listens on.
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  monkeypatch.setattr(main, "DISTRIBUTED_TIMEOUT_S", 0.3)
  with pytest.raises(main.UserError, match=re.escape(
      f"--distributed: no coordinator answered at {address} within 0.3 s "
      "(Connection refused); start process 0 there, or check "
      "--coordinator_address.")):
    main.await_coordinator((address, 2, 1))
  main.await_coordinator((None, None, None))  # Found by jax: not probed.
  main.await_coordinator((address, 2, 0))  # Process 0 is the coordinator.


def test_a_coordinator_address_without_a_port_is_refused():
  with pytest.raises(main.UserError, match=re.escape(
      "--coordinator_address=myhost must be host:port, e.g. 10.0.0.1:1234.")):
    main.parse(["ojax", MEMORY, "--distributed", "--workdir=w",
                "--coordinator_address=myhost"])


# --- Config files: every way one can fail (issue 18 item 5). The cases of
# CASES above (no such file, no get_config, a syntax error, raising on import,
# get_config() raising) are not repeated.
_BASE = "from experiments.configs import base\n"
_META = ("import importlib\ndef _meta():\n  return importlib.import_module("
         "'experiments.configs.meta_plasticity').get_config()\n")


def _config_dir(tmp):
  os.makedirs(tmp / "cfg.py")


def _binary_config(tmp):
  (tmp / "cfg.py").write_bytes(b"\xff\xfe\x00def get_config():\n")


CONFIG_FILE_CASES = [
    Case("config file is a directory", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py is a directory; give a .py file, e.g. "
         "experiments/configs/deep_online.py.", _config_dir),
    Case("config file empty", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py has no get_config() function.",
         _config_file("")),
    Case("config file of binary bytes", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py cannot be loaded: SyntaxError: source code "
         "string cannot contain null bytes", _binary_config),
    Case("config file importing a missing module", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py cannot be loaded: ModuleNotFoundError: No "
         "module named 'no_such_module'",
         _config_file("import no_such_module\n")),
    Case("config file calling sys.exit", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py cannot be loaded: SystemExit: 3",
         _config_file("import sys\nsys.exit(3)\n")),
    Case("get_config not a function", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py has no get_config() function.",
         _config_file("get_config = 3\n")),
    Case("get_config() returning None", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py: get_config() returned NoneType, not a "
         "ConfigDict.", _config_file("def get_config():\n  pass\n")),
    Case("get_config() returning a dict", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py: get_config() returned dict, not a "
         "ConfigDict.", _config_file(
             _BASE + "def get_config():\n  return base.get_base_config()"
             ".to_dict()\n")),
    Case("get_config() raising SystemExit", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py: get_config() raised SystemExit: 1",
         _config_file("def get_config():\n  raise SystemExit(1)\n")),
    Case("a config without arms", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py: get_config() lacks the field arms; a "
         "task='classifier' config has every field of experiments/configs/"
         "base.py's get_base_config().", _config_file(
             _BASE + "def get_config():\n  c = base.get_base_config()\n"
             "  del c['arms']\n  return c\n")),
    Case("a config without model.activation", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py: get_config() lacks the field "
         "model.activation; a task='classifier' config",
         _config_file(_BASE + "def get_config():\n  c = base.get_base_config()"
                      "\n  del c.model['activation']\n  return c\n")),
    Case("an empty ConfigDict", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py: get_config() lacks the fields arms, axis, "
         "axis_values, batch_size, checkpoint_every, data_dir, data_split, "
         "dataset and ", _config_file(
             "import ml_collections\ndef get_config():\n  return "
             "ml_collections.ConfigDict()\n")),
    Case("a memory config without memory.delays", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py: get_config() lacks the field "
         "memory.delays; a task='memory' config has every field of "
         "experiments/configs/base.py's get_memory_base_config().",
         _config_file(_BASE + "def get_config():\n  c = "
                      "base.get_memory_base_config()\n  del "
                      "c.memory['delays']\n  return c\n")),
    Case("a meta_plasticity config without n_way", ["--config={tmp}/cfg.py"],
         "config file {tmp}/cfg.py: get_config() lacks the field n_way; a "
         "task='meta' config has every field of experiments/configs/"
         "meta_plasticity.py's get_config().", _config_file(
             _META + "def get_config():\n  c = _meta()\n  del c['n_way']\n"
             "  return c\n")),
]


@pytest.mark.parametrize("case", CONFIG_FILE_CASES,
                         ids=[c.name for c in CONFIG_FILE_CASES])
def test_every_bad_config_file_gives_one_line(case, tmp_path, monkeypatch):
  test_bad_input_gives_one_line_and_writes_nothing(case, tmp_path,
                                                   monkeypatch)


def test_an_unreadable_config_file_is_one_line_and_exit_2(tmp_path):
  """Mode 000; as root, run without the capabilities that bypass it."""
  path = tmp_path / "cfg.py"
  path.write_text("def get_config():\n  pass\n")
  path.chmod(0)
  prefix = []
  if os.geteuid() == 0:
    if not shutil.which("setpriv"):
      pytest.skip("root reads any file, and setpriv is not installed")
    caps = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
  proc = subprocess.run(
      [*prefix, sys.executable, "-m", "experiments.main", f"--config={path}",
       f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True,
      timeout=120, cwd=ROOT, check=False)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.splitlines() == [
      f"ojax: error: config file {path} cannot be read: Permission denied."]
  assert not (tmp_path / "run").exists()


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

"""A table of bad command lines: one clear line, exit code 2, nothing written."""

import concurrent.futures
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "experiments", "main.py")
CONFIG = "--config=" + os.path.join(ROOT, "experiments", "configs",
                                    "deep_online.py")

# (flags, text the one-line error must contain)
CASES = [
    (["--config=experiments/configs/nope.py"], "unknown experiment 'nope'"),
    ([CONFIG, "--config.model.dpth=3"], "no config field 'model.dpth'"),
    ([CONFIG, "--config.arms.bp.lrr=1"], "no config field 'arms.bp.lrr'"),
    ([CONFIG, "--config.lr.x=3"], "no config field 'lr.x'"),
    ([CONFIG, "--config.lr=abc"], "could not convert string to float: abc"),
    ([CONFIG, "--config.seeds=two"], "--config.seeds=two"),
    ([CONFIG, "positional"], "unexpected arguments ['positional']"),
    ([], "--config is required"),
    ([CONFIG, "--config.lr=-1"], "lr=-1.0 must be finite and > 0"),
    ([CONFIG, "--config.oja_lr=-0.1"], "oja_lr=-0.1 must be finite and >= 0"),
    ([CONFIG, "--config.arms.bp_oja.oja_lr=nan"], "oja_lr=nan must be finite"),
    ([CONFIG, "--config.dataset=imagenet"], "dataset='imagenet' is not known"),
    ([CONFIG, "--config.model.activation=gelu"],
     "model.activation='gelu' is not known; choose one of softplus"),
    ([CONFIG, "--config.model.kernel_init=zeros"],
     "model.kernel_init='zeros' is not known"),
    ([CONFIG, "--config.model.output_post=probs"],
     "model.output_post='probs' is not known"),
    ([CONFIG, "--config.model.feedback=direct"],
     "model.feedback='direct' is not known"),
    ([CONFIG, "--config.model.gain=0"], "model.gain=0.0 must be finite and > 0"),
    ([CONFIG, "--config.model.beta=-10"], "model.beta=-10.0 must be finite"),
    ([CONFIG, "--config.axis_values=(0,-2)"], "model.depth=-2 must be"),
    ([CONFIG, "--config.seeds=0"], "seeds=0 must be finite and > 0"),
    ([CONFIG, "--config.num_samples=0"], "num_samples=0 must be finite"),
    ([CONFIG, "--config.batch_size=3"],
     "eval_every=500 must be a multiple of batch_size=3"),
    ([CONFIG, "--config.checkpoint_every=300"],
     "checkpoint_every=300 must be a multiple of eval_every=500"),
    ([CONFIG, "--config.optimizer=rmsprop"], "optimizer='rmsprop' is not known"),
    ([CONFIG, "--config.oja_layers=some"], "oja_layers='some' is not known"),
    ([CONFIG, "--config.sweep.lr=(0.1,-1)"], "sweep.lr=-1 must be finite"),
    ([CONFIG, "--config.axis=model.foo"], "config field 'model.foo' does not"),
    ([CONFIG, "--config.select_arms=xx"], "select_arms names 'xx'; arms are bp"),
    ([CONFIG, "--config.reference_arm=zz"], "reference_arm='zz' is not an arm"),
    ([CONFIG, "--config.validation=5000"],
     "validation=5000 must be between 1 and 3999"),
    ([CONFIG, "--config.dataset=kmnist", "--config.download=False",
      "--config.data_dir=/nonexistent/tfds"],
     "TFDS dataset 'kmnist' is not in data_dir=/nonexistent/tfds"),
    ([CONFIG, "--distributed"], "--distributed needs --workdir"),
]


def _run(flags, workdir):
  args = [sys.executable, MAIN, *flags]
  if "--distributed" not in flags:
    args.append(f"--workdir={workdir}")
  return subprocess.run(args, capture_output=True, text=True, timeout=120,
                        env={**os.environ, "PYTHONPATH": ROOT}, check=False)


def test_at_least_25_bad_inputs_are_covered():
  assert len(CASES) >= 25


def test_each_bad_input_gets_one_clear_line_exit_2_and_no_run_dir(tmp_path):
  workdirs = [tmp_path / f"run{i}" for i in range(len(CASES))]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    procs = list(pool.map(lambda a: _run(*a),
                          [(flags, w) for (flags, _), w in zip(CASES,
                                                                workdirs)]))
  failures = []
  for (flags, expected), proc, workdir in zip(CASES, procs, workdirs):
    errors = [l for l in proc.stderr.splitlines() if l.startswith("ojax:")]
    ok = (proc.returncode == 2 and len(errors) == 1 and
          expected in errors[0] and "Traceback" not in proc.stderr and
          not workdir.exists())
    if not ok:
      failures.append((flags, proc.returncode, errors, proc.stderr[-600:]))
  assert not failures, failures

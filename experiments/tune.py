r"""Chooses learning rates and Oja rates on a validation split: one command.

  python -m experiments.tune [--only=reference,deep,feedback] [--seeds=3]

Each *study* trains at one representative setting with the last 1,000
training samples held out (``validation=1000``; the test set is never
touched), one vmapped sweep per group of arms: plain-rule arms over ``lr``,
Oja arms over the grid ``lr x oja_lr``. The chosen point of an arm is the one
with the highest mean final validation accuracy over seeds (a diverged seed
counts as 0). Writes each sweep's run directory (summary.md, heat maps) under
``runs/tuning/<study>/<group>``, ``runs/tuning/chosen.json`` and
``docs/tuning.md``. The experiment configs hold the chosen values; this
script says which differ. ``--doc_only`` runs nothing and rewrites the doc
from the sweeps that exist.

Every setting is checked before anything runs (the names in ``--only``, the
seeds, the samples, each sweep's config, data and size): bad input gets one
line, ``ojax: error: ...``, and exit code 2; a sweep that fails gets one
line and exit code 1. The modules with JAX are imported inside the functions
that need them, so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import importlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
from typing import Any

import ml_collections
import numpy as np

from experiments import results

SGD_LRS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
OJA_LRS_LR = (0.003, 0.01, 0.03, 0.1, 0.3)
OJA_LRS = (0.0003, 0.001, 0.003, 0.01, 0.03)
ADAM_LRS = (0.0001, 0.0003, 0.001, 0.003, 0.01)
VALIDATION = 1000
NUM_SAMPLES = 3200  # ~1 pass over the 3,000 remaining; a multiple of 16.
EVALUATIONS = 8  # eval_every = num_samples / EVALUATIONS.

_FA = {"model": {"feedback": "random"}}
_OJA = {"sweep": {"lr": OJA_LRS_LR, "oja_lr": OJA_LRS}}
# Oja rates down to 1e-5: the first reference and feedback sweeps chose 3e-4,
# the lower edge of OJA_LRS.
_OJA_LOW = {"sweep": {"lr": OJA_LRS_LR[:4],
                      "oja_lr": (1e-5, 3e-5, 1e-4) + OJA_LRS[:3]}}
# Deep nets want smaller rates (the first deep_init sweep chose the lower
# edge of SGD_LRS), and Oja rates down to 1e-5 (the reference net's chosen
# 3e-4 sat at OJA_LRS's lower edge).
_SGD_LOW = {"sweep": {"lr": (0.0003, 0.001) + SGD_LRS[:4]}}
_OJA_WIDE = {"sweep": {"lr": (0.0003, 0.001) + OJA_LRS_LR[:3],
                       "oja_lr": (1e-5, 1e-4) + OJA_LRS[:-1]}}
_SGD = {"sweep": {"lr": SGD_LRS}}
# Depth 20 at ~1 pass: the first deep20 sweep chose the lower lr edge (0.0003)
# for batch16 and LayerNorm and the upper Oja edge (0.01) for hidden-only Oja.
_SGD_DEEPER = {"sweep": {"lr": (3e-5, 1e-4) + _SGD_LOW["sweep"]["lr"][:5]}}
_OJA_DEEPER = {"sweep": {"lr": (1e-4, 3e-4, 0.001, 0.003, 0.01),
                         "oja_lr": (1e-5, 1e-4, 1e-3, 0.003, 0.01, 0.03)}}

# study -> (setting overrides, {group: (sweep, {arm: overrides})}, where the
# chosen values go: {arm: "config_module.CONSTANT"}).
STUDIES: dict[str, dict[str, Any]] = {
    "reference": {
        "setting": {},
        "note": "reference network 784-170-130-100-70-10, gain 1",
        "groups": {
            "sgd": (_SGD, {
                "bp": {"oja_lr": 0.0},
                "bp_batch16": {"batch_size": 16},
                "bp_layernorm": {"model": {"layer_norm": True}},
                "bp_he": {"model": {"kernel_init": "he"}},
                "bp_orthogonal": {"model": {"kernel_init": "orthogonal"}},
            }),
            "adam": ({"sweep": {"lr": ADAM_LRS}},
                     {"bp_adam": {"optimizer": "adam"}}),
            "oja": (_OJA_LOW, {"bp_oja": {"oja_layers": "all"},
                               "bp_oja_hidden": {"oja_layers": "hidden"}}),
        },
        "used_by": "online.py (BP_LR, OJA, OJA_HIDDEN), tricks.py before it "
                   "moved to depth 20",
    },
    "deep": {
        "setting": {"model": {"depth": 10, "width": 100}},
        "note": "10 hidden layers of width 100",
        "groups": {
            "sgd": (_SGD, {"bp": {"oja_lr": 0.0}}),
            "oja": (_OJA, {"bp_oja": {"oja_layers": "all"},
                           "bp_oja_hidden": {"oja_layers": "hidden"}}),
        },
        "used_by": "deep_online.py (BP_LR, OJA, OJA_HIDDEN)",
    },
    "deep_init": {
        "setting": {"model": {"depth": 20, "width": 100}},
        "note": "20 hidden layers of width 100, He-normal and orthogonal "
                "init (the good inits the deep claim is deconfounded from)",
        "groups": {
            "sgd": (_SGD_LOW, {"bp_he": {"model": {"kernel_init": "he"}},
                           "bp_orthogonal": {
                               "model": {"kernel_init": "orthogonal"}}}),
            "oja": (_OJA_WIDE, {
                "bp_oja_he": {"model": {"kernel_init": "he"},
                              "oja_layers": "all"},
                "bp_oja_orthogonal": {"model": {"kernel_init": "orthogonal"},
                                      "oja_layers": "all"}}),
        },
        "used_by": "deep_online.py (INIT_RATES)",
    },
    "deep20": {
        "setting": {"model": {"depth": 20, "width": 100}},
        "note": "20 hidden layers of width 100, Xavier init: BP, the tricks "
                "that need no other init, and BP + Oja (He and orthogonal "
                "at depth 20: study deep_init)",
        "groups": {
            "sgd": (_SGD_DEEPER, {"bp": {"oja_lr": 0.0},
                               "bp_batch16": {"batch_size": 16},
                               "bp_layernorm": {
                                   "model": {"layer_norm": True}}}),
            "adam": ({"sweep": {"lr": ADAM_LRS}},
                     {"bp_adam": {"optimizer": "adam"}}),
            "oja": (_OJA_DEEPER, {"bp_oja": {"oja_layers": "all"},
                                  "bp_oja_hidden": {"oja_layers": "hidden"}}),
        },
        "used_by": "tricks.py (DEPTH20_RATES)",
    },
    "feedback": {
        "setting": {},
        "note": "reference network with fixed random feedback (FA)",
        "groups": {
            "sgd": (_SGD, {"fa": {**_FA, "oja_lr": 0.0}}),
            "oja": (_OJA_LOW, {"fa_oja": {**_FA, "oja_layers": "all"},
                               "fa_oja_hidden": {**_FA,
                                                 "oja_layers": "hidden"}}),
        },
        "used_by": "feedback_alignment.py (FA_LR, FA_OJA, FA_OJA_HIDDEN)",
    },
}


def study_config(study: str, group: str, seeds: int, num_samples: int
                 ) -> ml_collections.ConfigDict:
  """The config of one sweep: base setting, one group's arms and grid."""
  spec = STUDIES[study]
  sweep, arms = spec["groups"][group]
  c = importlib.import_module("experiments.configs.base").get_base_config()
  with c.unlocked():
    c.experiment = f"tune-{study}-{group}"
    c.validation, c.seeds = VALIDATION, seeds
    c.num_samples, c.eval_every = num_samples, num_samples // EVALUATIONS
    for field, value in spec["setting"].get("model", {}).items():
      c.model[field] = value
    c.arms = ml_collections.ConfigDict(copy.deepcopy(arms))
    c.reference_arm = next(iter(arms))
    for field, values in sweep["sweep"].items():
      c.sweep[field] = tuple(values)
  return c


def choose(run_dir: str) -> dict[str, dict[str, Any]]:
  """Best grid point per job of a finished sweep, by mean validation acc."""
  from experiments import stats  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(os.listdir(os.path.join(run_dir, "jobs"))):
    with open(os.path.join(run_dir, "jobs", name)) as f:
      saved = json.load(f)
    history = saved["history"]
    acc_GxS = np.nan_to_num(np.asarray(history["test_accuracy"],
                                       np.float64)[-1])
    acc_GxS[np.asarray(history["diverged_at"])[-1] >= 0] = 0.0
    best = int(np.argmax(acc_GxS.mean(axis=1)))
    est = stats.interval(acc_GxS[best])
    point = saved["grid"][best]
    edge = [k for k, v in point.items()
            if v in (min(p[k] for p in saved["grid"]),
                     max(p[k] for p in saved["grid"]))]
    out[saved["arm"]] = {"point": point, "val_acc": est.mean,
                         "val_ci": [est.low, est.high],
                         "points": len(saved["grid"]), "edge": edge}
  return out


def run_group(study: str, group: str, seeds: int, num_samples: int,
              out_root: str) -> None:
  """Runs (or resumes) one sweep in this process."""
  from experiments import rundir  # pylint: disable=g-import-not-at-top
  from experiments import runner  # pylint: disable=g-import-not-at-top
  config = study_config(study, group, seeds, num_samples)
  run_dir = os.path.join(out_root, study, group)
  os.makedirs(run_dir, exist_ok=True)
  workdir = rundir.open_workdir(run_dir, config.experiment)
  runner.run(config, runner.prepare(config), workdir.path,
             f"python -m experiments.tune --only={study}", workers=0)


def run_study(study: str, seeds: int, num_samples: int, out_root: str,
              timeout_s: float, tries: int = 3) -> dict[str, dict[str, Any]]:
  """Each group in a fresh process, retried (resuming) if it stalls."""
  chosen = {}
  for group in STUDIES[study]["groups"]:
    argv = [sys.executable, "-m", "experiments.tune", f"--group={study}/"
            f"{group}", f"--seeds={seeds}", f"--num_samples={num_samples}",
            f"--out={out_root}"]
    for attempt in range(tries):
      proc = subprocess.Popen(argv)
      try:
        if proc.wait(timeout=timeout_s) == 0:
          break
      except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # Dumps stacks, then kill.
        proc.kill()
        proc.wait()
      print(f"[tune] {study}/{group}: attempt {attempt + 1} failed",
            flush=True)
    else:
      from experiments import main as cli  # pylint: disable=g-import-not-at-top
      cli.fail(f"sweep {study}/{group} failed {tries} times (its output is "
               f"above; it resumes from {os.path.join(out_root, study, group)}"
               "); the other studies' choices are kept.", 1)
    chosen.update(choose(os.path.join(out_root, study, group)))
  return chosen


def _fmt(point: dict[str, float]) -> str:
  return ", ".join(f"{k}={v:g}" for k, v in point.items())


def write_doc(path: str, chosen: dict[str, dict[str, Any]], seeds: int,
              num_samples: int) -> None:
  lines = [
      "# How the learning rates and Oja rates were chosen", "",
      "Command (regenerates this file and `runs/tuning/`):", "",
      "    make tune   # = .venv/bin/python -m experiments.tune", "",
      f"Data: `embedded_mnist` training set (4,000 digits) with its last "
      f"{VALIDATION} samples held out as the validation split "
      f"(`--config.validation={VALIDATION}`); the test set is never used. "
      f"Online (batch 1 unless the arm says otherwise), {num_samples} "
      f"training samples (about one pass over the remaining 3,000), "
      f"{seeds} seeds per grid point, all grid points of an arm vmapped in "
      "one compiled call (`--config.sweep.lr=... --config.sweep.oja_lr=...`).",
      "", "Grids: SGD arms `lr` in " + str(SGD_LRS) + "; Adam `lr` in "
      + str(ADAM_LRS) + "; Oja arms `lr` in " + str(OJA_LRS_LR) +
      " x `oja_lr` in " + str(OJA_LRS) + " (Oja arms always have "
      "`oja_lr > 0`; `oja_lr = 0` is the BP arm, tuned on its own).", "",
      "Rule: per arm, the grid point with the highest mean final validation "
      "accuracy over seeds (diverged seeds count as 0). Values are chosen "
      "once and copied into the experiment configs; they were not re-tuned "
      "after looking at test results. A value marked *at the grid's edge* "
      "is the smallest or largest one tried, so the best rate may lie "
      "outside the grid; it is used as chosen (the grid was fixed before "
      "the runs and not extended afterwards).", ""]
  for study, spec in STUDIES.items():
    if study not in chosen:
      continue
    lines += [f"## {study}: {spec['note']}", "",
              f"Used by `experiments/configs/{spec['used_by']}`.", "",
              "| arm | chosen | validation acc [98% CI] | grid points | "
              "at the grid's edge |", "|---|---|---|---|---|"]
    for arm, c in chosen[study].items():
      if arm == "_notes":
        continue
      lines.append(f"| {arm} | {_fmt(c['point'])} | {c['val_acc']:.4f} "
                   f"[{c['val_ci'][0]:.4f}, {c['val_ci'][1]:.4f}] | "
                   f"{c['points']} | {', '.join(c.get('edge', [])) or '-'} |")
    grids = "; ".join(
        f"{group}: " + " x ".join(f"{k} in {tuple(v)}" for k, v in
                                  sweep["sweep"].items())
        for group, (sweep, _) in spec["groups"].items())
    lines += ["", f"Grids: {grids}.", "",
              f"Heat maps: `runs/tuning/{study}/*/sweep-*.png`.", ""]
    lines += [n + "\n" for n in chosen[study].get("_notes", [])]
  with open(path, "w") as f:
    f.write("\n".join(lines))


def check(studies: list[str], seeds: int, num_samples: int) -> None:
  """Everything that can be checked before a sweep runs: one line, exit 2.

  The seeds and samples first (in this script's terms), then each sweep's
  config, data and size as the runner checks them (``runner.prepare``).
  """
  from experiments import main as cli  # pylint: disable=g-import-not-at-top
  from experiments import stats  # pylint: disable=g-import-not-at-top
  if seeds < stats.MIN_SEEDS:
    cli.fail(f"--seeds={seeds} must be >= {stats.MIN_SEEDS} (the doc gives "
             "each chosen point's interval over seeds).")
  batches = [arm.get("batch_size", 1) for spec in STUDIES.values()
             for _, arms in spec["groups"].values() for arm in arms.values()]
  step = EVALUATIONS * math.lcm(*batches)
  if num_samples < step or num_samples % step:
    cli.fail(f"--num_samples={num_samples} must be a positive multiple of "
             f"{step}: {EVALUATIONS} evaluations, each after whole batches of"
             f" up to {max(batches)} samples (default {NUM_SAMPLES}).")
  from experiments import runner  # pylint: disable=g-import-not-at-top
  for study in studies:
    for group in STUDIES[study]["groups"]:
      try:
        runner.prepare(study_config(study, group, seeds, num_samples))
      except ValueError as err:
        cli.fail(f"sweep {study}/{group} cannot run with --seeds={seeds} "
                 f"--num_samples={num_samples}: {cli.one_line(err)}")


def _read_chosen(path: str) -> dict[str, Any]:
  """The chosen values on record (``docs/tuning.json``); one line, exit 2,
  if the file is damaged."""
  from experiments import main as cli  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      chosen = json.load(f)
    if not isinstance(chosen, dict) or not all(
        isinstance(v, dict) for v in chosen.values()):
      raise ValueError("it is not an object of studies")
  except (OSError, ValueError) as err:
    cli.fail(f"{path} is damaged: {cli.one_line(err)}; restore it (git "
             f"checkout -- {path}) or remove it.")
  return chosen


def main(argv: list[str]) -> int:
  """Runs the studies and writes the doc; returns the exit code (bad input:
  one line and exit 2, before anything runs)."""
  from experiments import main as cli  # pylint: disable=g-import-not-at-top
  parser = results.Parser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default=None, help="studies to run (default:"
                      f" all): {', '.join(STUDIES)}")
  parser.add_argument("--doc_only", action="store_true",
                      help="run nothing; rewrite the doc from the sweeps")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--num_samples", type=int, default=NUM_SAMPLES)
  parser.add_argument("--out", default=os.path.join("runs", "tuning"))
  parser.add_argument("--doc", default=os.path.join("docs", "tuning.md"))
  parser.add_argument("--timeout", type=float, default=900.0,
                      help="seconds before a sweep is restarted (resumes)")
  parser.add_argument("--group", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.group:
    study, _, group = args.group.partition("/")
    if group not in STUDIES.get(study, {}).get("groups", {}):
      cli.fail(f"--group={args.group} is not a study/group.")
    faulthandler.register(signal.SIGUSR1)
    try:
      run_group(study, group, args.seeds, args.num_samples, args.out)
    except ValueError as err:
      cli.fail(f"sweep {args.group}: {cli.one_line(err)}", 1)
    return 0
  if args.doc_only and args.only is not None:
    cli.fail("--doc_only runs nothing; leave out --only.")
  studies = [] if args.doc_only else results.names_of(
      "--only", args.only, list(STUDIES), "studies",
      "; --doc_only rewrites the doc without running")
  results.check_path("--out", args.out, directory=True)
  results.check_path("--doc", args.doc, directory=False)
  if not args.timeout > 0:
    cli.fail(f"--timeout={args.timeout:g} must be > 0 seconds.")
  # The chosen values of every study live in the repository, next to the
  # doc, so a machine that ran only some studies keeps the others.
  path = os.path.splitext(args.doc)[0] + ".json"
  chosen = _read_chosen(path)
  check(studies, args.seeds, args.num_samples)
  from experiments import rundir  # pylint: disable=g-import-not-at-top
  for study in studies:
    chosen[study] = run_study(study, args.seeds, args.num_samples, args.out,
                              args.timeout)
    rundir.write_json(path, chosen, indent=2)
  for study in STUDIES:  # Re-read every finished study (doc from files).
    dirs = [os.path.join(args.out, study, g) for g in STUDIES[study]["groups"]]
    if all(os.path.isdir(os.path.join(d, "jobs")) for d in dirs):
      notes = chosen.get(study, {}).get("_notes")
      chosen[study] = {k: v for d in dirs for k, v in choose(d).items()}
      if notes:
        chosen[study]["_notes"] = notes
  rundir.write_json(path, chosen, indent=2)
  write_doc(args.doc, chosen, args.seeds, args.num_samples)
  print(json.dumps(chosen, indent=2))
  print(f"command: {' '.join(shlex.quote(a) for a in sys.argv)}")
  return 0


def run() -> None:
  """The console entry point (``ojax-tune``)."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run()

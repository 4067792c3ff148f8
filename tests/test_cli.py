"""``experiments.results``: bad input and failures.

Bad input (a flag naming nothing or an unknown name, a file where a
directory belongs, a damaged record under docs/results, too few seeds or
samples) gets one line, ``ojax: error: ...``, and exit code 2 before any
experiment or sweep runs (each test replaces the running function by one
that fails the test) and before anything is written. An experiment that
fails makes ``experiments.results`` exit 1, whatever was on record. No
experiment runs here: the failures are fakes of ``run_experiment`` or of
its subprocess, and the records are tiny files in ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from typing import Callable, NamedTuple

import pytest

from experiments import report
from experiments import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = report.Section("Oja helps.", "all", [("t", "| a |\n|---|")], [],
                         "mixed", "1 of 2")


def _never(*args, **kwargs):
  raise AssertionError(f"ran something: {args} {kwargs}")


def _snapshot(tmp) -> dict[str, bytes]:
  out = {}
  for root, _, files in os.walk(tmp):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, tmp)] = f.read()
  return out


def _one_error_line(capsys, code, call) -> str:
  """Runs ``call``; asserts it exits ``code`` with one ``ojax: error:``
  line on stderr and no traceback; returns the text after the prefix."""
  with pytest.raises(SystemExit) as exit_info:
    call()
  err = capsys.readouterr().err
  assert exit_info.value.code == code, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("ojax: error: "), err
  return lines[0][len("ojax: error: "):]


def _results_args(tmp) -> list[str]:
  return [f"--runs={tmp}/runs", f"--out={tmp}/R.md",
          f"--figures={tmp}/figs", f"--records={tmp}/rec"]


def _good_record(tmp, name: str = "online") -> str:
  outcome = results.Outcome(name, f"runs/{name}", "cmd", 12.0, "", "m")
  return results.write_record(str(tmp / "rec"), outcome, SECTION)


def _edit(change: Callable[[dict], object]):
  """Changes the JSON of a good record of ``online``."""
  def prepare(tmp):
    path = _good_record(tmp)
    with open(path) as f:
      saved = json.load(f)
    change(saved)  # In place.
    with open(path, "w") as f:
      json.dump(saved, f)
  return prepare


def _text(text: str):
  def prepare(tmp):
    path = _good_record(tmp)
    with open(path, "w") as f:
      f.write(text)
  return prepare


def _truncated(tmp):
  path = _good_record(tmp)
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text[:len(text) // 2])


def _a_directory(tmp):
  os.makedirs(tmp / "rec" / "online.json")


def _file(tmp):
  (tmp / "a_file").write_text("x")


class Case(NamedTuple):
  name: str
  args: list[str]  # "{tmp}" is replaced by the test's directory.
  expected: str  # What the one line contains.
  prepare: Callable[..., object] | None = None


REC = "{tmp}/rec/online.json is damaged: "
RESULTS_CASES = [
    Case("--only= (empty)", ["--only="],
         "--only='' names no experiments; experiments: landscape, online,"),
    Case("--only=, (no name)", ["--only=,"], "--only=',' names no "
         "experiments"),
    Case("--only with an unknown name", ["--only=online,nope"],
         "--only names unknown experiments 'nope'; experiments: landscape,"),
    Case("--only with a name twice", ["--only=online,online"],
         "--only names 'online' twice; give each once."),
    Case("--figures names a file", ["--figures={tmp}/a_file"],
         "--figures={tmp}/a_file is a file; give a directory.", _file),
    Case("--records names a file", ["--records={tmp}/a_file"],
         "--records={tmp}/a_file is a file; give a directory.", _file),
    Case("--runs below a file", ["--runs={tmp}/a_file/runs"],
         "--runs={tmp}/a_file/runs cannot be created: {tmp}/a_file is a "
         "file.", _file),
    Case("--out names a directory", ["--out={tmp}"],
         "--out={tmp} is a directory; give a file name."),
    Case("--timeout=0", ["--timeout=0"], "--timeout=0 must be > 0 seconds."),
    Case("--timeout not a number", ["--timeout=x"],
         "argument --timeout: invalid float value: 'x'"),
    Case("unknown flag", ["--fast"], "unrecognized arguments: --fast"),
    # Damaged records under --records (docs/results).
    Case("record truncated", [], REC + "not JSON (", _truncated),
    Case("record empty", [], REC + "the file is empty;", _text("")),
    Case("record an empty list", [], REC + "it holds a list, not an object "
         "with outcome and section; restore it (git checkout -- {tmp}/rec/"
         "online.json) or remove it and run: make results ARGS=--only=online",
         _text("[]")),
    Case("record an empty object", [], REC + "it holds keys none, not an "
         "object with outcome and section", _text("{}")),
    Case("record without its section", [], REC + "it holds keys outcome,",
         _edit(lambda s: s.pop("section"))),
    Case("record whose outcome lacks seconds", [],
         REC + "the outcome lacks seconds;",
         _edit(lambda s: s["outcome"].pop("seconds"))),
    Case("record whose outcome has an unknown field", [],
         REC + "the outcome has unknown fields secs;",
         _edit(lambda s: s["outcome"].update(secs=1))),
    Case("record whose seconds are a string", [],
         REC + "outcome.seconds='12' is not a number;",
         _edit(lambda s: s["outcome"].update(seconds="12"))),
    Case("record whose command is a number", [],
         REC + "outcome.command=3 is not a string;",
         _edit(lambda s: s["outcome"].update(command=3))),
    Case("record whose invocations are a fraction", [],
         REC + "outcome.invocations=1.5 is not an integer;",
         _edit(lambda s: s["outcome"].update(invocations=1.5))),
    Case("record of another experiment", [],
         REC + "outcome.name='tricks', not 'online';",
         _edit(lambda s: s["outcome"].update(name="tricks"))),
    Case("record whose outcome is a list", [],
         REC + "the outcome is a list, not an object;",
         _edit(lambda s: s.update(outcome=[]))),
    Case("record whose section lacks its verdict", [],
         REC + "the section lacks verdict;",
         _edit(lambda s: s["section"].pop("verdict"))),
    Case("record whose section is a string", [],
         REC + "the section is a str, not an object;",
         _edit(lambda s: s.update(section="mixed"))),
    Case("record whose tables are a string", [],
         REC + "section.tables is not a list of [title, table] string pairs;",
         _edit(lambda s: s["section"].update(tables="| a |"))),
    Case("record whose figures are numbers", [],
         REC + "section.figures is not a list of file names;",
         _edit(lambda s: s["section"].update(figures=[1]))),
    Case("record whose verdict is unknown", [],
         REC + "section.verdict='great' is not one of reproduced,",
         _edit(lambda s: s["section"].update(verdict="great"))),
    Case("record whose claim is null", [],
         REC + "section.claim=None is not a string;",
         _edit(lambda s: s["section"].update(claim=None))),
    Case("record of a failure whose error is a number", [],
         REC + "a failed section holds more than an error string;",
         _edit(lambda s: s.update(section={"error": 3}))),
    Case("record that is a directory", [],
         "{tmp}/rec/online.json is damaged: Is a directory;", _a_directory),
]


@pytest.mark.parametrize("case", RESULTS_CASES,
                         ids=[c.name for c in RESULTS_CASES])
@pytest.mark.parametrize("report_only", [False, True],
                         ids=["run", "report_only"])
def test_results_bad_input_is_one_line_exit_2_before_anything_runs(
    case, report_only, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(results, "run_experiment", _never)
  monkeypatch.setattr(results, "recorded_outcome", _never)
  if case.prepare:
    case.prepare(tmp_path)
  (tmp_path / "R.md").write_text("the good RESULTS.md")
  before = _snapshot(tmp_path)
  fill = lambda a: a.replace("{tmp}", str(tmp_path))
  argv = [*_results_args(tmp_path), *map(fill, case.args)]
  line = _one_error_line(capsys, 2, lambda: results.main(
      argv + ["--report_only"] * report_only))
  assert fill(case.expected) in line
  assert _snapshot(tmp_path) == before  # RESULTS.md and records intact.


def test_the_record_checks_accept_what_write_record_writes(tmp_path):
  _good_record(tmp_path)
  results.write_record(str(tmp_path / "rec"), results.Outcome(
      "tricks", "r", "c", float("nan"), "exit code 1: boom"), "boom")
  outcomes, sections = results.read_records(str(tmp_path / "rec"))
  assert [o.name for o in outcomes] == ["online", "tricks"]
  assert sections == {"online": SECTION, "tricks": "boom"}
  assert outcomes[1].seconds != outcomes[1].seconds  # NaN, stored as null.


def _fake_run(error: str = "", verdict: str = "mixed"):
  """A run_experiment that writes a section (or fails with ``error``)."""
  def run_experiment(name, run_dir, extra, fresh, timeout_s=0.0):
    del extra, fresh, timeout_s
    os.makedirs(run_dir, exist_ok=True)
    if not error:
      report.write_section(run_dir, SECTION._replace(verdict=verdict), name)
    return results.Outcome(name, run_dir, "cmd", 1.0, error, "m")
  return run_experiment


def _timeouts(argv, timeout=None, **kwargs):
  """subprocess.run of an experiment that runs past every timeout."""
  del kwargs
  if "experiments.main" not in argv:  # platform.processor()'s uname -p.
    return types.SimpleNamespace(returncode=0, stdout=b"", stderr=b"")
  raise subprocess.TimeoutExpired(argv, timeout)


FAILURES = [
    # (case, fake run_experiment or None (the real one, subprocess faked),
    #  earlier record?, exit code, what the record of online then says)
    ("success", _fake_run(verdict="reproduced"), False, 0, "reproduced"),
    ("failure, no earlier record", _fake_run("exit code 1: boom"), False, 1,
     "exit code 1: boom"),
    ("failure, earlier record kept", _fake_run("exit code 1: boom"), True, 1,
     "mixed"),
    ("timeout on every attempt, no earlier record", None, False, 1,
     "exit code timeout after 5 s (attempt 2): "),
    ("timeout on every attempt, earlier record kept", None, True, 1,
     "mixed"),
]


@pytest.mark.parametrize("case,fake,earlier,code,record", FAILURES,
                         ids=[f[0] for f in FAILURES])
def test_results_exits_1_whenever_an_experiment_fails(
    case, fake, earlier, code, record, tmp_path, monkeypatch, capsys):
  del case
  monkeypatch.setattr(results, "machine", lambda: "test machine")
  if fake is None:
    monkeypatch.setattr(results.subprocess, "run", _timeouts)
  else:
    monkeypatch.setattr(results, "run_experiment", fake)
  if earlier:
    _good_record(tmp_path)
  argv = [*_results_args(tmp_path), "--only=online", "--timeout=5"]
  assert results.main(argv) == code
  err = capsys.readouterr().err.strip().splitlines()
  if code:
    assert len(err) == 1 and err[0].startswith(
        "ojax: error: 1 of 1 experiments failed (run.log in their run "
        f"directories under {tmp_path}/runs): online: exit code "), err
  else:
    assert not err
  _, sections = results.read_records(str(tmp_path / "rec"))
  shown = sections["online"]
  assert (shown if isinstance(shown, str) else shown.verdict).startswith(
      record)


def test_a_damaged_run_record_is_one_failed_experiment(tmp_path, monkeypatch,
                                                       capsys):
  monkeypatch.setattr(results, "machine", lambda: "test machine")
  run_dir = tmp_path / "runs" / "online"
  run_dir.mkdir(parents=True)
  (run_dir / results.RUN_RECORD).write_text('{"name": "online"')
  assert results.main([*_results_args(tmp_path), "--report_only"]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and (
      f"online: {run_dir}/{results.RUN_RECORD} is damaged: " in err[0]), err


def test_help_answers_without_importing_jax():
  """``--help`` of results imports no JAX (13-32 s before)."""
  code = ("import runpy, sys\n"
          "for module in ('experiments.results',):\n"
          "  sys.argv = [module, '--help']\n"
          "  try:\n"
          "    runpy.run_module(module, run_name='__main__')\n"
          "  except SystemExit as e:\n"
          "    assert e.code == 0, e.code\n"
          "print('jax imported:', 'jax' in sys.modules)\n")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True,
                        capture_output=True, timeout=60, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "usage: experiments.results" in done.stdout
  assert done.stdout.strip().splitlines()[-1] == "jax imported: False"

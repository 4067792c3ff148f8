"""The feedforward experiments at a tiny size, through the real runner.

Each runs its own config (``experiments/configs/<name>.py``) at its test
size (the config's ``QUICK_ARGS``: a few hundred samples, 2 seeds, small
networks and the arms that reach every code path), in-process via
``experiments.runner``; the tests check the run directory, the diagnostics
and the section (section.json / summary.md) built from it.
"""

import json
import os
import shutil
import types

import numpy as np
import pytest

from experiments import analysis
from experiments import report
from experiments import results
from experiments import runner
from experiments import stats

VERDICTS = report.VERDICTS


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
  cache = {}

  def get(name: str) -> str:
    if name not in cache:
      # The config's own test size (its QUICK_ARGS), as --quick runs it.
      config = results.quick_config(name)
      run_dir = str(tmp_path_factory.mktemp(name))
      runner.run(config, runner.prepare(config), run_dir, f"test {name}")
      cache[name] = run_dir
    return cache[name]

  return get


def _rows(run_dir: str) -> list[dict]:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _check_section(name: str, run_dir: str, tmp_path) -> report.Section:
  del tmp_path
  section = report.read_section(run_dir)
  # 2 seeds are below the verdict rule's minimum: it refuses to rule.
  assert section.verdict == "no verdict", section.verdict
  assert section.claim
  assert os.path.getsize(os.path.join(run_dir, section.figures[0])) > 1000
  assert f"# {name}" in open(os.path.join(run_dir, "summary.md")).read()
  assert all(table.startswith("|") for _, table in section.tables if table)
  return section


def _check_tuned(name: str, run_dir: str, tmp_path) -> report.Section:
  """A tuned run: every arm ran as itself on the verdict's seeds and as
  val_<arm> on the tuning seeds (validation held out, fewer samples per
  pass), on the same grid; the section shows the chosen points and, with
  controls, the second verdict."""
  run = analysis.load_run(run_dir)
  arms = {r.job.arm for r in run.results}
  rules = {a for a in arms if not a.startswith("val_")}
  assert arms == rules | {f"val_{a}" for a in rules}
  for r in run.results:
    if r.job.arm in rules:
      val = analysis.find(run, f"val_{r.job.arm}", r.job.axis_value)
      assert val.grid == r.grid
      assert val.history["diverged_at"].shape[2] == 2  # --tuning_seeds=2
      if run.config.task == "classifier":  # Validation held out.
        assert val.history["samples"][-1] < r.history["samples"][-1]
  section = _check_section(name, run_dir, tmp_path)
  titles = [t for t, _ in section.tables]
  assert titles[0].startswith("Operating points chosen on validation")
  assert any(t.startswith("The claim:") for t in titles)
  if run.config.claim.controls:
    assert any(t.startswith("Beyond a norm control") for t in titles)
    assert section.control_verdict == "no verdict"
  return section


@pytest.mark.slow
@pytest.mark.parametrize("name", ["online", "deep_online", "tricks",
                                  "feedback_alignment"])
def test_a_tuned_experiment_at_its_test_size(name, run_dirs, tmp_path):
  _check_tuned(name, run_dirs(name), tmp_path)


@pytest.mark.slow
def test_bad_init_scales_the_initial_weights(run_dirs, tmp_path):
  run = analysis.load_run(run_dirs("bad_init"))
  test = analysis.find(run, "bp")
  assert [p["model_gain"] for p in test.grid] == [0.1, 1.0]
  w0 = test.history["weight_norm"][0]  # (G, S, L) at samples = 0
  np.testing.assert_allclose(w0[0], 0.1 * w0[1], rtol=1e-4)
  section = _check_tuned("bad_init", run.run_dir, tmp_path)
  assert any("gain=0.1" in t for _, t in section.tables)


@pytest.mark.slow
def test_feedback_alignment_angles(run_dirs):
  run = analysis.load_run(run_dirs("feedback_alignment"))
  assert "feedback_cosine" not in analysis.find(run, "bp").history
  for arm in ("fa", "fa_oja"):
    cos = analysis.find(run, arm).history["feedback_cosine"]  # (E,G,S,L)
    assert cos.shape[2:] == (2, 3)
    assert np.all(np.abs(cos) <= 1 + 1e-5)
    np.testing.assert_allclose(cos[..., -1], 1.0, atol=1e-4)
    assert np.all(cos[0, ..., 0] < 0.99)  # B is not K: FA is not backprop.


@pytest.mark.slow
def test_the_norm_control_keeps_unit_norm_columns(run_dirs):
  run = analysis.load_run(run_dirs("online"))
  norm = analysis.find(run, "bp_norm")
  # weight_norm is each layer's Frobenius norm: with unit-norm columns,
  # sqrt(fan_out) after the first step.
  widths = [16, 10]
  np.testing.assert_allclose(norm.history["weight_norm"][-1, 0, :, :2],
                             np.sqrt(widths)[None, :2].repeat(2, 0),
                             rtol=1e-4)


@pytest.mark.slow
def test_landscape_is_a_map_without_a_verdict(run_dirs, tmp_path):
  del tmp_path
  run = analysis.load_run(run_dirs("landscape"))
  test = analysis.find(run, "default")
  assert len(test.grid) == 6
  section = report.read_section(run.run_dir)
  assert section.verdict == "" and not section.claim


def _comparison(mean, p, n=10):
  return analysis.Comparison("s", "bp_oja", "bp",
                             stats.Estimate(mean, mean - .01, mean + .01, n,
                                            p))


def test_verdict_rule():
  up, flat, down = (_comparison(.02, .001), _comparison(.01, .3),
                    _comparison(-.02, .001))
  assert analysis.verdict([up, up, flat])[0] == "reproduced"
  assert analysis.verdict([up, flat])[0] == "reproduced"
  assert analysis.verdict([up, flat, flat])[0] == "partly reproduced"
  # Three wins against two losses is not a reproduction: both are counted.
  word, why = analysis.verdict([up, up, up, down, down])
  assert word == "mixed" and "better in 3/5" in why and "worse in 2/5" in why
  assert analysis.verdict([down, down, flat])[0] == "contradicted"
  assert analysis.verdict([down, flat, flat])[0] == "not reproduced"
  assert analysis.verdict([flat, flat], [up])[0] == "not reproduced"
  assert analysis.verdict([])[0] == "no verdict"
  word, why = analysis.verdict([_comparison(.02, .001, n=5)])
  assert word == "no verdict" and "at least 10" in why


def test_no_verdict_when_the_exact_test_cannot_pass_holm():
  # 10 pairs: the smallest sign-flip p is 2/1024; x 12 comparisons > 0.02.
  up = _comparison(.02, 2 / 1024, n=10)
  word, why = analysis.verdict([up] * 6, [up] * 6)
  assert word == "no verdict" and "needs at least 11 seeds" in why
  family = analysis.adjust([_comparison(.02, 2 / 2048, n=11)] * 12)
  assert family[0].p_adj == pytest.approx(12 * 2 / 2048)  # < 0.02
  assert analysis.verdict(family[:6], family[6:])[0] == "reproduced"


@pytest.mark.parametrize("primary", [
    "up up flat", "up flat flat", "up up up down down", "down down flat",
    "down flat flat", ""])
def test_every_verdict_the_rule_gives_is_a_section_verdict(tmp_path,
                                                           primary):
  cases = {"up": _comparison(.02, .001), "flat": _comparison(.01, .3),
           "down": _comparison(-.02, .001)}
  word, why = analysis.verdict([cases[c] for c in primary.split()])
  report.write_section(str(tmp_path), report.Section(
      "c", "", [], [], word, why), "t")
  assert report.read_section(str(tmp_path)).verdict == word


def test_holm_adjustment_can_remove_significance():
  # Raw p = 0.015 < 0.02 alone; in a family of three it is not significant.
  one = analysis.adjust([_comparison(.02, .015)])
  three = analysis.adjust([_comparison(.02, .015)] * 3)
  assert one[0].better and not three[0].better
  assert three[0].p_adj == pytest.approx(0.045)


def test_a_diverged_seed_scores_zero_in_its_pair():
  def result(arm, acc, diverged):
    job = runner.Job(arm, None, arm, None)
    return runner.JobResult(job, [{}], {
        "test_accuracy": np.asarray(acc, float)[None, None],
        "diverged_at": np.asarray(diverged)[None, None]})
  a = result("bp_oja", [0.9, 0.1, 0.8, 0.7], [-1, 30, -1, -1])
  b = result("bp", [0.5, 0.6, 0.4, 0.3], [-1, -1, -1, -1])
  c = analysis.compare(a, b, "s")
  # Seed 1 diverged: bp_oja scores 0 there, all 4 seeds stay paired.
  # Differences 0.4, -0.6, 0.4, 0.4: mean 0.15; of the 16 sign flips, 10
  # reach |sum| >= 0.6 (p = 10/16).
  assert c.diverged == (1, 0) and c.diff.n == 4 and c.scored
  assert c.diff.mean == pytest.approx(0.15)
  assert c.diff.p == pytest.approx(10 / 16)


@pytest.mark.slow
def test_results_quick_runs_each_config_and_renders_every_section(tmp_path):
  out = tmp_path / "RESULTS.md"
  assert results.main([
      "--quick", "--only=deep_online,recurrent_memory",
      f"--runs={tmp_path / 'runs'}", f"--out={out}",
      f"--figures={tmp_path / 'figs'}", f"--records={tmp_path / 'rec'}"]) == 0
  text = out.read_text()
  for name in ("deep_online", "recurrent_memory"):
    assert f"## {name}" in text
    section = report.read_section(str(tmp_path / "runs" / name))
    assert (tmp_path / "rec" / f"{name}.md").read_text().startswith(
        report.render(section, name, level=1).split("\n")[0])
    assert (tmp_path / "figs" / f"{name}-{section.figures[0]}").exists() or (
        tmp_path / "figs" / section.figures[0]).exists()
  assert "**Verdict: no verdict.**" in text and " s wall on " in text


def test_results_renders_a_section_and_copies_its_figures(tmp_path):
  run_dir = tmp_path / "other"
  run_dir.mkdir()
  (run_dir / "fig.png").write_bytes(b"png")
  section = report.Section("c", "", [("t", "| a |\n|---|")], ["fig.png"],
                           "partly reproduced", "e")
  report.write_section(str(run_dir), section, "other")
  outcome = results.Outcome("other", str(run_dir), "cmd", 1.0, "",
                            protocol=results.PROTOCOL)
  figs = tmp_path / "figs"
  figs.mkdir()
  copied = results._copy_figures(  # pylint: disable=protected-access
      report.read_section(str(run_dir)), "other", str(run_dir), str(figs))
  rec = tmp_path / "rec"
  rec.mkdir()
  readme = tmp_path / "README.md"
  readme.write_text(f"# x\n{results.README_START}\nold\n{results.README_END}"
                    "\nafter\n")
  text = results.render([outcome], {"other": copied}, str(tmp_path / "R.md"),
                        str(figs), [], str(rec), str(readme))
  assert "**Verdict: partly reproduced.** e" in text
  assert "| [other](rec/other.md) | **partly reproduced** | - | e |" in text
  page = (rec / "other.md").read_text()  # The full section.
  assert page.startswith("# other\n") and "| a |" in page
  assert "../figs/other-fig.png" in page and (figs / "other-fig.png").exists()
  assert readme.read_text() == (
      f"# x\n{results.README_START}\n| experiment | verdict | beyond a norm "
      "control |\n|---|---|---|\n| [other](R.md#other) | partly reproduced "
      f"| - |\n{results.README_END}\nafter\n")
  # A record of the earlier protocol (no protocol field) is marked so.
  earlier = results.render([outcome._replace(protocol="")], {"other": copied},
                           str(tmp_path / "R.md"), str(figs), [], str(rec),
                           str(readme))
  assert f"| - | {results.EARLIER}: e |" in earlier
  assert "partly reproduced (earlier protocol, rerun pending) |" in (
      readme.read_text())


def test_a_section_without_a_claim_reads_as_a_map_in_both_tables(tmp_path):
  run_dir = tmp_path / "landscape"
  run_dir.mkdir()
  report.write_section(str(run_dir), report.Section(
      "", "", [("t", "| a |\n|---|")], [], "", ""), "landscape")
  outcome = results.Outcome("landscape", str(run_dir), "cmd", 1.0, "",
                            protocol=results.PROTOCOL)
  readme = tmp_path / "README.md"
  readme.write_text(f"{results.README_START}\n{results.README_END}\n")
  text = results.render([outcome], {"landscape": report.read_section(
      str(run_dir))}, str(tmp_path / "R.md"), str(tmp_path), [], "",
                        str(readme))
  assert ("| [landscape](#landscape) | **descriptive map, no claim** | - |"
          in text)
  assert "| landscape | descriptive map, no claim | - |" in (
      readme.read_text().replace("[landscape](R.md#landscape)", "landscape"))


def test_results_only_one_experiment_keeps_the_other_records(tmp_path):
  """--only=NAME replaces NAME's section; the others stay (any machine)."""
  runs, rec = tmp_path / "runs", tmp_path / "rec"
  for name, word in (("online", "mixed"), ("tricks", "contradicted")):
    (runs / name).mkdir(parents=True)
    report.write_section(str(runs / name), report.Section(
        f"claim of {name}", "", [], [], word, f"why {name}"), name)
  args = [f"--runs={runs}", f"--out={tmp_path / 'R.md'}",
          f"--figures={tmp_path / 'figs'}", f"--records={rec}",
          "--report_only"]
  assert results.main([*args, "--only=online,tricks"]) == 0
  shutil.rmtree(runs / "online")  # A fresh machine: only the records.
  report.write_section(str(runs / "tricks"), report.Section(
      "claim of tricks", "", [], [], "reproduced", "new"), "tricks")
  assert results.main([*args, "--only=tricks"]) == 0
  text = (tmp_path / "R.md").read_text()
  assert "| [online](rec/online.md) | **mixed** | - | why online |" in text
  assert "| [tricks](rec/tricks.md) | **reproduced** | - | new |" in text
  assert text.index("## online") < text.index("## tricks")
  assert sorted(os.listdir(rec)) == ["online.json", "online.md",
                                     "tricks.json", "tricks.md"]
  # A run that fails never replaces a result on record.
  (runs / "tricks" / "section.json").write_text("{damaged")
  assert results.main([*args, "--only=tricks"]) == 1
  assert "| [tricks](rec/tricks.md) | **reproduced** | - | new |" in (
      tmp_path / "R.md").read_text()


def test_a_resumed_run_records_the_total_wall_time_of_its_invocations(
    tmp_path, monkeypatch):
  ran = []
  done = types.SimpleNamespace(returncode=0, stdout=b"", stderr=b"")
  # (platform.processor() runs `uname -p` through subprocess.run too.)
  monkeypatch.setattr(results.subprocess, "run", lambda argv, **_: (
      "experiments.main" in argv and ran.append(argv), done)[1])
  run_dir = str(tmp_path / "online")
  first = results.run_experiment("online", run_dir, [], fresh=True)
  assert first.invocations == 1 and "--restart" in ran[-1]
  report.write_json(os.path.join(run_dir, results.RUN_RECORD),
                    first._replace(seconds=100.0)._asdict())
  resumed = results.run_experiment("online", run_dir, [], fresh=False)
  assert resumed.invocations == 2 and "--restart" not in ran[-1]
  assert 100.0 < resumed.seconds < 100.0 + 10
  assert "s wall (the total of 2 invocations" in results._header(resumed)[0]  # pylint: disable=protected-access
  # --fresh starts the count again, even if it is killed before its end.
  def killed(argv, **_):
    if "experiments.main" in argv:
      raise KeyboardInterrupt
    return done
  monkeypatch.setattr(results.subprocess, "run", killed)
  with pytest.raises(KeyboardInterrupt):
    results.run_experiment("online", run_dir, [], fresh=True)
  monkeypatch.setattr(results.subprocess, "run", lambda argv, **_: done)
  again = results.run_experiment("online", run_dir, [], fresh=False)
  assert again.invocations == 1 and again.seconds < 10


def test_results_removes_figures_no_section_shows(tmp_path):
  figs = tmp_path / "figs"
  figs.mkdir()
  for name in ("online.png", "online-old.png", "logo.png"):
    (figs / name).write_bytes(b"png")
  section = report.Section("c", "", [], ["online.png"], "mixed", "e")
  assert results.prune_figures(str(figs), {"online": section}) == [
      "online-old.png"]
  assert sorted(os.listdir(figs)) == ["logo.png", "online.png"]

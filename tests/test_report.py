"""experiments/report.py: the section renderer, strict JSON, atomic writes.

Every report (summary.md, RESULTS.md) is :func:`report.render` of a
:class:`report.Section`; the run directory's JSON files are strict (no NaN
or Infinity, which other JSON readers refuse) and written atomically.
"""

import json
import math
import os
import types

import ml_collections
import numpy as np
import pytest

from experiments import report
from experiments import stats

SECTION = report.Section(
    claim="Oja helps.", scope="depth 2 and 5",
    tables=[("Final accuracy", "| a |\n|---|\n| 1 |"), ("Empty", "")],
    figures=["curves.png"], verdict="partly reproduced",
    evidence="better in 1/2 settings")


def test_render_a_full_section_at_level_two():
  text = report.render(SECTION, "online", ["First line.", "", "Second."],
                       level=2, figure_dir="docs/figures")
  assert text == "\n".join([
      "## online", "",
      "First line.", "",
      "Second.", "",
      "**Claim.** Oja helps.", "",
      "**Settings the verdict counts.** depth 2 and 5.", "",
      "**Verdict: partly reproduced.** better in 1/2 settings", "",
      "### Final accuracy", "", "| a |\n|---|\n| 1 |", "",
      "![curves](docs/figures/curves.png)", ""])


def test_render_leaves_out_what_a_section_does_not_have():
  bare = report.Section("", "", [("t", "")], [], "", "")
  assert report.render(bare, "tune", level=1) == "# tune\n"
  text = report.render(SECTION._replace(scope=""), "x", level=1)
  assert "Settings the verdict counts" not in text
  assert "## Final accuracy" in text and "Empty" not in text
  assert "![curves](curves.png)" in text  # No figure_dir: the run directory.


def test_write_section_writes_json_and_the_rendered_summary(tmp_path):
  path = report.write_section(str(tmp_path), SECTION, "online", ["Pre."])
  assert path == str(tmp_path / "summary.md")
  assert (tmp_path / "summary.md").read_text() == report.render(
      SECTION, "online", ["Pre."], level=1)
  assert report.read_section(str(tmp_path)) == SECTION
  assert json.loads((tmp_path / "section.json").read_text())["verdict"] == (
      "partly reproduced")
  assert sorted(os.listdir(tmp_path)) == ["section.json", "summary.md"]


@pytest.mark.parametrize("verdict", report.VERDICTS + ("",))
def test_every_verdict_round_trips(tmp_path, verdict):
  report.write_section(str(tmp_path), SECTION._replace(verdict=verdict), "t")
  assert report.read_section(str(tmp_path)).verdict == verdict


def test_an_unknown_verdict_is_refused_and_nothing_is_written(tmp_path):
  with pytest.raises(ValueError, match="verdict 'confirmed' must be one of"):
    report.write_section(str(tmp_path), SECTION._replace(verdict="confirmed"),
                         "t")
  assert not os.listdir(tmp_path)


def _strict(text):
  def refuse(name):
    raise ValueError(f"not strict JSON: {name}")
  return json.loads(text, parse_constant=refuse)


def test_jsonable_gives_plain_types_and_none_for_non_finite_floats():
  value = {"a": np.float32(0.5), "b": np.arange(3), "c": (1, [np.nan]),
           "d": float("inf"), "e": np.array([[1.0, -np.inf]]),
           "f": np.int64(7), "g": np.bool_(True), "h": "s", "i": None}
  out = report.jsonable(value)
  assert out == {"a": 0.5, "b": [0, 1, 2], "c": [1, [None]], "d": None,
                 "e": [[1.0, None]], "f": 7, "g": True, "h": "s", "i": None}
  assert type(out["a"]) is float and type(out["f"]) is int
  assert type(out["g"]) is bool


def test_write_json_and_jsonl_are_strict_json(tmp_path):
  obj = {"loss": float("nan"), "acc": np.array([0.5, np.inf])}
  report.write_json(str(tmp_path / "a.json"), obj)
  assert _strict((tmp_path / "a.json").read_text()) == {
      "loss": None, "acc": [0.5, None]}
  rows = [{"s": i, "x": np.float64(v)} for i, v in
          enumerate([1.0, math.nan, -math.inf])]
  report.write_jsonl(str(tmp_path / "m.jsonl"), iter(rows))
  lines = (tmp_path / "m.jsonl").read_text().splitlines()
  assert [_strict(line) for line in lines] == [
      {"s": 0, "x": 1.0}, {"s": 1, "x": None}, {"s": 2, "x": None}]


def test_writes_replace_the_file_whole_and_leave_no_temporary(tmp_path):
  path = str(tmp_path / "f.json")
  report.write_json(path, {"v": 1})
  report.write_json(path, {"v": 2})
  assert _strict(open(path).read()) == {"v": 2}
  # A value that cannot be written leaves the old file as it was.
  with pytest.raises(TypeError):
    report.write_json(path, {"v": object()})
  assert _strict(open(path).read()) == {"v": 2}
  report.write_text(str(tmp_path / "t.md"), "hello")
  assert sorted(os.listdir(tmp_path)) == ["f.json", "t.md"]
  assert (tmp_path / "t.md").read_text() == "hello"


def test_write_config_is_the_configs_json(tmp_path):
  c = ml_collections.ConfigDict({"lr": 0.1, "model": {"hidden": (3, 2)}})
  report.write_config(str(tmp_path), c)
  assert json.loads((tmp_path / "config.json").read_text()) == {
      "lr": 0.1, "model": {"hidden": [3, 2]}}


def test_table_is_markdown():
  assert report.table(["a", "b"], [[1, "x"], [2.5, ""]]) == (
      "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 |  |")


def _result(arm, acc_ExGxS, diverged_GxS, grid, axis_value=None):
  """A job result as the runner returns it (history ``(E, G, S)``)."""
  acc = np.asarray(acc_ExGxS, float)
  cfg = ml_collections.ConfigDict({"axis": "model.depth" if axis_value
                                   else "", "num_samples": 100})
  return types.SimpleNamespace(
      job=types.SimpleNamespace(id=f"{arm}", arm=arm, axis_value=axis_value,
                                config=cfg),
      grid=grid,
      history={"samples": np.array([0, 100][:acc.shape[0]]),
               "test_accuracy": acc,
               "diverged_at": np.broadcast_to(np.asarray(diverged_GxS),
                                              acc.shape)})


def test_metric_rows_one_per_grid_point_seed_and_evaluation():
  r = _result("bp", [[[0.1, 0.2]], [[0.3, 0.4]]], [[-1, 50]],
              [{"lr": 0.1}], axis_value=2)
  rows = list(report.metric_rows([r], "deep"))
  assert len(rows) == 2 * 1 * 2
  assert rows[1] == {"experiment": "deep", "job": "bp", "axis": "model.depth",
                     "axis_value": 2, "arm": "bp", "lr": 0.1, "seed": 0,
                     "samples": 100, "test_accuracy": 0.3, "diverged_at": -1}
  assert [(r["seed"], r["samples"], float(r["test_accuracy"]))
          for r in rows] == [(0, 0, 0.1), (0, 100, 0.3), (1, 0, 0.2),
                             (1, 100, 0.4)]


def test_summary_table_counts_diverged_seeds_and_leaves_them_out():
  acc = [[[0.5, 0.7, 0.9, 0.0], [0.2, 0.2, 0.2, 0.2]]]  # (E=1, G=2, S=4)
  r = _result("bp", acc, [[-1, -1, -1, 0], [-1, -1, -1, -1]],
              [{"lr": 0.1}, {"lr": 1.0}])
  config = ml_collections.ConfigDict({"axis": ""})
  text = report.summary_table([r], config, keys=("test_accuracy",))
  head, rule, first, second = text.splitlines()
  assert head == ("| arm | lr | final test accuracy [98% CI] | diverged | "
                  "seeds |")
  assert first == (f"| bp | 0.1 | {stats.interval([0.5, 0.7, 0.9])} | 1 | "
                   "4 |")
  assert second.startswith("| bp | 1 | 0.2000 ") and second.endswith(
      "| 0 | 4 |")
  assert rule == "|---|---|---|---|---|"

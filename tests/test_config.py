"""experiments/config.py: validation refusals, jobs and the fingerprint.

Every refusal is one ``ConfigError`` line naming the field, the value and
what is allowed (table-driven below). The fingerprint of a job is what a
resumed run compares: every field that changes a job's numbers must change
it, and the fields that do not (names, bookkeeping) must leave it alone.
"""

import copy
import math

import ml_collections
import pytest

from experiments import config as config_lib
from experiments.configs import base
from experiments.configs import meta_plasticity


def _small(kind: str = "classifier", **overrides) -> ml_collections.ConfigDict:
  """A base config with two arms; ``overrides`` by dotted field."""
  c = (base.get_memory_base_config() if kind == "memory" else
       base.get_base_config())
  c.experiment = "t"
  c.seeds, c.num_samples, c.eval_every = 2, 160, 80
  if kind == "classifier":
    c.model.hidden = (16,)
  c.arms = {"bp": {"oja_lr": 0.0}, "bp_oja": {"oja_lr": 0.003}}
  for k, v in overrides.items():
    config_lib._set(c, k, v)  # pylint: disable=protected-access
  return c


def test_a_good_config_gives_one_job_per_axis_value_and_arm():
  jobs = config_lib.validate(_small(axis="model.depth", axis_values=(1, 2),
                                    **{"model.width": 8}))
  assert [j.id for j in jobs] == ["depth=1-bp", "depth=1-bp_oja",
                                  "depth=2-bp", "depth=2-bp_oja"]
  assert [j.config.model.depth for j in jobs] == [1, 1, 2, 2]
  assert [j.config.oja_lr for j in jobs] == [0.0, 0.003, 0.0, 0.003]


def test_arms_that_differ_only_in_swept_fields_are_one_job():
  c = _small()
  c.sweep.oja_lr = (0.0, 0.003)
  jobs = config_lib.validate(c)
  assert [j.id for j in jobs] == ["bp"]
  assert config_lib.sweep_grid(jobs[0].config) == [{"oja_lr": 0.0},
                                                   {"oja_lr": 0.003}]


def test_split_per_seed_makes_one_job_per_seed_on_its_own_split():
  jobs = config_lib.validate(_small(split_per_seed=True, seed=3,
                                    select_arms="bp"))
  assert [j.id for j in jobs] == ["bp-split=0", "bp-split=1"]
  assert [(j.config.seed, j.config.data_split, j.config.seeds)
          for j in jobs] == [(3, 0, 1), (4, 1, 1)]


# A result belongs to its job (issue 18 item 2): every job has files of its
# own. (overrides of _small, the whole refusal).
_ONE_ID = ", so one would load the other's results; rename one."
ID_REFUSALS = [
    ({"arms": {"bp oja": {"oja_lr": 0.0}, "bp_oja": {"oja_lr": 0.003}}},
     "arm 'bp oja' and arm 'bp_oja' map to one job id 'bp_oja'" + _ONE_ID),
    ({"arms": {"bp/oja": {"oja_lr": 0.0}, "bp oja": {"oja_lr": 0.003}},
      "split_per_seed": True},
     "arm 'bp oja' and arm 'bp/oja' map to one job id 'bp_oja-split=0'"
     + _ONE_ID),
    ({"arms": {"BP": {"oja_lr": 0.0}, "bp": {"oja_lr": 0.003}}},
     "arm 'BP' and arm 'bp' map to the job ids 'BP' and 'bp', one file name "
     "on case-insensitive file systems" + _ONE_ID),
    # Axis values that print alike; an axis value and an arm name that meet.
    ({"axis": "oja_layers", "select_arms": "bp_oja",
      "axis_values": ("layer_0,layer_1", "layer_0, layer_1")},
     "arm 'bp_oja' at oja_layers='layer_0,layer_1' and arm 'bp_oja' at "
     "oja_layers='layer_0, layer_1' map to one job id "
     "'oja_layers=layer_0_layer_1-bp_oja'" + _ONE_ID),
    ({"axis": "model.activation", "axis_values": ("tanh", "tanh-x"),
      "arms": {"x-bp": {"oja_lr": 0.0}, "bp": {"oja_lr": 0.003}}},
     "arm 'x-bp' at model.activation='tanh' and arm 'bp' at "
     "model.activation='tanh-x' map to one job id 'activation=tanh-x-bp'"
     + _ONE_ID),
    ({"arms": {"bp": {"oja_lr": 0.0}, "bp-split=1": {"oja_lr": 0.003}}},
     "arm 'bp-split=1': its job id 'bp-split=1' holds '-split=', which marks "
     "split_per_seed's jobs; rename it."),
    ({"arms": {"bp": {"oja_lr": 0.0}, "***": {"oja_lr": 0.003}}},
     "arm '***': an arm's name needs a letter or digit (job ids, which name "
     "its files, keep A-Z, a-z, 0-9, '_', '.', '=', '-'); rename it."),
    ({"arms": {"bp": {"oja_lr": 0.0}, "o" * 201: {"oja_lr": 0.003}}},
     f"arm '{'o' * 201}': its job id is 201 characters long (> 200), too "
     "long for a file name; shorten the arm's name or the axis value."),
]


@pytest.mark.parametrize("overrides, message", ID_REFUSALS, ids=[
    "arm_names", "split_jobs", "case", "axis_values", "axis_value_and_arm",
    "split_tag", "no_letter", "too_long"])
def test_two_jobs_never_share_an_id(overrides, message):
  arms = overrides.get("arms", {"bp": {}})
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(_small(**overrides, reference_arm=next(iter(arms))))
  assert str(err.value) == message


def test_job_ids_of_arms_that_differ_stay_apart():
  jobs = config_lib.validate(_small(arms={
      "bp oja": {"oja_lr": 0.0}, "bp-oja": {"oja_lr": 0.003},
      "bp=oja": {"oja_lr": 0.001}}, reference_arm="bp oja"))
  assert [j.id for j in jobs] == ["bp_oja", "bp-oja", "bp=oja"]


# (overrides of _small, the message's start or a regex for it). The task of
# _small is the classifier unless the case's overrides name "memory".
REFUSALS = [
    ({"task": "vision"}, r"task='vision' is not known; choose one of "
     "classifier, memory, meta."),
    ({"seeds": 0}, r"seeds=0 must be finite and > 0."),
    ({"seeds": True}, r"seeds=True must be an integer."),
    ({"num_samples": 0}, r"num_samples=0 must be finite and > 0."),
    ({"num_samples": 1.5}, r"num_samples=1.5 must be an integer."),
    ({"eval_every": -100}, r"eval_every=-100 must be finite and > 0."),
    ({"seed": -1}, r"seed=-1 must be finite and >= 0."),
    ({"seed": 2**31}, r"seed=2147483648 must be <= 2147483647"),
    ({"lr": float("nan")}, r"lr=nan must be finite."),
    ({"lr": 0.0}, r"lr=0.0 must be finite and > 0."),
    ({"oja_lr": -0.001}, r"oja_lr=-0.001 must be finite and >= 0."),
    ({"batch_size": 3}, r"eval_every=80 must be a multiple of batch_size=3."),
    ({"checkpoint_every": 120}, r"checkpoint_every=120 must be a multiple of "
     r"eval_every=80 \(or 0\)."),
    ({"optimizer": "rmsprop"}, r"optimizer='rmsprop' is not known"),
    ({"dataset": "imagenet"}, r"dataset='imagenet' is not known"),
    ({"validation": -5}, r"validation=-5 must be finite and >= 0."),
    ({"data_split": 1, "dataset": "mnist"}, r"data_split/split_per_seed "
     "resample the train/test split of an embedded dataset"),
    ({"model.activation": "gelu"}, r"model.activation='gelu' is not known"),
    ({"model.kernel_init": "ones"}, r"model.kernel_init='ones' is not known"),
    ({"model.depth": -1}, r"model.depth=-1 must be finite and >= 0."),
    ({"model.hidden": (16, 0)}, r"model.hidden\[1\]=0 must be finite and > "
     "0."),
    ({"model.gain": 0.0}, r"model.gain=0.0 must be finite and > 0."),
    ({"model.beta": float("inf")}, r"model.beta=inf must be finite."),
    ({"oja_layers": "layer_9"}, r"oja_layers='layer_9' is not known; choose "
     "all, hidden or a comma-separated list of layer_0, layer_1."),
    ({"oja_layers": 3}, r"oja_layers=3 must be a string."),
    ({"reference_arm": "sgd"}, r"reference_arm='sgd' is not an arm; arms are "
     "bp, bp_oja."),
    ({"select_arms": "nope"}, r"select_arms names 'nope'; arms are bp, "
     "bp_oja."),
    ({"select_arms": ","}, r"select_arms=',' names no arm"),
    ({"axis": "model.depth"}, r"axis='model.depth' needs axis_values"),
    ({"axis": "oja_lr", "axis_values": (0.1,)}, r"axis='oja_lr' would not "
     "apply: arms bp, bp_oja set oja_lr"),
    ({"axis": "model.colour", "axis_values": (1,)}, r"config field "
     "'model.colour' does not exist"),
    ({"sweep.model_gain": (0.0,)}, r"sweep.model_gain=0.0 must be finite and "
     "> 0."),
    ({"sweep.lr": (0.1, -0.1)}, r"sweep.lr=-0.1 must be finite and > 0."),
    ({"arms": {"bp": {}, "bp_oja": {"lr": -1.0}}}, r"arm 'bp_oja': lr=-1.0 "
     "must be finite and > 0."),
    ({"arms": {"bp": {"model": {"activation": "x"}}}}, r"arm 'bp': "
     "model.activation='x' is not known"),
    ({"axis": "model.depth", "axis_values": (1,), "model.width": 0.5},
     r"arm 'bp' at model.depth=1: model.width=0.5 must be an integer."),
    ({"split_per_seed": True, "seeds": 101}, r"split_per_seed runs one job "
     "per seed: seeds=101 is more than 100"),
    ({"task": "memory", "memory.delays": 60}, r"memory.delays=60 must be < "
     "memory.length=60 and < memory.eval_length=400."),
    ({"task": "memory", "oja_layers": "hidden"}, r"oja_layers='hidden' is "
     "for the classifier"),
    # (The swept field is looked up before the sweep is checked.)
    ({"task": "memory", "sweep.model_gain": (0.5,)}, r"config field "
     "'model.gain' does not exist"),
    ({"task": "memory", "model.activation": "relu"}, r"model.activation="
     "'relu' is not known"),
    # Checked up front (issue 18 item 4).
    ({"model.hidden": ()}, r"model.hidden=\(\) has no hidden layer \(with "
     r"model.depth=0\)"),
    ({"axis": "seeds", "axis_values": (2, 3)}, r"axis='seeds' cannot be the "
     "axis: the seeds are what every comparison pairs over; choose one of "
     "batch_size, dataset, diagnostics, eval_batch_size, eval_every, lr, "
     "model.activation,"),
    ({"axis": "data_split", "axis_values": (0, 1)}, r"axis='data_split' "
     "cannot be the axis: the seeds are what every comparison pairs over"),
    ({"axis": "split_per_seed", "axis_values": (True, False)},
     r"axis='split_per_seed' cannot be the axis: the seeds"),
    ({"axis": "task", "axis_values": ("memory",)}, r"axis='task' cannot be "
     "the axis: a job has one task"),
    ({"axis": "checkpoint_every", "axis_values": (0, 80)},
     r"axis='checkpoint_every' cannot be the axis: it changes no job's "
     "numbers"),
    ({"axis": "model", "axis_values": (1,)}, r"axis='model' cannot be the "
     "axis: it is a group of fields"),
    ({"axis": "model.depth", "axis_values": (1, 2, 1)}, r"axis_values=\(1, "
     r"2, 1\) repeats 1; give each value once."),
    ({"axis_values": (1, 2)}, r"axis_values=\(1, 2\) change nothing without "
     "an axis"),
]


@pytest.mark.parametrize("overrides, message", REFUSALS,
                         ids=[",".join(o) for o, _ in REFUSALS])
def test_bad_value_is_refused_in_one_line(overrides, message):
  overrides = dict(overrides)
  kind = "memory" if overrides.get("task") == "memory" else "classifier"
  if kind == "memory":
    del overrides["task"]
  config = _small(kind, **overrides)
  with pytest.raises(config_lib.ConfigError, match=f"^{message}") as err:
    config_lib.validate(config)
  assert "\n" not in str(err.value)


@pytest.mark.parametrize("field, message", [
    ("oja_lr", r"--config.oja_lr changes nothing: every arm sets oja_lr"),
    ("model.depth", r"--config.model.depth changes nothing: the axis sets"),
    ("lr", r"--config.lr changes nothing: sweep.lr=\(0.01,\) sets it"),
    ("model.hidden", r"--config.model.hidden changes nothing: every job has "
     r"model.depth > 0, which takes model.width.$"),
    ("download", r"--config.download changes nothing: every job's dataset is "
     "embedded in the package.$"),
])
def test_a_flag_that_would_change_nothing_is_refused(field, message):
  config = _small(axis="model.depth", axis_values=(1,))
  config.sweep.lr = (0.01,)
  with pytest.raises(config_lib.ConfigError, match=f"^{message}"):
    config_lib.validate(config, cli_fields=[field])


def _claimed(gains: bool = False, **sweep) -> ml_collections.ConfigDict:
  """_small with a declared claim (counting gains if ``gains``)."""
  config = _small()
  with config.unlocked():
    config.claim = base.claim(
        "s", "scope", "bp_oja", "bp", gains_below=0.5 if gains else None)
  for k, v in sweep.items():
    config.sweep[k] = v
  return config


def test_reference_arm_on_the_command_line_is_refused_under_a_claim():
  message = (r"--config.reference_arm changes nothing: it is the baseline of "
             r"a run without a claim, and this config's claim names its arms "
             r"\('bp_oja' against 'bp'\); set --config.claim.reference "
             r"instead.$")
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_claimed(), cli_fields=["reference_arm"])
  # Without a claim it picks the generic tables' baseline: accepted.
  config_lib.validate(_small(reference_arm="bp_oja"),
                      cli_fields=["reference_arm"])


def test_a_claim_counting_gains_needs_them_swept():
  assert config_lib.validate(_claimed(True, model_gain=(0.5, 1.0)))
  with pytest.raises(config_lib.ConfigError, match=(
      r"^sweep.model_gain=\(\) does not hold the gains the claim counts")):
    config_lib.validate(_claimed(True))


# --- The fingerprint -----------------------------------------------------

# Written out here, not read from config.py: dropping a field from the
# fingerprint by adding it to NOT_NUMERIC must fail a test.
# eval_batch_size changes test_loss in the last bits (XLA:CPU computes an
# example's logits differently in batches of another size): it is in.
EXCLUDED = {"experiment", "select_arms", "reference_arm", "arms",
            "checkpoint_every", "download", "data_dir", "axis", "axis_values",
            "sweep", "processes", "claim"}


def _other(value):
  """A different value of the same kind."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, int):
    return value + 1
  if isinstance(value, float):
    return value * 2 + 1 if math.isfinite(value) else 1.0
  if isinstance(value, str):
    return value + "_x"
  if isinstance(value, tuple):
    return (_other(value[0]),) + value[1:] if value else (1,)
  if isinstance(value, ml_collections.ConfigDict):
    return ml_collections.ConfigDict({"z": 1})
  raise TypeError(f"no other value for {value!r}")


CONFIGS = {"classifier": base.get_base_config,
           "memory": base.get_memory_base_config,
           "meta": meta_plasticity.get_config}


def _digest(cfg):
  return config_lib.fingerprint_digest(config_lib.fingerprint(cfg))


def test_not_numeric_is_the_list_of_excluded_fields():
  assert set(config_lib.NOT_NUMERIC) == EXCLUDED


@pytest.mark.parametrize("name", CONFIGS)
def test_every_numeric_field_changes_the_fingerprint(name):
  cfg = CONFIGS[name]()
  before = _digest(cfg)
  fields = [f for f in config_lib.flat_fields(cfg)
            if f.split(".")[0] not in EXCLUDED]
  assert len(fields) > 10
  unchanged = []
  for field in fields:
    changed = copy.deepcopy(cfg)
    config_lib._set(changed, field, _other(config_lib.get(cfg, field)))  # pylint: disable=protected-access
    if _digest(changed) == before:
      unchanged.append(field)
  assert not unchanged, f"the fingerprint misses {unchanged}"


@pytest.mark.parametrize("name", CONFIGS)
def test_excluded_fields_leave_the_fingerprint_alone(name):
  cfg = CONFIGS[name]()
  before = _digest(cfg)
  fields = [f for f in config_lib.flat_fields(cfg)
            if f.split(".")[0] in EXCLUDED - {"sweep"}]
  assert {"experiment", "checkpoint_every"} <= set(fields)
  for field in fields:
    changed = copy.deepcopy(cfg)
    config_lib._set(changed, field, _other(config_lib.get(cfg, field)))  # pylint: disable=protected-access
    assert _digest(changed) == before, field


@pytest.mark.parametrize("field, values", [
    ("lr", (0.01, 0.1)), ("oja_lr", (0.0, 0.001)),
    ("model_gain", (0.5, 1.0))])
def test_the_sweep_grid_is_in_the_fingerprint(field, values):
  cfg = base.get_base_config()
  before = _digest(cfg)
  cfg.sweep[field] = values
  fp = config_lib.fingerprint(cfg)
  assert fp["sweep_grid"] == [{field: v} for v in values]
  assert config_lib.fingerprint_digest(fp) != before
  cfg.sweep[field] = values[::-1]  # Grid order is the grid's layout.
  assert _digest(cfg) != config_lib.fingerprint_digest(fp)


def test_fingerprint_is_the_resolved_jobs_fields():
  jobs = config_lib.validate(_small())
  fps = [config_lib.fingerprint(j.config) for j in jobs]
  assert [fp["oja_lr"] for fp in fps] == [0.0, 0.003]
  assert fps[0]["model.hidden[0]"] == 16
  assert not any(k.split(".")[0].split("[")[0] in EXCLUDED
                 for fp in fps for k in fp)
  # The digest does not depend on the order of the fields.
  fp = fps[0]
  assert config_lib.fingerprint_digest(dict(reversed(fp.items()))) == (
      config_lib.fingerprint_digest(fp))


# --- The norm control: ojax.sgd_oja(..., unit_norm=True) (issue 19) -------


@pytest.mark.parametrize("arm,message", [
    ({"unit_norm": 1}, r"^arm 'norm': unit_norm=1 must be True or False\.$"),
    ({"unit_norm": True, "optimizer": "adam"}, r"^arm 'norm': unit_norm=True "
     r"is for optimizer='sgd', not 'adam'\.$")], ids=["int", "adam"])
def test_a_bad_unit_norm_is_refused_in_one_line(arm, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(_small(arms={"bp": {}, "norm": arm}))


@pytest.mark.parametrize("oja_layers,on", [("all", (True, True)),
                                           ("hidden", (True, False))])
def test_the_norm_control_arm_is_sgd_oja_with_unit_norm_fused(oja_layers, on,
                                                              caplog):
  """{"oja_lr": 0.0, "unit_norm": True}: plain SGD (or Oja at rate 0 in a
  sweep) with the projection on oja_layers, in the fingerprint, and it takes
  the fused step (no info line)."""
  import logging  # pylint: disable=import-outside-toplevel
  from ojax import fused, train  # pylint: disable=import-outside-toplevel
  jobs = config_lib.validate(_small(
      oja_layers=oja_layers,
      arms={"bp": {"oja_lr": 0.0},
            "norm": {"oja_lr": 0.0, "unit_norm": True}}))
  bp, norm = (config_lib.fingerprint(j.config) for j in jobs)
  assert (bp["unit_norm"], norm["unit_norm"]) == (False, True)
  assert config_lib.fingerprint_digest(bp) != config_lib.fingerprint_digest(
      norm)
  model = config_lib.make_model(jobs[1].config)
  for with_oja in (False, True):
    tx = config_lib.make_optimizer(jobs[1].config, with_oja=with_oja)
    assert tx.unit_norm and tx.oja == with_oja
    with caplog.at_level(logging.INFO, logger="ojax"):
      task = train.classifier_task(model, tx)
    assert isinstance(task.step, fused.FusedStep) and not caplog.records
    params = {"layer_0": {"kernel": 0}, "layer_1": {"kernel": 0}}
    assert task.step.norm_layers(params) == on
  assert not config_lib.make_optimizer(jobs[0].config).unit_norm

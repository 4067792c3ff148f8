"""Defaults shared by every experiment; each config starts from these.

Every field can be overridden on the command line as ``--config.FIELD=VALUE``
(nested: ``--config.model.gain=0.5``, ``--config.arms.bp_oja.oja_lr=0.01``).
A config may define ``QUICK_ARGS``: the flags of its small test size, used by
the tests and ``make results ARGS=--quick``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

# Seeds of every verdict-bearing config: at least the rule's 10, and enough
# that the exact sign-flip test (smallest p = 2 / 2^n) can pass Holm over a
# family of up to 40 comparisons (40 * 2 / 4096 < 0.02).
VERDICT_SEEDS = 12


def claim(statement: str, scope: str, arm: str, reference: str, *,
          secondary: tuple[str, ...] = (), beside: tuple[str, ...] = (),
          metric: str = "test_accuracy",
          at_passes: tuple[float, ...] = (), at_end: bool = True,
          axis_min: float | None = None,
          gains_below: float | None = None, gains_above: float | None = None,
          controls: tuple[str, ...] = (), versus: tuple[str, ...] = (),
          margin: float = 0.0,
          pairs: tuple[tuple[str, str], ...] = (),
          control_at: tuple[Any, ...] = ()) -> ml_collections.ConfigDict:
  """The claim a verdict config tests, as data (``config.claim``).

  ``experiments.claims`` evaluates it; ``experiments.config.validate``
  refuses a claim naming an arm the config does not have.

  Args:
    statement: the claim in one sentence.
    scope: the settings the verdict counts, in words.
    arm: the Oja arm whose comparisons decide the verdict.
    reference: its baseline.
    secondary: arms compared with ``reference`` at the same settings and
      evaluation points, reported beside the verdict. The Holm family is
      ``arm``'s and ``secondary``'s comparisons together.
    beside: arms compared with ``reference`` in tables of their own (their
      own family), e.g. the tricks, or BP next to feedback alignment.
    metric: the history key the claim compares.
    at_passes: evaluation points, in passes over the training set (one
      pass = the training samples the dataset gives the job, validation
      held out). A point a run does not reach, or has no evaluation at, is
      named in the section's scope with the reason.
    at_end: also compare at the last evaluation.
    axis_min: count only the axis values >= this (None: every value).
    gains_below, gains_above: with ``model_gain`` swept, count the gains
      <= ``gains_below`` or >= ``gains_above``; the others are reported in
      the family.
    controls: non-plastic arms that keep weight or activity scale (a
      unit-norm projection, a good init). With ``config.tune``, a second
      verdict line, by the same rule, compares ``arm`` with the best of them
      (on validation) at each counted setting: "beyond a norm control".
    versus: with ``config.tune``, the arms ``arm`` is compared with in the
      verdict (default: ``reference``), e.g. each trick.
    margin: a non-inferiority margin: the verdict's comparisons test
      ``arm + margin - other`` (0: superiority).
    pairs: (arm, base) comparisons reported in the family beside
      ``secondary``, e.g. a trick with Oja against the trick.
    control_at: (axis value, init gain): ``reference`` there (a good init)
      is a control at every setting, beside ``controls``.
  """
  return ml_collections.ConfigDict({
      "statement": statement, "scope": scope, "arm": arm,
      "reference": reference, "secondary": tuple(secondary),
      "beside": tuple(beside), "metric": metric,
      "at_passes": tuple(float(p) for p in at_passes), "at_end": at_end,
      "axis_min": axis_min, "gains_below": gains_below,
      "gains_above": gains_above, "controls": tuple(controls),
      "versus": tuple(versus), "margin": float(margin),
      "pairs": tuple(tuple(p) for p in pairs),
      "control_at": tuple(control_at)})


def _training(c: ml_collections.ConfigDict) -> None:
  """The fields every task has: seeds, stream, rule, arms, axis, sweep."""
  c.experiment = ""
  c.seed = 0
  c.seeds = 5
  c.num_samples = 4000
  c.passes = 0.0  # > 0: train this many passes over the training set instead.
  c.eval_every = 500
  c.batch_size = 1
  c.checkpoint_every = 0  # Samples between orbax checkpoints; 0: at the end.
  c.diagnostics = True
  # Learning rule: optimizer at lr, plus Oja at oja_lr (0 = no Oja term) on
  # oja_layers: all | hidden (all but the output layer) | names of layers.
  c.optimizer = "sgd"
  c.lr = 0.01
  c.oja_lr = 0.0
  c.oja_layers = "all"
  c.unit_norm = False  # True: each unit's weights to norm 1 on oja_layers.
  # Arms (overrides of the fields above), an axis, and a vmapped sweep grid.
  c.arms = ml_collections.ConfigDict()
  c.select_arms = ""  # Comma-separated arm names to run; "" runs them all.
  c.reference_arm = "bp"
  c.axis = ""
  c.axis_values = ()
  c.sweep = ml_collections.ConfigDict()
  c.sweep.lr = ()
  c.sweep.oja_lr = ()
  c.sweep.model_gain = ()
  # tune: every arm also runs as val_<arm> (same grid) on tuning_seeds seeds
  # from tuning_seed on, never the verdict's, with validation held out of
  # each seed's training data; a claim compares each arm at its grid point
  # chosen there, per setting and budget (experiments.tuned).
  c.tune = False
  c.tuning_seeds = 4
  c.tuning_seed = 1000


def get_base_config() -> ml_collections.ConfigDict:
  """The reference formulation: online SGD on 784-170-130-100-70-10."""
  c = ml_collections.ConfigDict()
  c.task = "classifier"
  _training(c)
  # Data: embedded_mnist (5,000 real MNIST digits, offline), digits, or TFDS
  # mnist, fashion_mnist, kmnist, emnist/balanced, cifar10.
  c.dataset = "embedded_mnist"
  c.data_dir = ""
  c.download = True
  c.validation = 0  # > 0: hold out this many training samples, evaluate there.
  # Train/test split of an embedded dataset: split data_split, or, with
  # split_per_seed, seed i on split data_split + i (each seed runs as a job
  # of its own), so the paired tests generalize over splits as well.
  c.data_split = 0
  c.split_per_seed = False
  c.eval_batch_size = 1000
  # Network (reference: softplus beta=10, no biases, Xavier-uniform).
  c.model = ml_collections.ConfigDict()
  c.model.hidden = (170, 130, 100, 70)
  c.model.depth = 0  # > 0: use depth hidden layers of width instead.
  c.model.width = 100
  c.model.activation = "softplus"
  c.model.beta = 10.0
  c.model.use_bias = False
  c.model.kernel_init = "xavier_uniform"
  c.model.gain = 1.0
  c.model.output_post = "softmax"
  c.model.layer_norm = False
  c.model.feedback = "backprop"
  return c


def get_memory_base_config() -> ml_collections.ConfigDict:
  """An RNN learning to recall a random stream (the memory task).

  A *sample* is one training sequence; ``batch_size`` sequences make one
  BPTT step.
  """
  c = ml_collections.ConfigDict()
  c.task = "memory"
  _training(c)
  c.batch_size = 8
  # h_t = f(x_t W_in + h_{t-1} W_rec), o_t = h_t W_out + b_out.
  c.model = ml_collections.ConfigDict()
  c.model.hidden = 64
  c.model.activation = "tanh"  # tanh | softplus
  c.model.beta = 10.0
  c.model.input_scale = 1.0
  c.model.radius = 1.0  # W_rec ~ N(0, radius^2 / hidden)
  c.memory = ml_collections.ConfigDict()
  c.memory.delays = 40  # readout unit k recalls u_{t-k}, k = 1..delays
  c.memory.length = 60  # BPTT horizon of a training sequence
  c.memory.eval_batch = 8  # held-out streams, the same for every run
  c.memory.eval_length = 400
  return c

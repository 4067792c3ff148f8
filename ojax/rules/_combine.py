"""Putting rules after an optimizer, where their sign cannot flip."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ojax.rules import _bcm
from ojax.rules import _common
from ojax.rules import _oja


class RuleAccumulator(NamedTuple):
  """The running mean of the rules' terms over ``optax.MultiSteps`` mini-steps.

  >>> import jax.numpy as jnp, optax, ojax
  >>> tx = ojax.with_rule(optax.MultiSteps(optax.sgd(0.1), 2), ojax.oja(0.01))
  >>> type(tx.init({"w": jnp.ones((2, 2))})[-1]).__name__
  'RuleAccumulator'
  """

  term: Any


# States of the rules themselves (not of wrappers around them).
_RULE_STATES = (_common.RuleState, _oja.OjaState, _bcm.BCMState)


def _is_named_tuple(node: Any) -> bool:
  return isinstance(node, tuple) and hasattr(node, "_fields")


def _children(node: Any) -> list[Any]:
  if _is_named_tuple(node):
    return [getattr(node, f) for f in node._fields]
  if isinstance(node, (tuple, list)):
    return list(node)
  if isinstance(node, dict):
    return list(node.values())
  return []


def _state_names(state: Any, limit: int = 4) -> str:
  """The types of the states in ``state``: ``ScaleByAdamState, ...``."""
  names: list[str] = []

  def walk(node: Any) -> None:
    if _is_named_tuple(node) and type(node).__name__ not in names:
      names.append(type(node).__name__)
    for child in _children(node):
      walk(child)

  walk(state)
  if not names:
    return f"no named state ({_common.type_name(state)})"
  more = ", ..." if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _is_rule_only(state: Any) -> bool:
  """True if ``state`` is the state of plasticity rules and nothing else.

  A rule's own state, or one inside ``optax.inject_hyperparams`` or
  ``optax.masked``, or a chain (tuple) of such states.
  """
  if isinstance(state, _RULE_STATES):
    return True
  if isinstance(
    state, (optax.InjectStatefulHyperparamsState, optax.MaskedState)
  ):
    return _is_rule_only(state.inner_state)
  if type(state) is tuple and state:  # pylint: disable=unidiomatic-typecheck
    return all(_is_rule_only(s) for s in state)
  return False


_INSIDE_MULTISTEPS = (
  "a plasticity rule inside optax.MultiSteps would see only the last "
  "mini-batch's activations; use ojax.with_rule(optax.MultiSteps("
  "optimizer, k), rule), which averages the rule's term over the k "
  "mini-batches."
)
_AFTER_MULTISTEPS = (
  "a plasticity rule after optax.MultiSteps in optax.chain would add its "
  "term at every mini-step (MultiSteps emits zero updates in between); use "
  "ojax.with_rule(optax.MultiSteps(optimizer, k), rule), which averages the "
  "rule's term over the k mini-batches."
)


def check_placement(opt_state: Any, *, fn: str = "ojax") -> None:
  """Refuses plasticity rules that ``optax.MultiSteps`` would misapply.

  Looks at the structure of an optimizer state (``tx.init(params)``, no
  values): a rule's state inside an ``optax.MultiStepsState`` (the rule
  would see only the last mini-batch), or after one in a chain (the rule
  would add its term at every mini-step), raises a one-line ValueError.
  ``ojax.with_rule(optax.MultiSteps(opt, k), rule)`` (also with MultiSteps
  inside a chain) averages the term and passes. :func:`ojax.with_rule` and
  :func:`ojax.train.init_state` call this; call it on ``tx.init(params)``
  in a loop of your own.

  >>> import jax.numpy as jnp, optax, ojax
  >>> tx = optax.chain(optax.MultiSteps(optax.sgd(0.1), 2), ojax.oja(0.01))
  >>> ojax.rules.check_placement(tx.init({"w": jnp.ones((2, 2))}))
  Traceback (most recent call last):
  ...
  ValueError: ojax: a plasticity rule after optax.MultiSteps in optax.chain ...
  """

  def walk(node: Any) -> tuple[bool, bool]:
    """(holds a rule state, holds a MultiSteps state)."""
    if isinstance(node, _RULE_STATES):
      return True, False
    if isinstance(node, optax.MultiStepsState):
      if walk(node.inner_opt_state)[0]:
        raise ValueError(f"{fn}: {_INSIDE_MULTISTEPS}")
      return False, True
    children = [walk(c) for c in _children(node)]
    chain = type(node) in (tuple, list)  # pylint: disable=unidiomatic-typecheck
    # with_rule(MultiSteps, rule) ends its state with the averaged term.
    if chain and not (node and isinstance(node[-1], RuleAccumulator)):
      seen_multisteps = False
      for has_rule, has_multisteps in children:
        if has_rule and seen_multisteps:
          raise ValueError(f"{fn}: {_AFTER_MULTISTEPS}")
        seen_multisteps = seen_multisteps or has_multisteps
    return any(c[0] for c in children), any(c[1] for c in children)

  walk(opt_state)


def _multisteps_states(opt_state: Any) -> list[Any]:
  """Every ``optax.MultiStepsState`` in ``opt_state``, in tree order."""
  return [
    leaf
    for leaf in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.MultiStepsState)
    )
    if isinstance(leaf, optax.MultiStepsState)
  ]


def _check_transform(value: Any, *, fn: str, arg: str) -> None:
  if not (
    callable(getattr(value, "init", None))
    and callable(getattr(value, "update", None))
  ):
    raise ValueError(
      f"{fn}: {arg} has type {_common.type_name(value)}; it "
      "must be an optax GradientTransformation."
    )


def with_rule(
  optimizer: Any, *rules: Any
) -> optax.GradientTransformationExtraArgs:
  """Adds plasticity rules after an optimizer: ``opt(g) + sum of rule terms``.

  ``with_rule(optimizer, rule)`` computes the optimizer's update from the
  gradients, then adds each rule's term, unscaled by the optimizer:

      update = optimizer(grads) + eta_1 * term_1 + eta_2 * term_2 + ...

  so that ``with_rule(optax.sgd(lr), ojax.oja(eta))`` is always ``-lr g +
  eta * oja_term``, with any optimizer (adam, a chain, a schedule). Rules are
  *additive*: each adds its term to the updates it receives. Placed before an
  optimizer in ``optax.chain`` a rule's term is transformed like a gradient
  (``optax.chain(ojax.oja(eta), optax.sgd(lr))`` gives ``-lr (g + eta
  term)``, which is anti-Oja); ``with_rule`` exists so that cannot happen.
  Without ``optax.MultiSteps`` it computes exactly ``optax.chain(optimizer,
  *rules)`` and has the same state, ``(optimizer_state, *rule_states)``.

  With ``optimizer = optax.MultiSteps(opt, k)``, the rules run at every
  mini-step (their states advance: a BCM threshold sees every mini-batch)
  and their terms are averaged over the k mini-steps and added when
  MultiSteps emits its update; in between the update is zero. Mini-steps
  that MultiSteps skips (``should_skip_update_fn``) are skipped by the rules
  too. The state then ends with a :class:`RuleAccumulator`. The same holds
  for an optimizer with one ``optax.MultiSteps`` inside (e.g.
  ``optax.chain(optax.MultiSteps(opt, k), optax.clip(1.0))``). A rule placed
  *inside* ``optax.MultiSteps`` (it would see only the last mini-batch's
  activations) or after it in a chain (it would act at every mini-step)
  raises a ValueError at ``init`` (:func:`check_placement`).

  Args:
    optimizer: an optax transformation (or ``optax.MultiSteps``).
    *rules: one or more plasticity rules (``ojax.oja(eta)``, ``ojax.hebb``,
      ``ojax.sanger``, ``ojax.bcm``, ``ojax.plasticity``), also inside
      ``optax.inject_hyperparams`` or ``optax.masked``. Anything else (an
      optimizer such as ``optax.adam`` in a rule's place) raises a
      ValueError at ``init``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` takes
    ``activations=`` and passes every extra argument to the optimizer and
    the rules.

  >>> import jax.numpy as jnp, optax, ojax
  >>> params = {"w": jnp.array([[1.0], [0.0]])}
  >>> acts = {"w": ojax.Trace(jnp.array([[0.0, 1.0]]), jnp.array([[1.0]]))}
  >>> grads = {"w": jnp.array([[1.0], [1.0]])}
  >>> tx = ojax.with_rule(optax.sgd(0.1), ojax.oja(0.5))
  >>> updates, _ = tx.update(grads, tx.init(params), params, activations=acts)
  >>> updates["w"]            # -0.1 g + 0.5 (x - K y) y^T
  Array([[-0.6],
         [ 0.4]], dtype=float32)
  """
  fn = "ojax.with_rule"
  _check_transform(optimizer, fn=fn, arg="optimizer")
  if isinstance(optimizer, _common.PlasticityRule):
    raise ValueError(
      f"{fn}: the first argument is a plasticity rule; it must be the "
      "optimizer, e.g. ojax.with_rule(optax.sgd(lr), ojax.oja(eta))."
    )
  if not rules:
    raise ValueError(
      f"{fn}: no rule given; call with_rule(optimizer, rule, "
      "...), e.g. with_rule(optax.sgd(lr), ojax.oja(eta))."
    )
  for i, rule in enumerate(rules):
    _check_transform(rule, fn=fn, arg=f"rule {i}")
  # ojax's rules are known by type; other transforms (a rule inside
  # inject_hyperparams or masked) by the structure of their state at init.
  unchecked = [
    i for i, r in enumerate(rules) if not isinstance(r, _common.PlasticityRule)
  ]
  if not isinstance(optimizer, optax.MultiSteps):  # It takes extra args.
    optimizer = optax.with_extra_args_support(optimizer)
  rules = tuple(optax.with_extra_args_support(r) for r in rules)

  def init_fn(params):
    opt_state = optimizer.init(params)
    rule_states = tuple(r.init(params) for r in rules)
    for i in unchecked:
      if not _is_rule_only(rule_states[i]):
        raise ValueError(
          f"{fn}: rule {i} is not a plasticity rule (its state holds "
          f"{_state_names(rule_states[i])}); rules are ojax.oja, "
          "ojax.hebb, ojax.sanger, ojax.bcm and ojax.plasticity (also inside "
          "optax.inject_hyperparams or optax.masked); optimizers go first: "
          "ojax.with_rule(optax.chain(...), rule)."
        )
    multisteps = _multisteps_states(opt_state)
    if len(multisteps) > 1:
      raise ValueError(
        f"{fn}: the optimizer holds {len(multisteps)} optax.MultiSteps; the "
        "rules' terms can be averaged over the mini-steps of one only."
      )
    state = (opt_state, *rule_states)
    if multisteps:
      state += (RuleAccumulator(optax.tree.zeros_like(params)),)
    check_placement(state, fn=fn)
    return state

  def update_fn(updates, state, params=None, **extra_args):
    opt_state, rule_states = state[0], state[1 : 1 + len(rules)]
    new_updates, new_opt_state = optimizer.update(
      updates, opt_state, params, **extra_args
    )
    if not isinstance(state[-1], RuleAccumulator):
      new_rule_states = []
      for rule, rule_state in zip(rules, rule_states, strict=True):
        new_updates, rule_state = rule.update(
          new_updates, rule_state, params, **extra_args
        )
        new_rule_states.append(rule_state)
      return new_updates, (new_opt_state, *new_rule_states)

    # optax.MultiSteps: accumulate the terms, add their mean on emission.
    acc = state[-1].term
    term = optax.tree.zeros_like(acc)
    new_rule_states = []
    for rule, rule_state in zip(rules, rule_states, strict=True):
      term, rule_state = rule.update(term, rule_state, params, **extra_args)
      new_rule_states.append(rule_state)
    (before,) = _multisteps_states(opt_state)
    (after,) = _multisteps_states(new_opt_state)
    accepted = (after.mini_step != before.mini_step) | (
      after.gradient_step != before.gradient_step
    )
    emit = after.gradient_step != before.gradient_step
    seen = jnp.asarray(before.mini_step).astype(jnp.float32)
    mean = jax.tree.map(
      lambda a, t: a + (t.astype(a.dtype) - a) / (seen + 1), acc, term
    )
    mean = jax.tree.map(lambda m, a: jnp.where(accepted, m, a), mean, acc)
    new_updates = jax.tree.map(
      lambda u, m: u + jnp.where(emit, m, 0).astype(u.dtype), new_updates, mean
    )
    new_acc = jax.tree.map(
      lambda m: jnp.where(emit, 0, m).astype(m.dtype), mean
    )
    new_rule_states = [
      jax.tree.map(lambda n, o: jnp.where(accepted, n, o), new, old)
      for new, old in zip(new_rule_states, rule_states, strict=True)
    ]
    return new_updates, (
      new_opt_state,
      *new_rule_states,
      RuleAccumulator(new_acc),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class SgdOja(optax.GradientTransformationExtraArgs):
  """What :func:`sgd_oja` returns: SGD plus Oja's rule, rates in the state.

  An ordinary ``optax.GradientTransformationExtraArgs`` (``init``,
  ``update``); its state is ``optax.inject_hyperparams``' state, whose
  ``hyperparams`` hold the current ``learning_rate`` and
  ``oja_learning_rate`` (unless :func:`sgd_oja` was given jax arrays, see
  there). The subclass carries what :mod:`ojax.fused` needs to run the same
  update in its fused step: :func:`ojax.train.classifier_task` recognizes it
  by type (never by probing it).

  Attributes:
    mask: the mask of the Oja term and of the unit-norm projection, as
      given to :func:`sgd_oja` (None: every traced kernel).
    oja: False for plain SGD (``oja_learning_rate=None``).
    unit_norm: True if each unit's incoming weights are projected to unit
      norm after every step (where ``mask`` is True).
  """

  mask: Any
  oja: bool
  unit_norm: bool
  _text: str
  _fixed: Optional[tuple[Any, Any]]

  # No __slots__: instances carry the static mask and flag in a __dict__.
  def __new__(
    cls,
    init: Any,
    update: Any,
    *,
    mask: Any,
    oja: bool,
    text: str,
    fixed: Optional[tuple[Any, Any]] = None,
    unit_norm: bool = False,
  ):
    self = super().__new__(cls, init, update)
    self.mask = mask
    self.oja = oja
    self.unit_norm = unit_norm
    self._text = text
    self._fixed = fixed
    return self

  def __repr__(self) -> str:
    return self._text

  def rates(self, state: Any) -> tuple[jax.Array, Optional[jax.Array]]:
    """``(learning_rate, oja_learning_rate)`` held by ``state``.

    ``state`` is this transform's state (after ``update``: the rates that
    update used). The Oja rate is None for plain SGD.
    """
    if self._fixed is not None:  # Rates given as arrays (not in the state).
      return self._fixed
    hyper = state.hyperparams
    return hyper["learning_rate"], hyper.get("oja_learning_rate")

  def oja_where(self, params: Any) -> Any:
    """A bool at every leaf of ``params``: True where the Oja term may act.

    The mask broadcast over ``params`` (True everywhere without one; False
    everywhere for plain SGD). The term acts on those leaves that also get
    a Trace.
    """
    if not self.oja:
      return jax.tree.map(lambda _: False, params)
    return _common.full_mask(self.mask, params, fn="ojax.sgd_oja")

  def norm_where(self, params: Any) -> Any:
    """A bool at every leaf of ``params``: True where the unit-norm
    projection may act.

    The mask broadcast over ``params`` (True everywhere without one; False
    everywhere without ``unit_norm``). The projection acts on those leaves
    that also get a Trace.
    """
    if not self.unit_norm:
      return jax.tree.map(lambda _: False, params)
    return _common.full_mask(self.mask, params, fn="ojax.sgd_oja")


class _Static:
  """A pytree node's static data, equal when it holds the same objects (a
  mask may be an unhashable tree, so it is compared by identity)."""

  __slots__ = ("value",)

  def __init__(self, value: tuple[Any, ...]):
    self.value = value

  def __eq__(self, other: object) -> bool:
    return (
      isinstance(other, _Static)
      and len(other.value) == len(self.value)
      and all(a is b for a, b in zip(self.value, other.value, strict=True))
    )

  def __hash__(self) -> int:
    return hash(tuple(id(v) for v in self.value))


# A NamedTuple is a pytree whose unflatten calls the class with its fields
# alone; SgdOja's static attributes travel as the node's static data, so a
# tree round trip (as flax.nnx does with an optimizer's transform) gives the
# same SgdOja back.
jax.tree_util.register_pytree_node(
  SgdOja,
  lambda tx: (
    (tx.init, tx.update),
    _Static((tx.mask, tx.oja, tx._text, tx._fixed, tx.unit_norm)),
  ),
  lambda aux, children: SgdOja(
    *children,
    mask=aux.value[0],
    oja=aux.value[1],
    text=aux.value[2],
    fixed=aux.value[3],
    unit_norm=aux.value[4],
  ),
)


def _unit_columns(kernel_IxO: jax.Array) -> jax.Array:
  """``K[:, j] / ||K[:, j]||`` for every column; a zero column unchanged."""
  norm = jnp.sqrt(jnp.sum(jnp.square(kernel_IxO), axis=0, keepdims=True))
  return kernel_IxO / jnp.where(norm > 0, norm, jnp.ones_like(norm))


def _project_updates(
  updates: Any, params: Any, activations: Any, where: Any, *, fn: str
) -> Any:
  """``unit_columns(params + updates) - params`` at every traced kernel
  where ``where`` (a bool per leaf of params) is True; other leaves pass
  through."""
  traces = _common.traces_by_path(activations, params, fn=fn)
  treedef: Any  # A PyTreeDef; jaxlib ships no type stubs for it.
  flat_params, treedef = jax.tree_util.tree_flatten_with_path(
    params, is_leaf=_common.is_masked
  )
  flat_updates = treedef.flatten_up_to(updates)
  flat_where = treedef.flatten_up_to(where)
  out = []
  for (path, kernel), update, on in zip(
    flat_params, flat_updates, flat_where, strict=True
  ):
    if (
      not on
      or _common.path_str(path) not in traces
      or _common.is_masked(kernel)
      or update is None
      or _common.is_masked(update)
    ):
      out.append(update)
      continue
    # An ordinary traced kernel; the Oja term (if any) checked its trace.
    new = _common.as_matrix(kernel + update, "in_out")
    new = _common.from_matrix(_unit_columns(new), kernel.shape, "in_out")
    out.append((new - kernel).astype(update.dtype))
  return treedef.unflatten(out)


def sgd_oja(
  learning_rate: _common.ScalarOrSchedule,
  oja_learning_rate: Optional[_common.ScalarOrSchedule],
  *,
  mask: Optional[Any] = None,
  unit_norm: bool = False,
) -> SgdOja:
  """The paper's "BP + Oja": an SGD step plus an Oja step, one forward pass.

  ``dK = -learning_rate * dL/dK + oja_learning_rate * mean_b outer(x - K y,
  y)`` at every kernel with a Trace (where ``mask`` is True), the numbers of
  ``ojax.with_rule(optax.sgd(learning_rate), ojax.oja(oja_learning_rate,
  mask=mask))``, with both rates kept in the state
  (``optax.inject_hyperparams``), so that a vmapped sweep can give each point
  its own rates (:func:`with_rates`) and a schedule's value is read from the
  state at every step.

  This is the transform :func:`ojax.train.classifier_task` runs with
  :mod:`ojax.fused`'s step (about twice the generic step's speed on a CPU)
  for an :class:`ojax.models.MLP`: with any mask (all layers, the hidden
  ones with ``mask=ojax.models.hidden_mask``, any subset) and for plain SGD
  (``oja_learning_rate=None``). Wrapped in anything else (``optax.chain``,
  ``optax.MultiSteps``, ...) it is an ordinary transform and takes the
  generic step. On a CPU, also run single-threaded
  (:func:`ojax.train.single_threaded_cpu`).

  ``unit_norm=True`` then projects each unit's incoming weight vector to
  unit L2 norm: for a kernel ``K`` (fan_in, fan_out; a conv kernel's
  ``(..., fan_out)`` as a matrix) each column ``K[:, j]`` of ``K + dK``
  becomes ``K[:, j] / ||K[:, j]||`` (the update returned is ``project(K +
  dK) - K``, so ``update`` needs ``params``). A column of norm 0 is left as
  it is (no NaN). The projection acts where the Oja term may (the traced
  kernels where ``mask`` is True), whatever the Oja rate: with
  ``oja_learning_rate=0.0`` or ``None`` it is BP with unit-norm units, a
  non-plastic control for Oja's rule, whose fixed point has orthonormal
  columns (unit norm is the part of it that keeps the weights' scale).

  Args:
    learning_rate: SGD rate, a finite float >= 0 or a schedule.
    oja_learning_rate: Oja rate ``eta``, a finite float >= 0 or a schedule;
      ``None``: no Oja term at all (plain SGD with its rate in the state).
      ``0.0`` keeps the term at rate 0 (one program for a sweep whose Oja
      rates include 0). Rates given as jax arrays (as
      ``optax.inject_hyperparams(ojax.sgd_oja)`` passes them, which then
      holds them in its own state) are used as given, not put in the state.
    mask: like ``optax.add_decayed_weights``: a tree of booleans shaped like
      (a prefix of) params, or a callable returning one; the Oja term acts
      only where it is True (e.g. ``ojax.models.hidden_mask``), and so does
      the unit-norm projection (also with ``oja_learning_rate=None``).
    unit_norm: True or False: project each unit's incoming weights to unit
      norm after every step (see above).

  Returns:
    A :class:`SgdOja` (an ``optax.GradientTransformationExtraArgs``).

  References:
    Shervani-Tabar, Mirhoseini & Rosenbaum, "Oja's plasticity rule overcomes
    several challenges of training neural networks under biological
    constraints", arXiv:2408.08408, 2024.

  >>> import jax.numpy as jnp, optax, ojax
  >>> params = {"w": jnp.array([[1.0], [0.0]])}
  >>> acts = {"w": ojax.Trace(jnp.array([[0.0, 1.0]]), jnp.array([[1.0]]))}
  >>> tx = ojax.sgd_oja(learning_rate=0.1, oja_learning_rate=0.5)
  >>> updates, _ = tx.update({"w": jnp.ones((2, 1))}, tx.init(params), params,
  ...                        activations=acts)
  >>> updates["w"]
  Array([[-0.6],
         [ 0.4]], dtype=float32)

  With ``unit_norm=True`` the new kernel's column has norm 1:

  >>> tx = ojax.sgd_oja(0.1, 0.5, unit_norm=True)
  >>> updates, _ = tx.update({"w": jnp.ones((2, 1))}, tx.init(params), params,
  ...                        activations=acts)
  >>> (params["w"] + updates["w"]).round(4)  # [0.4, 0.4] / (0.4 sqrt 2)
  Array([[0.7071],
         [0.7071]], dtype=float32)
  """
  fn = "ojax.sgd_oja"
  if not isinstance(unit_norm, (bool, np.bool_)):
    raise ValueError(
      f"{fn}: unit_norm={_common.describe(unit_norm)} has type "
      f"{_common.type_name(unit_norm)}; it must be True or False."
    )
  unit_norm = bool(unit_norm)
  _common.check_rate(learning_rate, fn=fn, arg="learning_rate")
  oja = oja_learning_rate is not None
  if oja:
    _common.check_rate(oja_learning_rate, fn=fn, arg="oja_learning_rate")

  def sgd_with_oja(learning_rate, oja_learning_rate):
    rule = _oja.oja(oja_learning_rate, mask=mask)
    return with_rule(optax.sgd(learning_rate), rule)

  given = (learning_rate, oja_learning_rate) if oja else (learning_rate,)
  fixed = None
  if all(isinstance(r, jax.Array) for r in given):
    # As optax.inject_hyperparams calls its factory: the caller holds the
    # rates and passes them at every update; a state of our own would keep
    # stale copies of them.
    inner = (
      sgd_with_oja(learning_rate, oja_learning_rate)
      if oja
      else optax.sgd(learning_rate)
    )
    fixed = (learning_rate, oja_learning_rate)
  elif oja:
    inner = optax.inject_hyperparams(sgd_with_oja)(
      learning_rate=learning_rate, oja_learning_rate=oja_learning_rate
    )
  else:
    inner = optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)

  def init_fn(params):
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      dtype = getattr(leaf, "dtype", None)
      if dtype is not None and not jnp.issubdtype(dtype, jnp.inexact):
        raise ValueError(
          f"{fn}: the parameter at {_common.path_str(path)} has dtype "
          f"{dtype}; its SGD updates would be silently truncated (and the "
          "rates converted to integers). Use float parameters."
        )
    if (oja or unit_norm) and mask is not None:
      _common.resolve_mask(mask, params, fn=fn)
    return inner.init(params)

  update_fn = inner.update
  if unit_norm:

    def update_fn(updates, state, params=None, **extra_args):
      if params is None:
        raise ValueError(
          f"{fn}: unit_norm=True needs params in update(updates, state, "
          "params, activations=...); it projects params + step."
        )
      updates, state = inner.update(updates, state, params, **extra_args)
      where = _common.full_mask(mask, params, fn=fn)
      updates = _project_updates(
        updates, params, extra_args.get("activations"), where, fn=fn
      )
      return updates, state

  text = (
    f"ojax.sgd_oja(learning_rate={_common.describe(learning_rate)}, "
    f"oja_learning_rate={_common.describe(oja_learning_rate)}"
    + ("" if mask is None else f", mask={_common.describe(mask)}")
    + (", unit_norm=True" if unit_norm else "")
    + ")"
  )
  return SgdOja(
    init_fn,
    update_fn,
    mask=mask,
    oja=oja,
    text=text,
    fixed=fixed,
    unit_norm=unit_norm,
  )


def with_rates(state: Any, **rates: Any) -> Any:
  """``state`` with new rates, e.g. one per point of a vmapped sweep.

  ``state`` is the state of :func:`sgd_oja` (or of any
  ``optax.inject_hyperparams`` transform, also inside a chain), possibly
  stacked along leading axes (``jax.vmap(tx.init)``). Each keyword names a
  rate (``learning_rate``, ``oja_learning_rate``); its value, a number or an
  array that broadcasts to the rate's shape in the state (one per point of a
  stacked state), replaces it in every injected state that has it, in that
  rate's dtype. A rate given by a schedule is recomputed at every step, so
  setting it has no lasting effect.

  Raises:
    ValueError: a rate the state does not hold, or a value of the wrong
      shape (one line, naming it).

  >>> import jax, jax.numpy as jnp, ojax
  >>> tx = ojax.sgd_oja(0.1, 0.01)
  >>> params = {"w": jnp.ones((3, 2, 2))}          # 3 points, stacked
  >>> states = jax.vmap(tx.init)(params)
  >>> states = ojax.rules.with_rates(
  ...     states, oja_learning_rate=jnp.array([0.0, 1e-3, 1e-2]))
  >>> states.hyperparams["oja_learning_rate"]
  Array([0.   , 0.001, 0.01 ], dtype=float32)
  """
  fn = "ojax.rules.with_rates"

  def injected(node: Any) -> bool:
    return _is_named_tuple(node) and isinstance(
      getattr(node, "hyperparams", None), dict
    )

  nodes = [n for n in jax.tree.leaves(state, is_leaf=injected) if injected(n)]
  held = sorted({k for n in nodes for k in n.hyperparams})
  for name in rates:
    if name not in held:
      raise ValueError(
        f"{fn}: the state holds no rate {name!r}; it holds "
        f"{', '.join(map(repr, held)) or 'none'} (ojax.sgd_oja's state, or "
        "an optax.inject_hyperparams state, has them)."
      )

  def replace(node: Any) -> Any:
    if not injected(node):
      return node
    hyper = dict(node.hyperparams)
    for name, value in rates.items():
      if name not in hyper:
        continue
      old = hyper[name]
      new = jnp.asarray(value, jnp.result_type(old))
      try:
        shape = np.broadcast_shapes(new.shape, jnp.shape(old))
      except ValueError:
        shape = None
      if shape != jnp.shape(old):
        raise ValueError(
          f"{fn}: {name} has shape {new.shape}; the state holds it with "
          f"shape {jnp.shape(old)} (one per point of a stacked state), so "
          "give a number or an array of that shape."
        )
      hyper[name] = jnp.broadcast_to(new, shape)
    return node._replace(hyperparams=hyper)

  return jax.tree.map(replace, state, is_leaf=injected)

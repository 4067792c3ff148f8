"""Putting rules after an optimizer, where their sign cannot flip."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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


def _multisteps(optimizer: Any):
  if isinstance(optimizer, optax.MultiSteps):
    return optimizer
  owner = getattr(getattr(optimizer, "update", None), "__self__", None)
  return owner if isinstance(owner, optax.MultiSteps) else None


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
  too. The state then ends with a :class:`RuleAccumulator`. (A rule placed
  *inside* ``optax.MultiSteps`` raises a ValueError: MultiSteps would hand it
  only the last mini-batch's activations.)

  Args:
    optimizer: an optax transformation (or ``optax.MultiSteps``).
    *rules: one or more rules (e.g. ``ojax.oja(eta)``); any transform that
      adds a term to its incoming updates.

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
  multi = _multisteps(optimizer)
  if multi is None:
    optimizer = optax.with_extra_args_support(optimizer)
  rules = tuple(optax.with_extra_args_support(r) for r in rules)

  def init_fn(params):
    states = (optimizer.init(params),) + tuple(r.init(params) for r in rules)
    if multi is None:
      return states
    return states + (RuleAccumulator(optax.tree.zeros_like(params)),)

  def update_fn(updates, state, params=None, **extra_args):
    opt_state, rule_states = state[0], state[1 : 1 + len(rules)]
    new_updates, new_opt_state = optimizer.update(
      updates, opt_state, params, **extra_args
    )
    if multi is None:
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
    accepted = (new_opt_state.mini_step != opt_state.mini_step) | (
      new_opt_state.gradient_step != opt_state.gradient_step
    )
    emit = new_opt_state.gradient_step != opt_state.gradient_step
    seen = opt_state.mini_step.astype(jnp.float32)
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


def sgd_oja(
  learning_rate: _common.ScalarOrSchedule,
  oja_learning_rate: _common.ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
  """The paper's "BP + Oja": an SGD step plus an Oja step, one forward pass.

  ``dK = -learning_rate * dL/dK + oja_learning_rate * mean_b outer(x - K y,
  y)``, i.e. ``ojax.with_rule(optax.sgd(learning_rate),
  ojax.oja(oja_learning_rate))`` (the same updates and state as
  ``optax.chain(optax.sgd(lr), ojax.oja(eta))``).

  Args:
    learning_rate: SGD rate, a finite float >= 0 or a schedule.
    oja_learning_rate: Oja rate ``eta``, a finite float >= 0 or a schedule.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

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
  """
  fn = "ojax.sgd_oja"
  _common.check_rate(learning_rate, fn=fn, arg="learning_rate")
  _common.check_rate(oja_learning_rate, fn=fn, arg="oja_learning_rate")
  return with_rule(optax.sgd(learning_rate), _oja.oja(oja_learning_rate))

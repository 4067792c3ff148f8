"""Builds models and optimizers from an experiment config, validating it.

Every bad value is reported in one line naming the field, the value and what
is allowed, before anything is compiled or written.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import optax

from ojax import models
from ojax import rules

OPTIMIZERS = ("sgd", "adam")
OJA_LAYERS = ("all", "hidden")


class ConfigError(ValueError):
  """A config field has a value that is not allowed."""


def check_number(field: str, value: Any, *, integer: bool = False,
                 zero: bool = False) -> None:
  """Raises ``ConfigError`` unless ``value`` is a finite number > 0 (>= 0)."""
  ok_type = isinstance(value, int) if integer else isinstance(
      value, (int, float))
  if isinstance(value, bool) or not ok_type:
    kind = "an integer" if integer else "a number"
    raise ConfigError(f"{field}={value!r} must be {kind}.")
  if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
    bound = ">= 0" if zero else "> 0"
    raise ConfigError(f"{field}={value!r} must be finite and {bound}.")


def one_of(field: str, value: Any, allowed) -> None:
  """Raises ``ConfigError`` unless ``value`` is in ``allowed``."""
  if value not in allowed:
    raise ConfigError(f"{field}={value!r} is not known; choose one of "
                      f"{', '.join(map(str, allowed))}.")


def hidden_widths(model_cfg) -> tuple[int, ...]:
  """``(width,) * depth`` if ``depth > 0``, else the explicit ``hidden``."""
  check_number("model.depth", model_cfg.depth, integer=True, zero=True)
  if model_cfg.depth > 0:
    check_number("model.width", model_cfg.width, integer=True)
    return (model_cfg.width,) * model_cfg.depth
  hidden = tuple(model_cfg.hidden)
  for i, w in enumerate(hidden):
    check_number(f"model.hidden[{i}]", w, integer=True)
  return hidden


def make_model(model_cfg, num_classes: int) -> models.MLP:
  """The MLP that ``model_cfg`` describes, checked field by field."""
  one_of("model.activation", model_cfg.activation, models.ACTIVATIONS)
  one_of("model.kernel_init", model_cfg.kernel_init, models.KERNEL_INITS)
  one_of("model.output_post", model_cfg.output_post, models.OUTPUT_POSTS)
  one_of("model.feedback", model_cfg.feedback, models.FEEDBACKS)
  check_number("model.beta", model_cfg.beta)
  check_number("model.gain", model_cfg.gain)
  return models.MLP(
      features=hidden_widths(model_cfg) + (num_classes,),
      activation=model_cfg.activation, beta=float(model_cfg.beta),
      use_bias=bool(model_cfg.use_bias), kernel_init=model_cfg.kernel_init,
      gain=float(model_cfg.gain), output_post=model_cfg.output_post,
      layer_norm=bool(model_cfg.layer_norm), feedback=model_cfg.feedback)


def _hidden_only_mask(params: Any) -> Any:
  """True for every parameter except those of the output (last) layer."""
  layers = [k for k in params if k.startswith("layer_")]
  last = max(layers, key=lambda k: int(k.split("_")[1]))
  return {k: jax.tree.map(lambda _, keep=(k != last): keep, v)
          for k, v in params.items()}


def make_optimizer(cfg, with_oja: bool = False
                   ) -> optax.GradientTransformation:
  """SGD or Adam at ``cfg.lr``, plus Oja at ``cfg.oja_lr`` if it is > 0.

  ``with_oja=True`` keeps the Oja transform even at ``oja_lr == 0`` (a sweep
  over ``oja_lr`` needs one program structure for every grid point).

  ``cfg.oja_layers`` is ``"all"`` (the reference formulation: every layer,
  the softmax output layer included) or ``"hidden"`` (output layer skipped,
  via ``optax.masked``). Rates live in the optimizer state
  (``optax.inject_hyperparams``) so sweeps can vmap over them.
  """
  one_of("optimizer", cfg.optimizer, OPTIMIZERS)
  one_of("oja_layers", cfg.oja_layers, OJA_LAYERS)
  check_number("lr", cfg.lr)
  check_number("oja_lr", cfg.oja_lr, zero=True)
  base = optax.sgd if cfg.optimizer == "sgd" else optax.adam
  if cfg.oja_lr == 0 and not with_oja:
    return optax.inject_hyperparams(base)(learning_rate=cfg.lr)

  def with_oja(learning_rate, oja_learning_rate):
    oja = rules.oja(oja_learning_rate)
    if cfg.oja_layers == "hidden":
      oja = optax.masked(oja, _hidden_only_mask)
    return optax.chain(base(learning_rate), oja)

  return optax.inject_hyperparams(with_oja)(learning_rate=cfg.lr,
                                            oja_learning_rate=cfg.oja_lr)

"""Rules assembled from a pool of local terms, with learnable coefficients."""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ojax.rules import _common
from ojax.rules import _oja
from ojax.rules import _sanger
from ojax.rules._common import Trace

_mean_outer = _common.mean_outer


class Term(NamedTuple):
  """A local term of the pool: its formula and the Trace fields it reads.

  Attributes:
    fn: ``fn(kernel_IxO, trace) -> dK_IxO``; the trace fields have shape
      ``(samples, fan)``.
    needs: the Trace fields ``fn`` reads.
    formula: ``dK`` in the ``(fan_in, fan_out)`` layout (x = pre, y = post,
      a = pre_error, e = post_error, mean over samples).
    paper: the same term for ``W = K^T`` of shape ``(out, in)`` as written by
      Shervani-Tabar & Rosenbaum (2023), or ``""``.

  >>> import ojax
  >>> ojax.TERMS["oja"].formula
  'mean (x - K y) y^T'
  """

  fn: Callable[[jax.Array, Trace], jax.Array]
  needs: tuple[str, ...]
  formula: str
  paper: str


def _error(k, t):
  return -_mean_outer(t.pre, t.post_error)


def _decay(k, t):
  del t
  return -k


def _hebb(k, t):
  return _mean_outer(t.pre, t.post)


def _post_pre_error(k, t):
  return _mean_outer(t.pre_error, t.post)


def _error_hebb(k, t):
  return _mean_outer(t.pre_error, t.post_error)


def _error_oja(k, t):
  return _oja.oja_term(k, Trace(t.pre_error, t.post_error))


def _error_oja_pre(k, t):
  # a (e - K^T a)^T: W e_{l-1} (= a K as a row) is computed first.
  return _mean_outer(t.pre_error, t.post_error - t.pre_error @ k)


def _post_pre_error_oja(k, t):
  return _mean_outer(t.pre_error, t.post - t.pre_error @ k)


# The named pool of local terms of ojax.plasticity, in the (fan_in, fan_out)
# layout. Each is O(samples * fan_in * fan_out): products with K are taken
# with a vector first, never with an outer product.
TERMS: dict[str, Term] = {
  "error": Term(
    _error,
    ("pre", "post_error"),
    "-mean x e^T",
    "-e_l y_{l-1}^T  (pseudo-gradient)",
  ),
  "decay": Term(_decay, (), "-K", "-W_l  (weight decay)"),
  "hebb": Term(_hebb, ("pre", "post"), "mean x y^T", "y_l y_{l-1}^T"),
  "oja": Term(
    _oja.oja_term,
    ("pre", "post"),
    "mean (x - K y) y^T",
    "y_l y_{l-1}^T - y_l y_l^T W_l",
  ),
  "sanger": Term(
    _sanger.sanger_term, ("pre", "post"), "mean (x y^T - K UT(y y^T))", ""
  ),
  "post_pre_error": Term(
    _post_pre_error, ("pre_error", "post"), "mean a y^T", "y_l e_{l-1}^T"
  ),
  "error_hebb": Term(
    _error_hebb, ("pre_error", "post_error"), "mean a e^T", "e_l e_{l-1}^T"
  ),
  "error_oja": Term(
    _error_oja,
    ("pre_error", "post_error"),
    "mean (a - K e) e^T",
    "e_l e_{l-1}^T - e_l e_l^T W_l",
  ),
  "error_oja_pre": Term(
    _error_oja_pre,
    ("pre_error", "post_error"),
    "mean a (e - K^T a)^T",
    "e_l e_{l-1}^T - W_l e_{l-1} e_{l-1}^T",
  ),
  "post_pre_error_oja": Term(
    _post_pre_error_oja,
    ("pre_error", "post"),
    "mean a (y - K^T a)^T",
    "y_l e_{l-1}^T - W_l e_{l-1} e_{l-1}^T",
  ),
}
TermLike = Union[str, Callable[[jax.Array, Trace], jax.Array]]


def _term_name(term: TermLike) -> str:
  return (
    term if isinstance(term, str) else getattr(term, "__name__", repr(term))
  )


def _resolve_terms(terms: Sequence[TermLike], fn: str) -> list[Term]:
  resolved = []
  for term in terms:
    if isinstance(term, str):
      if term not in TERMS:
        raise ValueError(
          f"{fn}: term {term!r} is not known; choose from "
          f"{', '.join(TERMS)}, or pass a callable "
          "fn(kernel_IxO, trace) -> dK_IxO."
        )
      resolved.append(TERMS[term])
    elif callable(term):
      resolved.append(Term(term, (), "custom", ""))
    else:
      raise ValueError(
        f"{fn}: terms holds {_common.describe(term)} of type "
        f"{_common.type_name(term)}; each term must be a name "
        f"from ojax.TERMS or a callable."
      )
  return resolved


def plasticity(
  coefficients: Union[Mapping[str, Any], Sequence[Any], jax.Array],
  terms: Optional[Sequence[TermLike]] = None,
  *,
  mask: Optional[Any] = None,
  layout: str = "in_out",
) -> _common.PlasticityRule:
  r"""A local rule assembled from named terms: ``dK = sum_i c_i * term_i``.

  Each term is local to one kernel: it reads the kernel ``K`` (fan_in,
  fan_out) and its :class:`ojax.Trace`: ``x`` = pre, ``y`` = post, ``a`` =
  pre_error (``e_{l-1}``), ``e`` = post_error (``e_l``); all means over the
  leading (sample) axes. The pool (:data:`ojax.TERMS`), in this layout and
  as written for ``W = K^T`` of shape ``(out, in)`` by Shervani-Tabar &
  Rosenbaum (2023):

  ======================  ==========================  ==========================================
  name                    dK (fan_in, fan_out)        dW (out, in), paper
  ======================  ==========================  ==========================================
  ``error``               ``-x e^T``                  ``-e_l y_{l-1}^T`` (pseudo-gradient)
  ``decay``               ``-K``                      ``-W_l`` (weight decay)
  ``hebb``                ``x y^T``                   ``y_l y_{l-1}^T``
  ``oja``                 ``(x - K y) y^T``           ``y_l y_{l-1}^T - y_l y_l^T W_l``
  ``sanger``              ``x y^T - K UT(y y^T)``     ``y x^T - LT(y y^T) W``
  ``post_pre_error``      ``a y^T``                   ``y_l e_{l-1}^T``
  ``error_hebb``          ``a e^T``                   ``e_l e_{l-1}^T``
  ``error_oja``           ``(a - K e) e^T``           ``e_l e_{l-1}^T - e_l e_l^T W_l``
  ``error_oja_pre``       ``a (e - K^T a)^T``         ``e_l e_{l-1}^T - W_l e_{l-1} e_{l-1}^T``
  ``post_pre_error_oja``  ``a (y - K^T a)^T``         ``y_l e_{l-1}^T - W_l e_{l-1} e_{l-1}^T``
  ======================  ==========================  ==========================================

  With ``e`` the backprop error, ``c_error * error`` is the SGD step
  ``-c_error * dL/dK``, so ``plasticity({"error": lr, "oja": eta})`` is the
  reference "BP + Oja" rule as one transform (chained after ``optax.sgd``,
  drop ``error``). Coefficients may be any sign and are ordinary JAX values:
  ``jax.grad`` differentiates through a ``lax.scan`` of updates with respect
  to them (meta-learning), and ``optax.inject_hyperparams`` injects them
  when given as an array. A non-finite coefficient gives non-finite updates.

  ``update(updates, state, params, *, activations, **extra_args)`` follows
  the contract of :func:`ojax.oja` (term added to the incoming updates of
  the kernels that have a Trace, ``mask=``, ``layout=``). Each Trace must
  carry the fields its terms need (errors for the error terms). Cost
  O(n_terms * samples * fan_in * fan_out).

  Args:
    coefficients: a mapping ``{term name: coefficient}`` (then ``terms`` is
      None), or a sequence / 1-D array of coefficients, one per entry of
      ``terms``. A coefficient is a float or a scalar array.
    terms: names from :data:`ojax.TERMS` or callables ``fn(kernel_IxO,
      trace) -> dK_IxO`` (trace fields shaped ``(samples, fan)``), when
      ``coefficients`` is a sequence.
    mask: booleans shaped like (a prefix of) params, or a callable returning
      them; only True leaves are touched.
    layout: ``"in_out"`` (Flax) or ``"out_in"`` (Equinox, PyTorch).

  Returns:
    An :class:`ojax.PlasticityRule`.

  References:
    Shervani-Tabar & Rosenbaum, "Meta-learning biologically plausible
    plasticity rules with random feedback pathways", Nature Communications
    14, 2023.

  >>> import jax.numpy as jnp, optax, ojax
  >>> params = {"w": jnp.array([[1.0], [0.0]])}
  >>> trace = ojax.Trace(pre=jnp.array([[0.0, 1.0]]), post=jnp.array([[1.0]]),
  ...                    post_error=jnp.array([[0.5]]))
  >>> tx = ojax.plasticity({"error": 1.0, "oja": 0.5})
  >>> updates, _ = tx.update(optax.tree.zeros_like(params), tx.init(params),
  ...                        params, activations={"w": trace})
  >>> updates["w"]            # -x e^T + 0.5 (x - K y) y^T
  Array([[-0.5],
         [ 0. ]], dtype=float32)
  """  # noqa: E501 (the table's rows do not wrap)
  fn = "ojax.plasticity"
  _common.check_layout(layout, fn=fn)
  if isinstance(coefficients, Mapping):
    if terms is not None:
      raise ValueError(
        f"{fn}: terms={terms!r} given with a mapping of "
        "coefficients; give either {name: coefficient} or a "
        "sequence of coefficients and terms=(names...)."
      )
    terms = tuple(coefficients)
    values: Union[Sequence[Any], jax.Array] = tuple(coefficients.values())
    for name, value in coefficients.items():
      _common.check_rate(
        value,
        fn=fn,
        arg=f"coefficients[{name!r}]",
        nonnegative=False,
        allow_schedule=False,
      )
  else:
    if terms is None:
      raise ValueError(
        f"{fn}: coefficients={_common.describe(coefficients)} "
        "needs terms=(names...), one per coefficient, or give "
        "a mapping {name: coefficient}."
      )
    if isinstance(terms, str):
      raise ValueError(
        f"{fn}: terms={terms!r} is a string; give a sequence "
        f"of names, e.g. ({terms!r},)."
      )
    terms = tuple(terms)
    if isinstance(coefficients, (str, bytes)) or np.ndim(coefficients) != 1:
      raise ValueError(
        f"{fn}: coefficients={_common.describe(coefficients)}"
        f"; it must be a 1-D sequence or array of "
        f"{len(terms)} coefficients (one per term)."
      )
    if len(coefficients) != len(terms):
      raise ValueError(
        f"{fn}: {len(coefficients)} coefficients for "
        f"{len(terms)} terms {terms}; give one per term."
      )
    if not isinstance(coefficients, (jax.Array, np.ndarray)):
      for i, value in enumerate(coefficients):
        _common.check_rate(
          value,
          fn=fn,
          arg=f"coefficients[{i}]",
          nonnegative=False,
          allow_schedule=False,
        )
    values = coefficients
  if not terms:
    raise ValueError(f"{fn}: no terms; choose from {', '.join(TERMS)}.")
  resolved = _resolve_terms(terms, fn)
  names = [_term_name(t) for t in terms]
  if len(set(names)) != len(names):
    raise ValueError(
      f"{fn}: terms {tuple(names)} repeat a name; give each term once."
    )
  needs = tuple(
    sorted(
      {f for t in resolved for f in t.needs},
      key=("pre", "post", "pre_error", "post_error").index,
    )
  )

  def init_fn(params: Any) -> _common.RuleState:
    del params
    return _common.RuleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, *, activations=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(_common.NO_PARAMS_MSG)

    def kernel_fn(where, kernel_IxO, trace, leaf_state):
      del where
      total = None
      for i, term in enumerate(resolved):
        part = values[i] * term.fn(kernel_IxO, trace)
        total = part if total is None else total + part
      return total, leaf_state

    new_updates, _ = _common.add_terms(
      fn,
      updates,
      params,
      activations,
      layout=layout,
      needs=needs,
      kernel_fn=kernel_fn,
    )
    return new_updates, _common.RuleState(
      # optax.safe_increment is annotated ArrayLike; it returns a jax.Array.
      count=optax.safe_increment(state.count)  # type: ignore[arg-type]
    )

  return _common.finish(
    optax.GradientTransformationExtraArgs(init_fn, update_fn), mask, fn=fn
  )

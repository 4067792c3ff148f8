"""Trace trees for stock Flax models, without editing the model.

A rule needs, at each kernel, ``ojax.Trace(pre, post)``: the layer's input
and its output after the nonlinearity. These helpers run a stock model,
intercept every ``nn.Dense`` / ``nn.Conv`` (Linen) or ``nnx.Linear`` /
``nnx.Conv`` (NNX) call, and return the model's output together with a tree
shaped like the model's parameters: a Trace at each kernel of a called layer,
``None`` elsewhere (biases, other layers, layers not called).

Linen (``apply`` mirrors ``module.apply``)::

    logits, acts = ojax.traces.apply(model, {"params": params}, x,
                                     post=nn.relu, output_post=nn.softmax)

NNX (``call`` mirrors ``model(x)``)::

    logits, acts = ojax.traces.call(model, x, post=nnx.relu)

What goes in each Trace:

* ``pre``: the layer's input as the layer received it, ``(..., fan_in)``. For
  a conv layer, the image patches each output position sees, with the
  layer's own kernel size, strides, padding and dilations, flattened in the
  kernel's order ``(kh, kw, cin)`` (:func:`conv_patches`): ``(..., H', W',
  kh * kw * cin)``.
* ``post``: ``post(z)`` with ``z`` the layer's output (bias included), for
  every traced layer but the last one called, which gets ``output_post(z)``
  (``z`` itself, e.g. logits, when ``output_post`` is None). ``post`` is one
  callable for all layers, or a mapping from layer name to callable covering
  every traced layer (then ``output_post`` must be None). Layer names are the
  parameter paths joined by "/": ``"Dense_0"``, ``"Block_0/Dense_1"`` (Linen),
  ``"layers/0"`` (NNX).

What the helper sees, and what it does not:

* It sees each layer's input and output, and the normalization and dropout
  layers the output goes through (Linen ``nn.BatchNorm``, ``nn.LayerNorm``,
  ``nn.GroupNorm``, ``nn.RMSNorm``, ``nn.InstanceNorm``, ``nn.Dropout`` and
  their NNX twins): for ``Dense -> BatchNorm -> relu``, ``z`` is the
  BatchNorm's output, so ``post(z)`` is the activity the network has (the
  next layer's input). It recomputes the nonlinearity you name; it does not
  see the one the model applies, nor functions (pooling) or other modules
  between a layer and the next.
* Residual blocks: for ``x + relu(Dense(x))`` the Dense layer's Trace is
  ``(x, relu(Dense(x)))``; the skip path is not part of any layer.
* A layer called twice (a shared layer, weight tying, an unrolled recurrent
  cell, a layer reused by two branches) raises a ValueError naming it: one
  Trace holds one call. Build that Trace by hand (concatenate the calls along
  a leading axis).
* Linen lifted transforms (``nn.scan``, ``nn.vmap``, ``nn.remat``,
  ``nn.jit``) and NNX transforms inside the model (``nnx.scan``, ...) run
  their body in an inner trace; a layer called there raises a ValueError
  saying so (its values would leak out of that trace): build its Trace by
  hand. NNX models are traced inside ``nnx.jit`` / ``nnx.grad`` as long as
  ``call`` runs inside the transformed function.
* Other layer types (``DenseGeneral``, ``Embed``, ``ConvTranspose``,
  ``ConvLocal``, ``nnx.LinearGeneral``, attention) are not traced (None);
  grouped convolutions (``feature_group_count > 1``) raise.
* NNX: ``call`` replaces the ``__call__`` of the traced layer classes while
  the model runs (as ``nnx.capture`` does) and restores it afterwards, also
  when the model raises; concurrent ``call`` s from several Python threads
  are serialized.

The helpers work under ``jax.jit``, ``jax.vmap``, ``jax.grad`` (return the
traces as auxiliary output) and ``jax.lax.scan``, and add no work beyond
the recomputed nonlinearity (which XLA shares with the model's own) and,
for conv layers, the patches.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from flax import nnx
from flax.core import tracers
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from ojax.rules._common import Trace

PostFn = Optional[Callable[[jax.Array], jax.Array]]
Post = Union[Callable[[jax.Array], jax.Array], Mapping[str, PostFn]]

__all__ = ["apply", "call", "conv_patches"]


# --------------------------------------------------------------------------
# Conv patches.


def _tuple(value: Any, n: int, name: str) -> tuple[int, ...]:
  if value is None:
    value = 1
  if isinstance(value, int):
    return (value,) * n
  value = tuple(value)
  if len(value) != n:
    raise ValueError(
      f"ojax.traces.conv_patches: {name}={value} has "
      f"{len(value)} entries; the kernel has {n} spatial axes."
    )
  return value


def _canonical_padding(
  padding: Any, kernel_size: Sequence[int], kernel_dilation: Sequence[int]
) -> tuple[Any, Optional[list[tuple[int, int]]], Optional[str]]:
  """Returns (lax padding, explicit input pads, pad mode) as Flax does."""
  n = len(kernel_size)
  if isinstance(padding, str):
    upper = padding.upper()
    if upper in ("SAME", "VALID", "SAME_LOWER"):
      return upper, None, None
    if upper in ("CIRCULAR", "REFLECT"):
      dilated = [
        (k - 1) * d + 1
        for k, d in zip(kernel_size, kernel_dilation, strict=True)
      ]
      pads = [((k - 1) // 2, k // 2) for k in dilated]
      return "VALID", pads, {"CIRCULAR": "wrap", "REFLECT": "reflect"}[upper]
    if upper == "CAUSAL":
      if n != 1:
        raise ValueError(
          "ojax.traces.conv_patches: padding='CAUSAL' is only "
          "defined for 1-D convolutions."
        )
      return (
        "VALID",
        [(kernel_dilation[0] * (kernel_size[0] - 1), 0)],
        ("constant"),
      )
    raise ValueError(
      f"ojax.traces.conv_patches: padding={padding!r} is not "
      "known; use 'SAME', 'VALID', 'CIRCULAR', 'REFLECT', "
      "'CAUSAL', an int or a sequence of ints or pairs."
    )
  if isinstance(padding, int):
    return [(padding, padding)] * n, None, None
  pads = []
  for p in padding:
    if isinstance(p, int):
      pads.append((p, p))
    elif len(pair := tuple(p)) == 2:
      pads.append((int(pair[0]), int(pair[1])))
    else:
      break
  if len(pads) != n:
    raise ValueError(
      f"ojax.traces.conv_patches: padding={padding!r} must be "
      f"a string, an int or {n} ints or (low, high) pairs."
    )
  return pads, None, None


def conv_patches(
  inputs: jax.Array,
  kernel_size: Union[int, Sequence[int]],
  *,
  strides: Union[int, Sequence[int], None] = 1,
  padding: Any = "SAME",
  input_dilation: Union[int, Sequence[int], None] = 1,
  kernel_dilation: Union[int, Sequence[int], None] = 1,
) -> jax.Array:
  """The input patches of a channels-last convolution, in the kernel's order.

  ``conv(inputs, K) == conv_patches(inputs, ...) @ K.reshape(-1, cout)`` for
  a Flax kernel ``K`` of shape ``(*kernel_size, cin, cout)``: each output
  position's receptive field flattened in the order ``(*kernel_size, cin)``.
  (``lax.conv_general_dilated_patches`` returns ``(cin, *kernel_size)``;
  this reorders it.) Strides, padding (Flax's ``'SAME'``, ``'VALID'``,
  ``'CIRCULAR'``, ``'REFLECT'``, ``'CAUSAL'``, ints or pairs) and dilations
  mean what they mean for ``nn.Conv`` / ``nnx.Conv``.

  Args:
    inputs: ``(*batch, *spatial, cin)``, any number of batch axes (also none).
    kernel_size: the kernel's spatial shape.
    strides, padding, input_dilation, kernel_dilation: as in ``nn.Conv``.

  Returns:
    ``(*batch, *out_spatial, prod(kernel_size) * cin)``.

  >>> import jax, jax.numpy as jnp, ojax
  >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  >>> ojax.traces.conv_patches(x, (2, 2), strides=2, padding="VALID")[0, 0, 0]
  Array([0., 1., 4., 5.], dtype=float32)
  """
  kernel_size = (
    (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
  )
  n = len(kernel_size)
  strides = _tuple(strides, n, "strides")
  input_dilation = _tuple(input_dilation, n, "input_dilation")
  kernel_dilation = _tuple(kernel_dilation, n, "kernel_dilation")
  num_batch = inputs.ndim - (n + 1)
  if num_batch < 0:
    raise ValueError(
      f"ojax.traces.conv_patches: inputs of shape "
      f"{inputs.shape} have fewer than {n + 1} axes (spatial "
      "and channels) for a kernel of size {kernel_size}."
    )
  batch_shape = inputs.shape[:num_batch]
  x = jnp.reshape(inputs, (-1,) + inputs.shape[num_batch:])
  lax_padding, pads, mode = _canonical_padding(
    padding, kernel_size, kernel_dilation
  )
  if pads is not None:
    assert mode is not None  # _canonical_padding gives both or neither.
    x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)], mode=mode)
  spatial = (
    "DHW"[-n:] if n <= 3 else "".join(chr(ord("a") + i) for i in range(n))
  )
  lhs = "N" + spatial + "C"
  dimension_numbers = (lhs, spatial + "IO", lhs)
  cin = x.shape[-1]
  patches = lax.conv_general_dilated_patches(
    x,
    filter_shape=kernel_size,
    window_strides=strides,
    padding=lax_padding,
    lhs_dilation=input_dilation,
    rhs_dilation=kernel_dilation,
    dimension_numbers=dimension_numbers,
    precision=lax.Precision.HIGHEST,
  )
  out_spatial = patches.shape[1:-1]
  # Features come as (cin, *kernel_size); the kernel wants (*kernel_size, cin).
  patches = jnp.reshape(patches, patches.shape[:-1] + (cin,) + kernel_size)
  patches = jnp.moveaxis(patches, n + 1, -1)
  return jnp.reshape(
    patches, batch_shape + out_spatial + (math.prod(kernel_size) * cin,)
  )


# --------------------------------------------------------------------------
# Recording layer calls.


# Layers whose output stands in for their input's: a traced layer's output
# that goes through them is followed to their output (see the docstring).
_FOLLOWED_NAMES = (
  "BatchNorm",
  "LayerNorm",
  "GroupNorm",
  "RMSNorm",
  "InstanceNorm",
  "Dropout",
)
_FOLLOWED_LINEN = tuple(
  getattr(nn, n) for n in _FOLLOWED_NAMES if hasattr(nn, n)
)
_FOLLOWED_NNX = tuple(
  getattr(nnx, n) for n in _FOLLOWED_NAMES if hasattr(nnx, n)
)


class _Recorder:
  """Layer calls in call order: name -> (pre, z)."""

  def __init__(self, fn: str):
    self.fn = fn
    self.calls: dict[tuple[Any, ...], tuple[jax.Array, jax.Array]] = {}
    self.latest: dict[int, tuple[Any, ...]] = {}  # id(z) -> layer path.
    # Layers called in another trace than this one run inside a transform.
    self.trace = tracers.current_trace()

  def check_trace(self, path: tuple[Any, ...], layer: Any) -> None:
    if tracers.current_trace() != self.trace:
      raise ValueError(
        f"{self.fn}: layer {_name(path)!r} ({type(layer).__name__}) runs "
        "inside a transform of the model (nn.scan, nn.vmap, nn.remat, "
        "nnx.scan, ...), whose values live in that transform's own trace; "
        "ojax.traces cannot record it. Build its Trace by hand (e.g. return "
        "the layer's input and output from the transformed body)."
      )

  def follow(self, x: Any, out: Any) -> None:
    """``out = norm_or_dropout(x)``: if ``x`` is a traced layer's output,
    ``out`` is now that layer's output (what its nonlinearity sees)."""
    path = self.latest.pop(id(x), None)
    if path is None or self.calls[path][1] is not x:
      return
    self.calls[path] = (self.calls[path][0], out)
    self.latest[id(out)] = path

  def record(
    self, path: tuple[Any, ...], layer: Any, x: jax.Array, z: jax.Array
  ) -> None:
    name = _name(path)
    if path in self.calls:
      raise ValueError(
        f"{self.fn}: layer {name!r} ({type(layer).__name__}) was called "
        "more than once; a Trace holds one call. Build its Trace by hand "
        "(concatenate the calls along a leading axis), or call it once."
      )
    if _is_conv(layer):
      groups = getattr(layer, "feature_group_count", 1)
      if groups != 1:
        raise ValueError(
          f"{self.fn}: layer {name!r} is a grouped convolution "
          f"(feature_group_count={groups}); its kernel is not one matrix "
          "over the patches. Build its Trace by hand."
        )
      pre = conv_patches(
        x,
        layer.kernel_size,
        strides=layer.strides,
        padding=layer.padding,
        input_dilation=layer.input_dilation,
        kernel_dilation=layer.kernel_dilation,
      )
    else:
      pre = x
    self.calls[path] = (pre, z)
    self.latest[id(z)] = path


def _is_conv(layer: Any) -> bool:
  return isinstance(layer, (nn.Conv, nnx.Conv))


def _name(path: Sequence[Any]) -> str:
  return "/".join(str(p) for p in path)


def _post_fns(
  fn: str, post: Post, output_post: PostFn, names: list[str]
) -> dict[str, PostFn]:
  """The post-synaptic function of every traced layer, by name."""
  last = names[-1]
  if isinstance(post, Mapping):
    if output_post is not None:
      raise ValueError(
        f"{fn}: post is a mapping and output_post is given; with a mapping "
        f"name every layer in it (the last one is {last!r}) and leave "
        "output_post=None."
      )
    unknown = sorted(set(post) - set(names))
    if unknown:
      raise ValueError(
        f"{fn}: post names layer {unknown[0]!r}, which was not "
        f"traced; traced layers: {', '.join(names)}."
      )
    missing = [n for n in names if n not in post]
    if missing:
      raise ValueError(
        f"{fn}: post has no entry for layer {missing[0]!r}; "
        f"give one for each of: {', '.join(names)} (None for "
        "the raw output)."
      )
    return dict(post)
  if post is not None and not callable(post):
    raise ValueError(
      f"{fn}: post has type {type(post).__name__}; it must be "
      "a callable (e.g. nn.relu), None (raw outputs) or a "
      "mapping {layer name: callable}."
    )
  if output_post is not None and not callable(output_post):
    raise ValueError(
      f"{fn}: output_post has type "
      f"{type(output_post).__name__}; it must be a callable "
      "(e.g. nn.softmax) or None for the raw output."
    )
  fns: dict[str, PostFn] = {n: post for n in names}
  fns[last] = output_post
  return fns


def _build_tree(
  fn: str,
  params: Any,
  recorder: _Recorder,
  post: Post,
  output_post: PostFn,
  kernel_name: str = "kernel",
) -> Any:
  if not recorder.calls:
    raise ValueError(
      f"{fn}: the model called no traceable layer (nn.Dense, nn.Conv, "
      "nnx.Linear, nnx.Conv); nothing to trace."
    )
  names = [_name(p) for p in recorder.calls]
  fns = _post_fns(fn, post, output_post, names)
  traces = {}
  for path, (pre, z) in recorder.calls.items():
    post_fn = fns[_name(path)]
    traces[tuple(path) + (kernel_name,)] = Trace(
      pre=pre, post=z if post_fn is None else post_fn(z)
    )
  found = set()

  def leaf(path, _):
    key = tuple(_key(k) for k in path)
    if key and key[-1] == "value":  # An NNX Variable's value.
      key = key[:-1]
    trace = traces.get(key)
    if trace is not None:
      found.add(key)
    return trace

  tree = jax.tree_util.tree_map_with_path(leaf, params)
  missing = sorted(set(traces) - found, key=str)
  if missing:
    raise ValueError(
      f"{fn}: layer {_name(missing[0][:-1])!r} was called but "
      f"its kernel is not in the parameters at "
      f"{_name(missing[0])!r}."
    )
  return tree


def _key(k: Any) -> Any:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return k


# --------------------------------------------------------------------------
# Linen.


def apply(
  module: nn.Module,
  variables: Any,
  *args: Any,
  post: Post,
  output_post: PostFn = None,
  **apply_kwargs: Any,
) -> tuple[Any, Any]:
  """``module.apply(variables, *args)`` and the Trace tree of its layers.

  Every ``nn.Dense`` and ``nn.Conv`` called during the apply gets
  ``Trace(pre, post)`` at its kernel (see the module docstring for what
  ``pre`` and ``post`` are); the tree has the structure of
  ``variables["params"]`` with ``None`` at every other leaf, ready for a
  rule's ``activations=``. The model's code is not changed.

  Args:
    module: a Linen module.
    variables: its variables (``{"params": ...}``, plus any other
      collections).
    *args: the module's arguments.
    post: the post-synaptic nonlinearity: a callable applied to the output of
      every traced layer except the last one called (None: the raw outputs,
      for linear layers), or a mapping from layer name (``"Dense_0"``,
      ``"Block_0/Dense_1"``) to callable (or None for the raw output)
      covering every traced layer.
    output_post: with a callable ``post``, the last layer's post-synaptic
      function (e.g. ``nn.softmax``); None: its raw output.
    **apply_kwargs: passed to ``module.apply`` (``method=``, ``rngs=``,
      ``mutable=``, keyword arguments of the module).

  Returns:
    ``(output of module.apply, traces)``.

  >>> import jax, jax.numpy as jnp, flax.linen as nn, ojax
  >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
  >>> x = jnp.ones((4, 5))
  >>> params = model.init(jax.random.PRNGKey(0), x)["params"]
  >>> y, acts = ojax.traces.apply(model, {"params": params}, x, post=nn.relu)
  >>> jax.tree.map(jnp.shape, acts["layers_0"]["kernel"])
  Trace(pre=(4, 5), post=(4, 3), pre_error=None, post_error=None)
  >>> acts["layers_0"]["bias"] is None
  True
  """
  fn = "ojax.traces.apply"
  if not isinstance(module, nn.Module):
    raise ValueError(
      f"{fn}: module has type {type(module).__name__}; it must "
      "be a flax.linen Module (for NNX use ojax.traces.call)."
    )
  if "params" not in variables:
    raise ValueError(
      f"{fn}: variables has no 'params' collection (keys: "
      f"{sorted(variables)}); give {{'params': params, ...}}."
    )
  recorder = _Recorder(fn)

  def interceptor(next_fun, call_args, call_kwargs, context):
    layer = context.module
    if context.method_name != "__call__":
      return next_fun(*call_args, **call_kwargs)
    if isinstance(layer, _FOLLOWED_LINEN):
      x = call_args[0] if call_args else None
      out = next_fun(*call_args, **call_kwargs)
      recorder.follow(x, out)
      return out
    if not isinstance(layer, (nn.Dense, nn.Conv)):
      return next_fun(*call_args, **call_kwargs)
    recorder.check_trace(tuple(layer.path), layer)
    x = call_args[0] if call_args else call_kwargs["inputs"]
    z = next_fun(*call_args, **call_kwargs)
    recorder.record(tuple(layer.path), layer, x, z)
    return z

  with nn.intercept_methods(interceptor):
    out = module.apply(variables, *args, **apply_kwargs)
  return out, _build_tree(fn, variables["params"], recorder, post, output_post)


# --------------------------------------------------------------------------
# NNX.

_NNX_LOCK = threading.RLock()


def _iter_modules(model: nnx.Module):
  if hasattr(nnx, "iter_modules"):
    return nnx.iter_modules(model)
  return model.iter_modules()  # flax < 0.11.


def call(
  model: nnx.Module,
  *args: Any,
  post: Post,
  output_post: PostFn = None,
  method: Optional[str] = None,
  **kwargs: Any,
) -> tuple[Any, Any]:
  """``model(*args)`` and the Trace tree of its ``nnx.Linear`` / ``nnx.Conv``.

  The tree is a nested dict with the paths of ``nnx.state(model,
  nnx.Param)`` (as ``nnx.to_pure_dict`` gives them): ``Trace(pre, post)`` at
  each called layer's kernel, ``None`` elsewhere. Rules match traces to
  parameters by path, and ignore a final ``.value`` in a parameter's path,
  so the same tree serves ``nnx.Optimizer`` (pure arrays), an
  ``nnx.split`` state (``Variable`` leaves) and ``nnx.to_pure_dict``.

  Call it inside the function that ``nnx.grad`` / ``nnx.jit`` /
  ``nnx.value_and_grad`` transforms, on the model that function receives.

  Args:
    model: an NNX module.
    *args: the arguments of ``model(...)`` (or of ``method``).
    post: as in :func:`apply`; layer names are parameter paths joined by "/"
      (``"linear1"``, ``"layers/0"``).
    output_post: as in :func:`apply`.
    method: call ``getattr(model, method)`` instead of ``model``.
    **kwargs: keyword arguments of the call.

  Returns:
    ``(output, traces)``.

  >>> import jax, jax.numpy as jnp, optax, ojax
  >>> from flax import nnx
  >>> class MLP(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.hidden = nnx.Linear(5, 3, rngs=rngs)
  ...     self.out = nnx.Linear(3, 2, rngs=rngs)
  ...   def __call__(self, x):
  ...     return self.out(nnx.relu(self.hidden(x)))
  >>> model = MLP(nnx.Rngs(0))
  >>> y, acts = ojax.traces.call(model, jnp.ones((4, 5)), post=nnx.relu)
  >>> jax.tree.map(jnp.shape, acts["hidden"]["kernel"])
  Trace(pre=(4, 5), post=(4, 3), pre_error=None, post_error=None)
  >>> optimizer = nnx.Optimizer(model, ojax.sgd_oja(0.1, 0.01), wrt=nnx.Param)
  >>> grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  >>> _ = optimizer.update(model, grads, activations=acts)
  """
  fn = "ojax.traces.call"
  if not isinstance(model, nnx.Module):
    raise ValueError(
      f"{fn}: model has type {type(model).__name__}; it must "
      "be an nnx.Module (for Linen use ojax.traces.apply)."
    )
  layers: dict[int, tuple[Any, ...]] = {}
  for path, module in _iter_modules(model):
    if isinstance(module, (nnx.Linear, nnx.Conv)):
      layers.setdefault(id(module), tuple(path))
  recorder = _Recorder(fn)
  active: set[int] = set()

  followed = {
    id(m) for _, m in _iter_modules(model) if isinstance(m, _FOLLOWED_NNX)
  }

  def wrap(original):
    def traced_call(self, *call_args, **call_kwargs):
      key = id(self)
      if key in followed and key not in active:
        active.add(key)
        try:
          out = original(self, *call_args, **call_kwargs)
        finally:
          active.discard(key)
        recorder.follow(call_args[0] if call_args else None, out)
        return out
      if key not in layers or key in active:
        return original(self, *call_args, **call_kwargs)
      recorder.check_trace(layers[key], self)
      active.add(key)
      try:
        z = original(self, *call_args, **call_kwargs)
      finally:
        active.discard(key)
      x = call_args[0] if call_args else call_kwargs["inputs"]
      recorder.record(layers[key], self, x, z)
      return z

    return traced_call

  target = model if method is None else getattr(model, method)
  with _NNX_LOCK:
    classes = {}
    for _, module in _iter_modules(model):
      cls = type(module)
      if (id(module) in layers or id(module) in followed) and (
        cls not in classes
      ):
        classes[cls] = cls.__dict__.get("__call__")
    try:
      for cls in classes:
        cls.__call__ = wrap(cls.__call__)
      out = target(*args, **kwargs)
    finally:
      for cls, own in classes.items():
        if own is None:
          del cls.__call__
        else:
          cls.__call__ = own
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return out, _build_tree(fn, params, recorder, post, output_post)

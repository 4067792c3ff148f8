"""ojax.traces: trace trees for stock Linen and NNX models, unchanged.

The helper's tree must be exactly the hand-built one, under jit, vmap and
scan; what it cannot see must raise, not guess; the docs examples must run.
"""

import pathlib
import re

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "examples.md"
_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape),
                     jnp.float32)


def _linen_params(model, x, seed=0):
  """Random params without compiling an initializer (jax.random is slow to
  compile on CPU): shapes from eval_shape, values from NumPy."""
  shapes = jax.eval_shape(model.init, _KEY, x)["params"]
  leaves, treedef = jax.tree.flatten(shapes)
  return treedef.unflatten([0.5 * _normal(seed + i, l.shape)
                            for i, l in enumerate(leaves)])


def _nnx_fill(model, seed=0):
  """Random NumPy values for an NNX model built with zeros_init."""
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  nnx.update(model, treedef.unflatten([0.5 * _normal(seed + i, l.shape)
                                       for i, l in enumerate(leaves)]))
  return model


_ZEROS = nnx.initializers.zeros_init()


class MLP(nn.Module):
  """A stock Linen MLP: nothing in it knows about ojax."""

  @nn.compact
  def __call__(self, x):
    x = nn.tanh(nn.Dense(6)(x))
    x = nn.tanh(nn.Dense(5, use_bias=False)(x))
    return nn.Dense(3)(x)


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x + nn.relu(nn.Dense(x.shape[-1])(x))


class ResNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = Block()(nn.relu(nn.Dense(4, name="stem")(x)))
    return nn.Dense(2, name="head")(x)


def _hand_built_mlp(params, x):
  """The MLP's forward pass with its trace tree written out by hand."""
  p = params
  h1 = jnp.tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
  h2 = jnp.tanh(h1 @ p["Dense_1"]["kernel"])
  logits = h2 @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
  acts = {"Dense_0": {"kernel": ojax.Trace(x, h1), "bias": None},
          "Dense_1": {"kernel": ojax.Trace(h1, h2)},
          "Dense_2": {"kernel": ojax.Trace(h2, jax.nn.softmax(logits)),
                      "bias": None}}
  return logits, acts


def test_linen_traces_equal_the_hand_built_tree_under_jit_vmap_scan():
  """Seeds vmapped, samples scanned, BP + Oja: helper == hand-built tree."""
  model = MLP()
  x_TxBxD = _normal(0, (6, 2, 4))
  y_TxB = jnp.asarray(np.random.default_rng(1).integers(0, 3, size=(6, 2)))
  seeds = jax.tree.map(lambda *p: jnp.stack(p),
                       *[_linen_params(model, x_TxBxD[0], s) for s in (0, 9)])
  tx = ojax.sgd_oja(0.1, 0.05)

  def train(params, forward):
    def step(carry, xy):
      params, state = carry
      x, y = xy

      def loss_fn(p):
        logits, acts = forward(p, x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return loss.mean(), acts

      grads, acts = jax.grad(loss_fn, has_aux=True)(params)
      updates, state = tx.update(grads, state, params, activations=acts)
      return (optax.apply_updates(params, updates), state), acts

    (params, _), acts = jax.lax.scan(step, (params, tx.init(params)),
                                     (x_TxBxD, y_TxB))
    return params, acts

  helper = lambda p, x: ojax.traces.apply(  # pylint: disable=unnecessary-lambda-assignment
      model, {"params": p}, x, post=nn.tanh, output_post=jax.nn.softmax)
  by_helper, by_hand = jax.jit(lambda seeds: tuple(
      jax.vmap(lambda p, f=forward: train(p, f))(seeds)
      for forward in (helper, _hand_built_mlp)))(seeds)
  assert (jax.tree.structure(by_helper, is_leaf=lambda t: t is None)
          == jax.tree.structure(by_hand, is_leaf=lambda t: t is None))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-6),
               by_helper, by_hand)


def test_residual_block_trace_is_the_inner_layer_in_and_out():
  model = ResNet()
  x = _normal(0, (3, 5))
  params = _linen_params(model, x)
  _, acts = ojax.traces.apply(model, {"params": params}, x, post=nn.relu)
  stem = nn.relu(x @ params["stem"]["kernel"] + params["stem"]["bias"])
  inner = acts["Block_0"]["Dense_0"]["kernel"]
  np.testing.assert_allclose(inner.pre, stem, rtol=1e-6)
  dense = params["Block_0"]["Dense_0"]
  np.testing.assert_allclose(
      inner.post, nn.relu(stem @ dense["kernel"] + dense["bias"]), rtol=1e-6)
  block_out = stem + inner.post  # The skip path belongs to no layer.
  np.testing.assert_allclose(acts["head"]["kernel"].pre, block_out, rtol=1e-6)
  # The last layer called gets output_post (None: raw logits).
  np.testing.assert_allclose(
      acts["head"]["kernel"].post,
      block_out @ params["head"]["kernel"] + params["head"]["bias"],
      rtol=1e-6)
  assert acts["stem"]["bias"] is None


def test_per_layer_post_mapping():
  model = MLP()
  x = jnp.ones((2, 4))
  params = _linen_params(model, x)
  post = {"Dense_0": nn.tanh, "Dense_1": None, "Dense_2": jax.nn.sigmoid}
  _, acts = ojax.traces.apply(model, {"params": params}, x, post=post)
  z1 = acts["Dense_1"]["kernel"]
  np.testing.assert_allclose(z1.post, z1.pre @ params["Dense_1"]["kernel"],
                             rtol=1e-6)
  last = acts["Dense_2"]["kernel"]
  np.testing.assert_allclose(last.post, jax.nn.sigmoid(
      last.pre @ params["Dense_2"]["kernel"] + params["Dense_2"]["bias"]),
                             rtol=1e-6)


class Shared(nn.Module):
  def setup(self):
    self.dense = nn.Dense(4)

  def __call__(self, x):
    return self.dense(nn.relu(self.dense(x)))


class NoLayers(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Embed(3, 2)(x)


@pytest.mark.parametrize("model, x, kwargs, message", [
    (Shared(), jnp.ones((2, 4)), dict(post=nn.relu),
     "layer 'dense' (Dense) was called more than once"),
    (MLP(), jnp.ones((2, 4)), dict(post={"Dense_0": nn.relu}),
     "post has no entry for layer 'Dense_1'"),
    (MLP(), jnp.ones((2, 4)), dict(post={"Dense_9": nn.relu}),
     "post names layer 'Dense_9', which was not traced; traced layers: "
     "Dense_0, Dense_1, Dense_2"),
    (MLP(), jnp.ones((2, 4)), dict(post={"Dense_0": nn.relu},
                                   output_post=nn.softmax),
     "post is a mapping and output_post is given"),
    (MLP(), jnp.ones((2, 4)), dict(post="relu"), "post has type str"),
    (NoLayers(), jnp.ones((2,), jnp.int32), dict(post=nn.relu),
     "called no traceable layer"),
    (nn.Conv(4, (3, 3), feature_group_count=2), jnp.ones((1, 5, 5, 2)),
     dict(post=nn.relu), "grouped convolution"),
])
def test_what_the_linen_helper_cannot_see_raises(model, x, kwargs, message):
  variables = jax.eval_shape(model.init, _KEY, x)
  with pytest.raises(ValueError) as err:
    jax.eval_shape(lambda v: ojax.traces.apply(model, v, x, **kwargs),
                   variables)
  assert message in str(err.value)
  assert "\n" not in str(err.value)


class NNXNet(nnx.Module):
  def __init__(self, rngs):
    init = dict(kernel_init=_ZEROS, rngs=rngs)
    self.conv = nnx.Conv(2, 3, (3, 3), strides=2, padding="VALID", **init)
    self.layers = nnx.List([nnx.Linear(12, 5, **init),
                            nnx.Linear(5, 2, **init)])
    self.unused = nnx.Linear(2, 2, **init)

  def __call__(self, x):
    x = nnx.relu(self.conv(x)).reshape(x.shape[0], -1)
    x = nnx.relu(self.layers[0](x))
    return self.layers[1](x)


def test_nnx_traces_match_paths_values_and_split_state():
  model = _nnx_fill(NNXNet(nnx.Rngs(0)))
  x = _normal(1, (2, 5, 5, 2))
  graphdef, state = nnx.split(model)
  pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  variables = nnx.state(model, nnx.Param)
  tx = ojax.oja(0.1)

  @jax.jit
  def run(state, pure, variables, x):
    model = nnx.merge(graphdef, state)
    logits, acts = ojax.traces.call(model, x, post=nnx.relu,
                                    output_post=jax.nn.softmax)
    patches = ojax.traces.conv_patches(x, (3, 3), strides=2, padding="VALID")
    # The same tree serves pure params and nnx.split's Variables (`.value`).
    u_pure = tx.update(jax.tree.map(jnp.zeros_like, pure), tx.init(pure),
                       pure, activations=acts)[0]
    u_vars = tx.update(jax.tree.map(jnp.zeros_like, variables),
                       tx.init(variables), variables, activations=acts)[0]
    return logits, acts, patches, u_pure, u_vars

  logits, acts, patches, u_pure, u_vars = run(state, pure, variables, x)
  assert acts["unused"]["kernel"] is None and acts["conv"]["bias"] is None
  conv = acts["conv"]["kernel"]
  np.testing.assert_allclose(conv.pre, patches, rtol=1e-6)
  np.testing.assert_allclose(
      conv.post, np.maximum(conv.pre @ pure["conv"]["kernel"].reshape(-1, 3)
                            + pure["conv"]["bias"], 0), rtol=1e-5, atol=1e-5)
  first = acts["layers"][0]["kernel"]
  np.testing.assert_allclose(first.pre, conv.post.reshape(2, -1), rtol=1e-6)
  np.testing.assert_allclose(acts["layers"][1]["kernel"].post,
                             jax.nn.softmax(logits), rtol=1e-6)
  jax.tree.map(np.testing.assert_allclose, u_pure, nnx.to_pure_dict(u_vars))
  assert np.any(u_pure["layers"][0]["kernel"] != 0)
  np.testing.assert_array_equal(u_pure["unused"]["kernel"], 0)
  assert "__call__" not in nnx.Linear.__dict__ or (
      nnx.Linear.__call__.__name__ == "__call__")  # Classes restored.


def test_nnx_layer_called_twice_raises():
  class Twice(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(3, 3, kernel_init=_ZEROS, rngs=rngs)

    def __call__(self, x):
      return self.dense(self.dense(x))

  with pytest.raises(ValueError, match="layer 'dense' .* was called more "
                     "than once"):
    ojax.traces.call(Twice(nnx.Rngs(0)), jnp.ones((1, 3)), post=nnx.relu)
  assert nnx.Linear.__call__.__name__ == "__call__"  # Restored after raising.


def _doc_blocks():
  return re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.S)


@pytest.mark.parametrize("index", range(3), ids=["linen_cnn", "nnx",
                                                  "plain_functions"])
def test_docs_examples_run(index):
  blocks = _doc_blocks()
  assert len(blocks) == 3
  namespace = {}
  # Non-partitionable threefry compiles the models' initializers ~4x faster
  # on CPU; it changes random bits only, not what the example exercises.
  with jax.threefry_partitionable(False):
    exec(compile(blocks[index], f"docs/examples.md[{index}]", "exec"),  # pylint: disable=exec-used
         namespace)
  if index == 0:  # The CNN's convs got patches with their own strides.
    ns = namespace
    _, acts = jax.eval_shape(lambda p, x: ojax.traces.apply(
        ns["model"], {"params": p}, x, post=nn.relu,
        output_post=nn.softmax), ns["params"], ns["images"][:16])
    assert acts["Conv_0"]["kernel"].pre.shape == (16, 8, 8, 9)
    assert acts["Conv_1"]["kernel"].pre.shape == (16, 4, 4, 72)
    assert acts["Dense_1"]["kernel"].post.shape == (16, 10)
  if index in (0, 1):
    assert np.isfinite(float(namespace["loss"]))
  else:
    assert all(np.all(np.isfinite(v)) for v in
               jax.tree.leaves(namespace["params"]))

"""Conv kernels: patches in the kernel's order, rules equal to the dense rule,
and a conv layer trained by Oja alone finds the principal subspace of its
patches."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ojax


@pytest.mark.parametrize("shape, conv_kw", [
    ((2, 7, 6, 3), dict(kernel_size=(3, 3))),
    ((2, 9, 8, 2), dict(kernel_size=(3, 2), strides=2, padding="VALID")),
    ((1, 8, 8, 2), dict(kernel_size=(3, 3), padding=((1, 0), (2, 1)),
                        kernel_dilation=2)),
    ((2, 6, 6, 1), dict(kernel_size=(3, 3), padding="CIRCULAR")),
    ((2, 6, 6, 1), dict(kernel_size=(2, 3), padding="REFLECT", strides=(1, 2))),
    ((1, 5, 5, 2), dict(kernel_size=(2, 2), input_dilation=2, padding=1)),
    ((3, 9, 2), dict(kernel_size=(4,), padding="CAUSAL")),
    ((1, 4, 5, 4, 2), dict(kernel_size=(2, 3, 2))),
    ((2, 3, 6, 6, 2), dict(kernel_size=(3, 3))),   # Two batch axes.
    ((6, 6, 2), dict(kernel_size=(3, 3))),          # No batch axis.
])
def test_patches_times_reshaped_kernel_is_the_flax_convolution(shape, conv_kw):
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  conv = nn.Conv(4, use_bias=False, **conv_kw)
  kernel_shape = (tuple(conv_kw["kernel_size"]) + (shape[-1], 4))
  kernel = jnp.asarray(np.random.default_rng(1).normal(size=kernel_shape),
                       jnp.float32)

  @jax.jit
  def both(x, kernel):
    patches = ojax.traces.conv_patches(
        x, conv_kw["kernel_size"], strides=conv_kw.get("strides", 1),
        padding=conv_kw.get("padding", "SAME"),
        input_dilation=conv_kw.get("input_dilation", 1),
        kernel_dilation=conv_kw.get("kernel_dilation", 1))
    return patches, conv.apply({"params": {"kernel": kernel}}, x)

  patches, expected = both(x, kernel)
  assert patches.shape == expected.shape[:-1] + (kernel.size // 4,)
  np.testing.assert_allclose(patches @ kernel.reshape(-1, 4), expected,
                             rtol=1e-4, atol=1e-4)


def test_patch_features_are_ordered_kh_kw_cin():
  x = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2)
  patches = ojax.traces.conv_patches(x, (2, 2), padding="VALID")
  # Position (0, 0) of image 0: pixels (0,0), (0,1), (1,0), (1,1), each cin.
  np.testing.assert_array_equal(patches[0, 0, 0],
                                x[0, :2, :2, :].reshape(-1))


RULES = [
    lambda **kw: ojax.hebb(0.1, **kw), lambda **kw: ojax.oja(0.1, **kw),
    lambda **kw: ojax.sanger(0.1, **kw),
    lambda **kw: ojax.bcm(0.1, theta_init=0.5, **kw),
    lambda **kw: ojax.plasticity({"oja": 0.1, "error": 0.3, "decay": 0.01},
                                 **kw),
]


@pytest.mark.parametrize("rule", RULES)
def test_conv_rule_equals_dense_rule_on_reshaped_kernel(rule):
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
  pre = jnp.asarray(rng.normal(size=(2, 5, 5, 18)), jnp.float32)
  post = jnp.asarray(rng.normal(size=(2, 5, 5, 4)), jnp.float32)
  err = jnp.asarray(rng.normal(size=(2, 5, 5, 4)), jnp.float32)
  conv_tx, dense_tx = rule(), rule()
  conv_params = {"conv": kernel}
  conv_u, conv_s = conv_tx.update(
      optax.tree.zeros_like(conv_params), conv_tx.init(conv_params),
      conv_params, activations={"conv": ojax.Trace(pre, post,
                                                   post_error=err)})
  dense_params = {"conv": kernel.reshape(18, 4)}
  dense_u, dense_s = dense_tx.update(
      optax.tree.zeros_like(dense_params), dense_tx.init(dense_params),
      dense_params, activations={"conv": ojax.Trace(
          pre.reshape(-1, 18), post.reshape(-1, 4),
          post_error=err.reshape(-1, 4))})
  np.testing.assert_allclose(conv_u["conv"],
                             dense_u["conv"].reshape(3, 3, 2, 4), rtol=1e-5,
                             atol=1e-6)
  jax.tree.map(np.testing.assert_allclose, conv_s, dense_s)


def test_out_in_conv_kernel_takes_patches_in_its_own_order():
  """A PyTorch-layout weight (cout, cin, kh, kw) with patches (cin, kh, kw)."""
  rng = np.random.default_rng(1)
  k_hwio = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(2, 5, 5, 2)), jnp.float32)
  flax_patches = ojax.traces.conv_patches(x, (3, 3))  # (kh, kw, cin)
  torch_patches = jnp.moveaxis(flax_patches.reshape(2, 5, 5, 3, 3, 2), -1,
                               -3).reshape(2, 5, 5, 18)  # (cin, kh, kw)
  post = jnp.tanh(flax_patches @ k_hwio.reshape(18, 4))
  w_oihw = jnp.transpose(k_hwio, (3, 2, 0, 1))
  tx_flax, tx_torch = ojax.oja(0.1), ojax.oja(0.1, layout="out_in")
  u_flax, _ = tx_flax.update({"w": jnp.zeros_like(k_hwio)},
                             tx_flax.init(None), {"w": k_hwio},
                             activations={"w": ojax.Trace(flax_patches, post)})
  u_torch, _ = tx_torch.update({"w": jnp.zeros_like(w_oihw)},
                               tx_torch.init(None), {"w": w_oihw},
                               activations={"w": ojax.Trace(torch_patches,
                                                            post)})
  np.testing.assert_allclose(jnp.transpose(u_torch["w"], (2, 3, 1, 0)),
                             u_flax["w"], rtol=1e-5, atol=1e-6)


def test_conv_layer_trained_by_oja_alone_finds_principal_patch_subspace():
  steps, size, k = 600, 10, 3
  rng = np.random.default_rng(0)
  noise = rng.normal(size=(steps, size + 2, size + 4))
  # Smoothing with an anisotropic kernel: correlated pixels, distinct
  # eigenvalues of the 3x3 patch covariance.
  images = sum(a * b * noise[:, i:i + size, j:j + size]
               for i, a in enumerate([0.5, 1.0, 0.5])
               for j, b in enumerate([0.2, 0.6, 1.0, 0.6, 0.2]))
  images = jnp.asarray((images / images.std())[..., None], jnp.float32)
  model = nn.Conv(k, (3, 3), padding="VALID", use_bias=False)
  params = {"kernel": jnp.asarray(0.1 * rng.normal(size=(3, 3, 1, k)),
                                  jnp.float32)}
  tx = ojax.oja(optax.linear_schedule(3e-2, 1e-3, steps))

  def step(carry, image):
    params, state = carry
    _, acts = ojax.traces.apply(model, {"params": params}, image[None],
                                post=None, output_post=None)
    updates, state = tx.update(optax.tree.zeros_like(params), state, params,
                               activations=acts)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda p: jax.lax.scan(
      step, (p, tx.init(p)), images))(params)
  kernel = np.asarray(params["kernel"], np.float64).reshape(-1, k)
  patches = np.asarray(ojax.traces.conv_patches(images, (3, 3),
                                                padding="VALID"),
                       np.float64).reshape(-1, 9)
  eigvals, eigvecs = np.linalg.eigh(patches.T @ patches / len(patches))
  top = eigvecs[:, ::-1][:, :k]
  projector = kernel @ np.linalg.solve(kernel.T @ kernel, kernel.T)
  subspace_error = np.linalg.norm(projector - top @ top.T)
  orthonormality_error = np.linalg.norm(kernel.T @ kernel - np.eye(k))
  # Measured: subspace error 0.016, orthonormality error 9e-5 (eigenvalues
  # 4.83, 1.95, 1.17 | 0.48, ...).
  assert eigvals[::-1][k - 1] > 1.5 * eigvals[::-1][k]
  assert subspace_error < 0.1, subspace_error
  assert orthonormality_error < 0.05, orthonormality_error

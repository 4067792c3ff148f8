"""The reference formulation as a per-sample PyTorch loop (the peer).

Weights ``W_l`` have shape ``(out, in)``; there are no biases. For one sample
``x`` with label ``c``:

    z_l = W_l y_{l-1},  y_0 = x
    y_l = softplus_beta(z_l) = log(1 + exp(beta z_l)) / beta   (hidden layers)
    y_L = softmax(z_L)                                         (output layer)
    e_L = softmax(z_L) - onehot(c)
    e_l = (W_{l+1}^T e_{l+1}) * sigma'(z_l),  sigma'(z_l) = 1 - exp(-beta y_l)
    dW_l = -lr e_l y_{l-1}^T + oja_lr (y_l y_{l-1}^T - y_l (y_l^T W_l))

for every layer, the output layer included (its post-synaptic activity is the
softmax). All errors and both terms use the weights of the forward pass;
``y_l^T W_l`` is computed first, so no ``(out, out)`` matrix is formed.

The loop is written to be as fast as PyTorch allows for batch 1: no autograd
(``torch.no_grad``), matrix-vector products, in-place rank-1 updates
(``addr_``, BLAS ``ger``), in-place elementwise ops where an input is not
needed again, precomputed one-hot rows and sample views. Thread count and
glibc malloc settings are chosen by the caller (``benchmarks/worker.py``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def weights_from_kernels(kernels: Sequence[np.ndarray]) -> list[torch.Tensor]:
  """PyTorch weights ``W_l = K_l^T`` (contiguous ``(out, in)``) from kernels."""
  return [torch.from_numpy(np.ascontiguousarray(np.asarray(k, np.float32).T))
          for k in kernels]


def kernels_from_weights(weights: Sequence[torch.Tensor]) -> list[np.ndarray]:
  """Flax-layout kernels ``K_l = W_l^T`` ``(in, out)`` as numpy arrays."""
  return [w.detach().t().contiguous().numpy().copy() for w in weights]


def train(weights_OxI: Sequence[torch.Tensor], x_NxD: torch.Tensor,
          y_N: Sequence[int], order_T: Sequence[int], *, lr: float,
          oja_lr: float, beta: float = 10.0) -> None:
  """Trains ``weights_OxI`` in place on samples ``order_T``, one at a time.

  Args:
    weights_OxI: the layers' weights ``W_l`` ``(out, in)``, input layer first.
      Updated in place.
    x_NxD: inputs, float32.
    y_N: integer labels.
    order_T: the index of the sample of each step.
    lr: the gradient (backprop) rate.
    oja_lr: the Oja rate; 0 gives plain SGD (the Oja term is then skipped).
    beta: softplus sharpness.
  """
  weights = list(weights_OxI)
  last = len(weights) - 1
  num_classes = weights[last].shape[0]
  onehots = torch.eye(num_classes, dtype=x_NxD.dtype)
  rows = x_NxD.unbind(0)  # Views: picking a sample is a Python list lookup.
  labels = [int(c) for c in np.asarray(y_N)]
  errors: list[torch.Tensor] = [x_NxD[0]] * len(weights)
  with torch.no_grad():
    for k in order_T:
      ys = [rows[k]]
      for l in range(last):
        ys.append(F.softplus(torch.mv(weights[l], ys[l]), beta=beta))
      ys.append(torch.softmax(torch.mv(weights[last], ys[last]), 0))
      e = torch.sub(ys[last + 1], onehots[labels[k]])
      errors[last] = e
      for l in range(last, 0, -1):
        slope = torch.mul(ys[l], -beta).exp_().neg_().add_(1.0)
        e = torch.mv(weights[l].t(), e).mul_(slope)
        errors[l - 1] = e
      for l, w in enumerate(weights):
        pre, post = ys[l], ys[l + 1]
        if oja_lr:
          # x - W^T y: the transpose of y^T W, so (y x^T - y y^T W) is
          # outer(y, x - W^T y), a rank-1 update.
          residual = torch.mv(w.t(), post).neg_().add_(pre)
          w.addr_(post, residual, alpha=oja_lr)
        w.addr_(errors[l], pre, alpha=-lr)

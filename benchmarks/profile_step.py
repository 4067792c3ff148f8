r"""Where the time of one online step goes: per-HLO-op profile and a roofline.

  python benchmarks/profile_step.py --arch=784-256-256-10 --rule=bp_oja
  python benchmarks/profile_step.py --proposed   # with benchmarks/proposed.py
  XLA_FLAGS=--xla_cpu_copy_insertion_use_region_analysis=true \
      python benchmarks/profile_step.py --proposed

Compiles ``jit(ojax.train.train_steps)`` as ``make bench`` does, runs it once
under ``jax.profiler`` and prints the time per step of each op of the
``lax.scan`` body (XLA:CPU runs one thunk per op), with the op's output shape
so it can be matched to the optimized HLO (``--hlo=FILE`` writes it). Then it
measures what streaming the weights costs on this machine: a compiled loop
that only reads (``K @ v``) or only updates (``K + outer(a, b)``) each
kernel, which is the floor for a step that must read every kernel in the
forward pass, read it again for the Oja residual and rewrite it once.

The profile uses ``jax._src.profiler.ProfileData`` (not public API); the
profiler itself inflates short ops, so compare ops with each other, and the
total with the benchmark's wall-clock rate.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import jax_loops


def op_times(fn: Any, args: tuple[Any, ...], steps: int) -> dict[str, float]:
  """Microseconds per step of each op (thunk) that runs every step of ``fn``."""
  from jax._src.profiler import ProfileData
  jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      jax.block_until_ready(fn(*args))
    path = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)[0]
    data = ProfileData.from_file(path)
  total: collections.Counter[str] = collections.Counter()
  count: collections.Counter[str] = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if "python" in line.name:
        continue
      for event in line.events:
        if "Thunk" in event.name or event.name.startswith("while"):
          continue
        total[event.name] += event.duration_ns
        count[event.name] += 1
  return {k: v / steps / 1e3 for k, v in total.items() if count[k] >= steps}


def op_shapes(hlo_text: str) -> dict[str, str]:
  """Output shape of each named instruction of an optimized HLO module."""
  shapes = {}
  for m in re.finditer(r"%([\w.\-]+) = (\(?[a-z0-9]+\[[^=]*?\][^ ]*) ",
                       hlo_text):
    shapes.setdefault(m.group(1), m.group(2).split("{")[0])
  return shapes


def streaming_floor(kernel_shapes: list[tuple[int, int]], reps: int = 2000
                    ) -> dict[str, float]:
  """Microseconds to read every kernel once (matvec) and to update it once."""
  keys = jax.random.split(jax.random.key(0), len(kernel_shapes))
  ks = [jax.random.normal(k, s) * 0.01 for k, s in zip(keys, kernel_shapes)]

  # Each step's vectors depend on the previous step, so nothing is hoisted.
  def read(carry, _):
    ks, c = carry
    return (ks, c + 1e-9 * sum(jnp.sum(k @ (c + jnp.ones(k.shape[1])))
                               for k in ks)), None

  def write(carry, _):
    ks, c = carry
    ks = [k + 1e-6 * jnp.outer(c + jnp.ones(k.shape[0]),
                               jnp.ones(k.shape[1])) for k in ks]
    return (ks, c + 1e-9 * ks[-1][0, 0]), None

  out = {}
  for name, body in (("read_all_kernels", read), ("update_all_kernels", write)):
    f = jax.jit(lambda ks, body=body: jax.lax.scan(
        body, (ks, jnp.zeros([])), None, length=reps))
    jax.block_until_ready(f(ks))
    best = np.inf
    for _ in range(3):
      tic = time.perf_counter()
      jax.block_until_ready(f(ks))
      best = min(best, time.perf_counter() - tic)
    out[name] = best / reps * 1e6
  # The same passes in NumPy (BLAS sgemv; an in-place scale), for the memory
  # system's own speed rather than XLA's code for it.
  nks = [np.array(k) for k in ks]
  vs = [np.ones(k.shape[1], np.float32) for k in nks]
  for name, body in (
      ("numpy_read_all_kernels", lambda: [k @ v for k, v in zip(nks, vs)]),
      ("numpy_update_all_kernels",
       lambda: [np.multiply(k, np.float32(1.0), out=k) for k in nks])):
    best = np.inf
    for _ in range(3):
      tic = time.perf_counter()
      for _ in range(reps // 4):
        body()
      best = min(best, time.perf_counter() - tic)
    out[name] = best / (reps // 4) * 1e6
  return out


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arch", default=common.ARCHS[0])
  parser.add_argument("--rule", default="bp_oja", choices=("bp_oja", "sgd"))
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--top", type=int, default=12)
  parser.add_argument("--proposed", action="store_true",
                      help="use benchmarks/proposed.py's oja_term")
  parser.add_argument("--hlo", default=None, help="write optimized HLO here")
  args = parser.parse_args(argv)
  if args.proposed:
    from benchmarks import proposed
    proposed.patch_oja_term()
  x_NxD, y_N = common.load_data()
  x, y = jnp.asarray(x_NxD), jnp.asarray(y_N)
  model, tx = common.make_model(args.arch), common.make_tx(args.rule)
  state = common.init_state(args.arch, args.rule)
  fn, compile_s = jax_loops.compile_scan(model, tx, state, x, y, args.steps)
  start = jnp.asarray(0, jnp.int32)
  hlo = fn.as_text()
  if args.hlo:
    with open(args.hlo, "w", encoding="utf-8") as f:
      f.write(hlo)
  jax.block_until_ready(fn(state, start, x, y))
  wall_us = np.inf
  for _ in range(3):  # Before profiling: the profiler slows later runs.
    tic = time.perf_counter()
    jax.block_until_ready(fn(state, start, x, y))
    wall_us = min(wall_us, (time.perf_counter() - tic) / args.steps * 1e6)
  times = op_times(fn, (state, start, x, y), args.steps)
  shapes = op_shapes(hlo)
  _, features = common.parse_arch(args.arch)
  sizes = [common.parse_arch(args.arch)[0], *features]
  kernel_shapes = list(zip(sizes[:-1], sizes[1:]))
  kernel_types = {f"f32[{i},{o}]" for i, o in kernel_shapes}
  kernel_copies = [k for k in times if re.fullmatch(r"copy(\.\d+)?", k)
                   and shapes.get(k) in kernel_types]
  total = sum(times.values())
  print(f"{args.arch} {args.rule}{' (proposed)' if args.proposed else ''}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}: compile "
        f"{compile_s:.2f} s; {wall_us:.1f} us/step wall (best of 3, before "
        "profiling) "
        f"({1e6 / wall_us:,.0f} samples/s); profiled ops sum to "
        f"{total:.1f} us/step")
  print(f"{'us/step':>8} {'share':>6}  op (output shape)")
  for name, us in sorted(times.items(), key=lambda kv: -kv[1])[:args.top]:
    print(f"{us:8.2f} {us / total:6.1%}  {name} ({shapes.get(name, '?')})")
  print(f"per-step copies of whole kernels: {len(kernel_copies)} "
        f"({sum(times[k] for k in kernel_copies):.1f} us/step)")
  floor = streaming_floor(kernel_shapes)
  mib = sum(i * o for i, o in kernel_shapes) * 4 / 2**20
  # BP+Oja must read each kernel twice (forward, Oja residual), read the
  # hidden ones once more (backprop) and update each once; SGD skips the
  # residual.
  reads = 2 if args.rule == "bp_oja" else 1
  hidden_share = sum(i * o for i, o in kernel_shapes[1:]) / sum(
      i * o for i, o in kernel_shapes)
  est = (reads + hidden_share) * floor["read_all_kernels"] + floor[
      "update_all_kernels"]
  np_est = (reads + hidden_share) * floor["numpy_read_all_kernels"] + floor[
      "numpy_update_all_kernels"]
  print(f"kernels {mib:.2f} MiB. Passing over all kernels once takes, in XLA: "
        f"read {floor['read_all_kernels']:.1f} us, update "
        f"{floor['update_all_kernels']:.1f} us; in NumPy: read "
        f"{floor['numpy_read_all_kernels']:.1f} us, in-place scale "
        f"{floor['numpy_update_all_kernels']:.1f} us.")
  print(f"A {args.rule} step makes {reads + hidden_share:.2f} reads and one "
        f"update of the kernels: >= {est:.1f} us with XLA's passes "
        f"({1e6 / est:,.0f} samples/s), >= {np_est:.1f} us with NumPy's "
        f"({1e6 / np_est:,.0f} samples/s).")


if __name__ == "__main__":
  main()

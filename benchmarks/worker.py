"""One benchmark measurement in its own process; prints one JSON line.

``benchmarks/bench.py`` starts each measurement as a fresh process with its
own environment (XLA flags, malloc settings, thread counts) and CPU affinity
(``--core``, set before JAX or PyTorch starts their thread pools):

  python -m benchmarks.worker prep --arch=784-256-256-10 --out=/tmp/p.npz
  python -m benchmarks.worker jax --arch=784-256-256-10 --core=1 \\
      --rows=fused_bp_oja,generic_bp_oja --floor
  python -m benchmarks.worker sweep --arch=784-256-256-10 --points=8
  python -m benchmarks.worker torch --problem=/tmp/p.npz --core=1
  python -m benchmarks.worker equivalence --problem=/tmp/p.npz
  python -m benchmarks.worker gpu --arch=784-256-256-10

JAX rows time ``ojax.train.run`` itself (the loop the experiments use,
evaluation of the 1,000 test digits after each chunk included): one chunk to
compile, then ``--chunks`` timed chunks of ``--samples`` samples per point.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# Reference network: softplus (beta 10), no biases, softmax output. Rates do
# not change the speed; these keep 100k samples finite and let the Oja term
# move the weights far beyond the equivalence tolerance within 100 samples.
LR, OJA_LR, BETA, SEED = 0.05, 0.01, 10.0, 0
# What each JAX row trains: (rule, fast path?).
ROWS = {"fused_bp_oja": ("bp_oja", True), "generic_bp_oja": ("bp_oja", False),
        "fused_sgd": ("sgd", True), "generic_sgd": ("sgd", False)}


def sizes(arch: str) -> list[int]:
  return [int(s) for s in arch.split("-")]


def _jax_setup(arch: str, rule: str, points: int, fast: bool = True):
  """Model, task, stacked states of ``points`` grid points, data."""
  import jax
  import numpy as np
  import ojax
  from experiments import data as data_lib
  from ojax import fused, models, train
  ds = data_lib.load("embedded_mnist")
  data = train.ClassifierData(ds.train_x, ds.train_y, ds.test_x, ds.test_y)
  model = models.MLP(features=tuple(sizes(arch)[1:]), activation="softplus",
                     beta=BETA, use_bias=False, output_post="softmax")
  # The optimizer as experiments/config.py builds it (rates in the state).
  tx = ojax.sgd_oja(LR, OJA_LR if rule == "bp_oja" else None)
  task = train.classifier_task(model, tx, fast=fast)
  if fast != isinstance(task.step, fused.FusedStep):
    raise RuntimeError(f"fast={fast} but the task's step is {task.step!r}")
  keys = jax.random.split(jax.random.key(SEED), points)
  states = train.init_states(model, tx, keys, sizes(arch)[0])
  if points > 1:  # A grid of rates, as a sweep sets them.
    grid = np.linspace(0.5, 1.0, points, dtype=np.float32)[::-1]
    rates = {"learning_rate": LR}
    if rule == "bp_oja":
      rates["oja_learning_rate"] = OJA_LR
    states = states._replace(opt_state=ojax.rules.with_rates(
        states.opt_state, **{k: grid * np.float32(v)
                             for k, v in rates.items()}))
  return model, task, states, data


def barrier(path: str, parties: int, timeout: float = 600.0) -> None:
  """Waits until ``parties`` processes have called this with ``path``."""
  with open(path, "a", encoding="ascii") as f:
    f.write(f"{os.getpid()}\n")
  deadline = time.monotonic() + timeout
  while True:
    with open(path, encoding="ascii") as f:
      if len(f.read().split()) >= parties:
        return
    if time.monotonic() > deadline:
      raise TimeoutError(f"barrier {path}: fewer than {parties} arrived")
    time.sleep(0.001)


def timed_run(task, states, data, samples: int, chunks: int, points: int,
              wait=None) -> dict[str, Any]:
  """``ojax.train.run`` for 1 + ``chunks`` chunks; times all but the first
  (after ``wait()``, e.g. a barrier with other workers)."""
  from ojax import train
  marks = [(time.perf_counter(), time.process_time())]

  def on_chunk(_):
    if len(marks) == 1 and wait is not None:
      wait()
    marks.append((time.perf_counter(), time.process_time()))

  train.run(task, states, data, num_samples=samples * (chunks + 1),
            eval_every=samples, on_chunk=on_chunk)
  wall = [b[0] - a[0] for a, b in zip(marks[1:], marks[2:])]
  cpu = [b[1] - a[1] for a, b in zip(marks[1:], marks[2:])]
  done = samples * points
  return {"samples_per_s": done / statistics.median(wall),
          "samples_per_cpu_s": done / statistics.median(cpu),
          "first_chunk_s": marks[1][0] - marks[0][0],
          "start": marks[1][0] + time.time() - time.perf_counter(),
          "end": marks[-1][0] + time.time() - time.perf_counter(),
          "timed_samples": done * chunks, "timed_s": marks[-1][0] - marks[1][0],
          "timed_cpu_s": marks[-1][1] - marks[1][1]}


def floor_probe(arch: str, reps: int = 3000) -> dict[str, float]:
  """Microseconds to stream every kernel once: a read pass and a
  read-write pass, over a working set the size of the weights.

  Each pass is measured as a compiled JAX loop (matrix-vector products; a
  rank-1 update) and with NumPy (``W @ v``; in-place ``W += c``); the faster
  of the two counts. The floor of a BP + Oja step is one read pass plus one
  read-write pass (the forward pass must read every weight before any can
  change; every weight changes once).
  """
  import jax
  import jax.numpy as jnp
  import numpy as np
  s = sizes(arch)
  shapes = list(zip(s[1:], s[:-1]))  # (out, in), the fused layout.
  rng = np.random.default_rng(0)
  ks = [rng.standard_normal(sh).astype(np.float32) * 0.01 for sh in shapes]

  def read(carry, _):  # Each step's vectors depend on the last step.
    ws, c = carry
    return (ws, c + 1e-9 * sum(jnp.sum(w @ (c + jnp.ones(w.shape[1])))
                               for w in ws)), None

  def write(carry, _):
    ws, c = carry
    ws = [w + 1e-7 * (c + jnp.ones(w.shape[0]))[:, None] * jnp.ones(
        w.shape[1]) for w in ws]
    return (ws, c + 1e-9 * ws[-1][0, 0]), None

  def best_of(fn, n):
    out = float("inf")
    for _ in range(5):
      tic = time.perf_counter()
      fn()
      out = min(out, (time.perf_counter() - tic) / n * 1e6)
    return out

  res = {}
  for name, body in (("read", read), ("rw", write)):
    f = jax.jit(lambda ws, body=body: jax.lax.scan(
        body, (ws, jnp.zeros([])), None, length=reps))
    jws = [jnp.asarray(k) for k in ks]
    jax.block_until_ready(f(jws))
    res[f"jax_{name}_us"] = best_of(lambda f=f: jax.block_until_ready(f(jws)),
                                    reps)
  vs = [np.ones(k.shape[1], np.float32) for k in ks]
  res["numpy_read_us"] = best_of(
      lambda: [[k @ v for k, v in zip(ks, vs)] for _ in range(reps // 3)],
      reps // 3)
  res["numpy_rw_us"] = best_of(
      lambda: [[np.add(k, np.float32(1e-9), out=k) for k in ks]
               for _ in range(reps // 3)], reps // 3)
  res["read_us"] = min(res["jax_read_us"], res["numpy_read_us"])
  res["rw_us"] = min(res["jax_rw_us"], res["numpy_rw_us"])
  res["weights_mib"] = sum(k.size for k in ks) * 4 / 2**20
  return res


def mode_prep(args) -> dict[str, Any]:
  """The torch loop's problem: data, the seed's sample order, init."""
  import jax
  import numpy as np
  from ojax import train
  _, _, states, data = _jax_setup(args.arch, "bp_oja", 1)
  order = train.sample_indices(states.data_key[0], jax.numpy.asarray(0),
                               args.samples, data.train_y.shape[0])
  kernels = [np.asarray(states.params[f"layer_{i}"]["kernel"][0])
             for i in range(len(sizes(args.arch)) - 1)]
  np.savez(args.out, x=data.train_x, y=data.train_y, order=np.asarray(order),
           **{f"k{i}": k for i, k in enumerate(kernels)})
  return {"samples": args.samples}


def mode_jax(args) -> dict[str, Any]:
  """Single-seed rows, each one compiled loop; optionally the floor."""
  out = {}
  for row in args.rows.split(","):
    rule, fast = ROWS[row]
    _, task, states, data = _jax_setup(args.arch, rule, 1, fast)
    out[row] = timed_run(task, states, data, args.samples, args.chunks, 1)
  if args.floor:
    out["floor"] = floor_probe(args.arch)
  return out


def mode_sweep(args) -> dict[str, Any]:
  """``--points`` grid points of the fused BP + Oja loop in one
  ``train.run`` (sharded over XLA's host devices if there are several), or
  in groups of ``--group`` points, one ``train.run`` per group (only the
  first ``--max_groups`` are run)."""
  import jax
  from ojax import train
  group = args.group or args.points
  runs = []
  for g in range(min(args.points // group, args.max_groups)):
    _, task, states, data = _jax_setup(args.arch, "bp_oja", group)
    if len(jax.devices()) > 1:
      states = train.shard(states, group)
    wait = (lambda g=g: barrier(f"{args.barrier}.{g}", args.parties)) if (
        args.barrier) else None
    runs.append(timed_run(task, states, data, args.samples, args.chunks,
                          group, wait))
  timed = sum(r["timed_samples"] for r in runs)
  wall, cpu = (sum(r[k] for r in runs) for k in ("timed_s", "timed_cpu_s"))
  return {"samples_per_s": timed / wall, "samples_per_cpu_s": timed / cpu,
          "cores_used": cpu / wall,
          "start": runs[0]["start"], "end": runs[-1]["end"],
          "devices": len(jax.devices()), "points": args.points,
          "group": group}


def _load_problem(path: str):
  import numpy as np
  with np.load(path) as f:
    kernels = [f[f"k{i}"] for i in range(sum(k.startswith("k")
                                             for k in f.files))]
    return f["x"], f["y"], f["order"], kernels


def mode_torch(args) -> dict[str, Any]:
  """The per-sample PyTorch reference loop (benchmarks/torch_ref.py)."""
  import torch
  from benchmarks import torch_ref
  torch.set_num_threads(args.threads)
  x, y, order, kernels = _load_problem(args.problem)
  order = order[:args.samples].tolist()
  xt = torch.from_numpy(x)

  def once(steps):
    weights = torch_ref.weights_from_kernels(kernels)
    torch_ref.train(weights, xt, y, steps, lr=LR,
                    oja_lr=OJA_LR if args.rule == "bp_oja" else 0.0,
                    beta=BETA)

  once(order[:500])  # Warm up the allocator, caches and BLAS.
  wall, cpu = [], []
  for _ in range(args.chunks):
    tic, cpu0 = time.perf_counter(), time.process_time()
    once(order)
    wall.append(time.perf_counter() - tic)
    cpu.append(time.process_time() - cpu0)
  return {"samples_per_s": len(order) / statistics.median(wall),
          "samples_per_cpu_s": len(order) / statistics.median(cpu),
          "threads": args.threads, "torch": torch.__version__}


def mode_equivalence(args) -> dict[str, Any]:
  """Max |difference| of the kernels after ``--samples`` samples from one
  initialization and sample order: ojax (fused and generic) vs PyTorch."""
  import numpy as np
  import torch
  from benchmarks import torch_ref
  from ojax import train
  torch.set_num_threads(1)
  x, y, order, kernels = _load_problem(args.problem)
  out: dict[str, Any] = {"samples": args.samples}
  finals = {}
  for rule in ("bp_oja", "sgd"):
    weights = torch_ref.weights_from_kernels(kernels)
    torch_ref.train(weights, torch.from_numpy(x), y,
                    order[:args.samples].tolist(), lr=LR,
                    oja_lr=OJA_LR if rule == "bp_oja" else 0.0, beta=BETA)
    ref = torch_ref.kernels_from_weights(weights)
    for fast in (True, False):
      _, task, states, data = _jax_setup(args.arch, rule, 1, fast)
      final = train.run(task, states, data, num_samples=args.samples,
                        eval_every=args.samples).states.params
      got = [np.asarray(final[f"layer_{i}"]["kernel"][0])
             for i in range(len(kernels))]
      out[f"{rule}_{'fused' if fast else 'generic'}_vs_torch"] = max(
          float(np.max(np.abs(a - b))) for a, b in zip(got, ref))
    finals[rule] = ref
  # How far the Oja term moves the weights: the check's resolving power.
  out["oja_term_effect"] = max(float(np.max(np.abs(a - b))) for a, b in
                               zip(finals["bp_oja"], finals["sgd"]))
  out["max_diff"] = max(v for k, v in out.items() if k.endswith("_vs_torch"))
  return out


def mode_gpu(args) -> dict[str, Any]:
  """Aggregate samples/s and memory of 1, 64 and 1024 vmapped points."""
  import jax
  device = jax.devices()[0]
  if device.platform != "gpu":
    return {"skipped": f"no GPU (platform {device.platform})"}
  out = {"device": device.device_kind}
  for points in (1, 64, 1024):
    _, task, states, data = _jax_setup(args.arch, "bp_oja", points)
    res = timed_run(task, states, data, args.samples, args.chunks, points)
    stats = device.memory_stats() or {}
    out[str(points)] = {"samples_per_s": res["samples_per_s"],
                        "peak_bytes": stats.get("peak_bytes_in_use")}
  return out


MODES = {"prep": mode_prep, "jax": mode_jax, "sweep": mode_sweep,
         "torch": mode_torch, "equivalence": mode_equivalence,
         "gpu": mode_gpu}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("mode", choices=sorted(MODES))
  parser.add_argument("--arch", default="784-256-256-10")
  parser.add_argument("--rows", default=",".join(ROWS))
  parser.add_argument("--floor", action="store_true")
  parser.add_argument("--samples", type=int, default=20000,
                      help="samples per point per timed chunk")
  parser.add_argument("--chunks", type=int, default=2, help="timed chunks")
  parser.add_argument("--points", type=int, default=16)
  parser.add_argument("--group", type=int, default=0)
  parser.add_argument("--max_groups", type=int, default=2)
  parser.add_argument("--barrier", default=None,
                      help="sweep: start timing together with --parties "
                      "workers given the same path")
  parser.add_argument("--parties", type=int, default=2)
  parser.add_argument("--problem", default=None)
  parser.add_argument("--out", default=None)
  parser.add_argument("--rule", default="bp_oja")
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--core", type=int, default=None,
                      help="pin this process to one CPU")
  args = parser.parse_args(argv)
  if args.core is not None:  # Before any thread pool starts.
    os.sched_setaffinity(0, {args.core})
  result = {"mode": args.mode, **MODES[args.mode](args)}
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()

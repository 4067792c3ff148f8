r"""One benchmark measurement in its own process; prints one JSON line.

``benchmarks/bench.py`` runs each implementation in a fresh process so that
its peak resident set is its own and environment settings (glibc malloc
tuning, thread counts, ``XLA_FLAGS``) apply to it alone:

  python -m benchmarks.worker prep --arch=784-256-256-10 --samples=20000 \
      --problem=/tmp/p.npz
  python -m benchmarks.worker ojax_scan --problem=/tmp/p.npz --rule=bp_oja
  python -m benchmarks.worker ojax_vmap --problem=/tmp/p.npz --seeds=16
  python -m benchmarks.worker jax_pyloop --problem=/tmp/p.npz
  python -m benchmarks.worker torch --problem=/tmp/p.npz --threads=1
  python -m benchmarks.worker equivalence --problem=/tmp/p.npz --samples=100

Each timed repetition trains from the same initial state on the same samples,
so repetitions do identical work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from benchmarks import common


_CPU_TIMES: list[float] = []


def _timed(fn: Callable[[], Any], reps: int) -> list[float]:
  """Wall seconds of ``reps`` calls of ``fn``; CPU seconds go to _CPU_TIMES."""
  times = []
  for _ in range(reps):
    cpu, tic = time.process_time(), time.perf_counter()
    fn()
    times.append(time.perf_counter() - tic)
    _CPU_TIMES.append(time.process_time() - cpu)
  return times


def _result(times: list[float], samples: int, **extra: Any) -> dict[str, Any]:
  return {"times_s": times, "cpu_s": list(_CPU_TIMES), "samples": samples,
          "samples_per_s": samples / statistics.median(times),
          "rss_mb": common.peak_rss_mb(), **extra}


def _jax_arrays(problem: common.Problem):
  import jax.numpy as jnp
  return jnp.asarray(problem.x_NxD), jnp.asarray(problem.y_N)


def _check_init(problem: common.Problem, params: Any) -> None:
  got = common.kernels_of(params)
  if common.max_abs_diff(got, problem.kernels) != 0.0:
    raise RuntimeError("worker: ojax's initial kernels differ from the "
                       "problem file; prep and worker disagree on the seed.")


def _finite(kernels) -> bool:
  return bool(all(np.all(np.isfinite(k)) for k in kernels))


def prep(args: argparse.Namespace) -> dict[str, Any]:
  problem = common.prepare(args.arch, args.samples)
  problem.save(args.problem)
  return {"arch": args.arch, "samples": int(len(problem.order_T))}


def _one_seed(args: argparse.Namespace):
  """The problem, its sample count, model, optimizer, checked state, data."""
  problem = common.Problem.load(args.problem)
  model, tx = common.make_model(problem.arch), common.make_tx(args.rule)
  state = common.init_state(problem.arch, args.rule)
  _check_init(problem, state.params)
  x, y = _jax_arrays(problem)
  return problem, int(len(problem.order_T)), model, tx, state, x, y


def ojax_scan(args: argparse.Namespace) -> dict[str, Any]:
  """ojax's compiled ``lax.scan`` loop for one seed (no vmap)."""
  import jax
  from benchmarks import jax_loops
  _, samples, model, tx, state, x, y = _one_seed(args)
  fn, compile_s = jax_loops.compile_scan(model, tx, state, x, y, samples)
  start = jax.numpy.asarray(0, jax.numpy.int32)
  out = []
  times = _timed(lambda: out.append(jax.block_until_ready(
      fn(state, start, x, y))), args.reps)
  kernels = common.kernels_of(out[-1][0].params)
  return _result(times, samples, compile_s=compile_s,
                 finite=_finite(kernels),
                 online_accuracy=float(out[-1][1]["online_accuracy"]))


def ojax_vmap(args: argparse.Namespace) -> dict[str, Any]:
  """``vmap`` of the compiled loop over ``--seeds`` seeds (``run``'s code)."""
  import jax
  from benchmarks import jax_loops
  problem = common.Problem.load(args.problem)
  steps = max(1, int(len(problem.order_T)) // args.seeds)
  input_dim, _ = common.parse_arch(problem.arch)
  model, tx = common.make_model(problem.arch), common.make_tx(args.rule)
  states = jax_loops.init_states(model, tx, args.seeds, input_dim,
                                 common.SEED)
  x, y = _jax_arrays(problem)
  fn, compile_s = jax_loops.compile_vmapped_scan(model, tx, states, x, y,
                                                 steps)
  start = jax.numpy.asarray(0, jax.numpy.int32)
  out = []
  times = _timed(lambda: out.append(jax.block_until_ready(
      fn(states, start, x, y))), args.reps)
  finite = bool(jax.numpy.all(jax.numpy.stack([
      jax.numpy.all(jax.numpy.isfinite(k))
      for k in jax.tree_util.tree_leaves(out[-1][0].params)])))
  return _result(times, steps * args.seeds, compile_s=compile_s,
                 seeds=args.seeds, steps_per_seed=steps, finite=finite)


def jax_pyloop(args: argparse.Namespace) -> dict[str, Any]:
  """One jitted step per sample, called from a Python loop."""
  from benchmarks import jax_loops
  problem, samples, model, tx, state, x, y = _one_seed(args)
  step = jax_loops.make_python_step(model, tx)
  tic = time.perf_counter()
  jax_loops.python_loop(step, jax_loops.copy_tree(state.params),
                        jax_loops.copy_tree(state.opt_state),
                        state.model_state, x, y, problem.order_T[:1])
  compile_s = time.perf_counter() - tic
  out = []

  def once():
    out.append(jax_loops.python_loop(
        step, jax_loops.copy_tree(state.params),
        jax_loops.copy_tree(state.opt_state), state.model_state, x, y,
        problem.order_T))

  times = _timed(once, args.reps)
  return _result(times, samples, compile_s=compile_s,
                 finite=_finite(common.kernels_of(out[-1][0])))


def torch_loop(args: argparse.Namespace) -> dict[str, Any]:
  """The reference per-sample PyTorch loop (``benchmarks/torch_ref.py``)."""
  import torch
  from benchmarks import torch_ref
  torch.set_num_threads(args.threads)
  problem = common.Problem.load(args.problem)
  order = problem.order_T.tolist()
  if args.limit:
    order = order[:args.limit]
  samples = len(order)
  x = torch.from_numpy(problem.x_NxD)
  oja_lr = common.OJA_LR if args.rule == "bp_oja" else 0.0

  def once(steps):
    weights = torch_ref.weights_from_kernels(problem.kernels)
    torch_ref.train(weights, x, problem.y_N, steps, lr=common.LR,
                    oja_lr=oja_lr, beta=common.BETA)
    return weights

  once(order[:min(500, samples)])  # Warm up allocator, caches, BLAS.
  out = []
  times = _timed(lambda: out.append(once(order)), args.reps)
  return _result(times, samples, threads=args.threads,
                 finite=_finite(torch_ref.kernels_from_weights(out[-1])),
                 torch_version=torch.__version__,
                 malloc_env={k: v for k, v in os.environ.items()
                             if k.startswith("MALLOC_")})


def equivalence(args: argparse.Namespace) -> dict[str, Any]:
  """Weights after ``--samples`` samples from one init: ojax, Python-loop JAX
  step and PyTorch, for BP+Oja and for plain SGD."""
  import jax
  import torch
  from benchmarks import jax_loops
  from benchmarks import torch_ref
  torch.set_num_threads(1)
  problem = common.Problem.load(args.problem)
  order = problem.order_T[:args.samples]
  x, y = _jax_arrays(problem)
  start = jax.numpy.asarray(0, jax.numpy.int32)
  model = common.make_model(problem.arch)
  result: dict[str, Any] = {"samples": int(len(order))}
  finals = {}
  for rule in ("bp_oja", "sgd"):
    tx = common.make_tx(rule)
    state = common.init_state(problem.arch, rule)
    _check_init(problem, state.params)
    fn, _ = jax_loops.compile_scan(model, tx, state, x, y, len(order))
    scan = common.kernels_of(fn(state, start, x, y)[0].params)
    params, _ = jax_loops.python_loop(
        jax_loops.make_python_step(model, tx),
        jax_loops.copy_tree(state.params), jax_loops.copy_tree(state.opt_state),
        state.model_state, x, y, order)
    pyloop = common.kernels_of(params)
    weights = torch_ref.weights_from_kernels(problem.kernels)
    torch_ref.train(weights, torch.from_numpy(problem.x_NxD), problem.y_N,
                    order.tolist(), lr=common.LR,
                    oja_lr=common.OJA_LR if rule == "bp_oja" else 0.0,
                    beta=common.BETA)
    ref = torch_ref.kernels_from_weights(weights)
    finals[rule] = scan
    result[rule] = {
        "ojax_vs_torch": common.max_abs_diff(scan, ref),
        "pyloop_vs_torch": common.max_abs_diff(pyloop, ref),
        "ojax_vs_pyloop": common.max_abs_diff(scan, pyloop),
        "change_from_init": common.max_abs_diff(scan, problem.kernels),
    }
  # How much the Oja term moves the weights: the check's resolving power.
  result["oja_term_effect"] = common.max_abs_diff(finals["bp_oja"],
                                                  finals["sgd"])
  result["max_diff"] = max(v for r in ("bp_oja", "sgd")
                           for k, v in result[r].items() if "_vs_" in k)
  return result


MODES = {"prep": prep, "ojax_scan": ojax_scan, "ojax_vmap": ojax_vmap,
         "jax_pyloop": jax_pyloop, "torch": torch_loop,
         "equivalence": equivalence}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("mode", choices=sorted(MODES))
  parser.add_argument("--problem", required=True,
                      help=".npz written by the prep mode")
  parser.add_argument("--arch", default=common.ARCHS[0])
  parser.add_argument("--samples", type=int, default=20000)
  parser.add_argument("--rule", default="bp_oja", choices=("bp_oja", "sgd"))
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--seeds", type=int, default=1)
  parser.add_argument("--threads", type=int, default=1)
  parser.add_argument("--limit", type=int, default=0,
                      help="torch: train on only the first LIMIT samples")
  parser.add_argument("--proposed", action="store_true",
                      help="use benchmarks/proposed.py's oja_term")
  args = parser.parse_args(argv)
  if args.proposed:
    from benchmarks import proposed
    proposed.patch_oja_term()
  result = {"mode": args.mode, **MODES[args.mode](args)}
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()

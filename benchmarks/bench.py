r"""Online (batch-1) training speed: ojax vs PyTorch, sweeps, the floor.

  make bench                      # full run, both networks (~15 minutes)
  make bench ARGS="--quick"       # 784-256-256-10 only, < 2 minutes
  python benchmarks/bench.py --markdown=/tmp/tables.md --json=/tmp/all.json

For each network (784-256-256-10 and the reference 784-170-130-100-70-10;
softplus beta 10, no biases, softmax output, SGD lr 0.05 + Oja 0.01 on every
layer, the embedded MNIST digits) and each of ``--rounds`` interleaved rounds,
every measurement runs in a fresh process (``benchmarks/worker.py``):

* single stream, one seed, pinned to one core, single-threaded: ojax's
  ``train.run`` with the fused step (what the experiments use), with the
  generic step, plain SGD (fused and generic); PyTorch's per-sample loop
  (``benchmarks/torch_ref.py``) with 1 thread and tuned glibc malloc; and
  the fused loop unpinned with XLA's default threading;
* the floor: one read pass plus one read-write pass over a working set the
  size of the weights (the least any BP + Oja step must stream);
* whole-machine sweeps over ``--points`` grid points of the fused loop:
  one process running all points in one ``train.run`` (XLA threads; the
  loop vmaps them, or on a single CPU device runs them one after another),
  one pinned single-threaded process per core (its points in one
  ``train.run``, or one ``train.run`` per point), or one process with one
  XLA host device per core (points sharded with ``ojax.train.shard``);
* if JAX sees a GPU: 1, 64 and 1024 vmapped seeds, aggregate samples/s and
  peak memory.

Rates are samples per wall-clock second and per CPU-second of the process
(all its threads); figures are medians over rounds, ratios medians of the
per-round ratios. Before timing, ojax (fused and generic) and PyTorch must
reach the same weights after 100 samples. The last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("784-256-256-10", "784-170-130-100-70-10")
TARGETS = {"784-256-256-10": 3.5, "784-170-130-100-70-10": 5.0}
SWEEP_TARGET = 1.8
TOLERANCE = 1e-4
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "8000000",
          "MALLOC_TRIM_THRESHOLD_": "100000000",
          "MALLOC_TOP_PAD_": "67108864"}
SINGLE = "--xla_cpu_multi_thread_eigen=false"
_CACHE: list[str] = []  # This run's compilation cache directory.
ROWS = {  # key: label.
    "torch": "PyTorch per-sample loop, 1 thread, tuned malloc",
    "generic_bp_oja": "ojax BP+Oja, generic step",
    "fused_bp_oja": "ojax BP+Oja, fused step (what experiments use)",
    "generic_sgd": "ojax plain SGD, generic step",
    "fused_sgd": "ojax plain SGD, fused step",
    "fused_threads": "ojax BP+Oja fused, unpinned, XLA default threads",
}
SWEEPS = {
    "one_process": "1 process, all points in one `train.run`, XLA threads",
    "workers_one_run": "1 pinned single-threaded process per core, its "
                       "points in one `train.run`",
    "workers_per_point": "1 pinned single-threaded process per core, one "
                         "`train.run` per point",
    "host_devices": "1 process, 1 XLA host device per core, points sharded",
}


def _env(xla: str = "", cpu_only: bool = True, **extra: str) -> dict[str, str]:
  """Our environment without malloc tuning, plus XLA flags and ``extra``."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  env["PYTHONPATH"] = os.pathsep.join(
      [_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla}".strip()
  env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", **extra)
  if cpu_only:
    env["JAX_PLATFORMS"] = "cpu"
  if _CACHE:  # Processes that compile the same program load it instead.
    env.update(JAX_COMPILATION_CACHE_DIR=_CACHE[0],
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def _start(mode: str, args: list[str], env: dict[str, str]):
  print(f"bench: {time.strftime('%H:%M:%S')} {mode} {' '.join(args)}",
        file=sys.stderr)
  return subprocess.Popen(
      [sys.executable, "-m", "benchmarks.worker", mode, *args], cwd=_ROOT,
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc) -> dict[str, Any]:
  out, err = proc.communicate()
  lines = [l for l in out.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"worker failed ({proc.returncode}): {proc.args}\n"
                       f"{err[-3000:]}")
  return json.loads(lines[-1])


def worker(mode: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
  return _finish(_start(mode, args, env))


def workers(jobs: list[tuple[str, list[str], dict[str, str]]]) -> list[Any]:
  """Runs several workers at the same time."""
  return [_finish(p) for p in [_start(*job) for job in jobs]]


def one_round(arch: str, problem: str, cores: list[int], args) -> dict:
  """Every measurement of one network once; returns rates per row."""
  a = [f"--arch={arch}", f"--chunks={args.chunks}"]
  pin = [f"--core={cores[-1]}"]
  res = worker("jax", a + pin + [f"--samples={args.samples}", "--floor",
                                 "--rows=generic_bp_oja,fused_bp_oja,"
                                 "generic_sgd,fused_sgd"], _env(SINGLE))
  out = {"floor": res.pop("floor")}
  out.update({k: v for k, v in res.items() if k != "mode"})
  out["fused_threads"] = worker(
      "jax", a + [f"--samples={args.samples}", "--rows=fused_bp_oja"],
      _env())["fused_bp_oja"]
  if problem:
    out["torch"] = worker("torch", pin + [f"--problem={problem}",
                                          f"--chunks={args.chunks}",
                                          f"--samples={args.samples}"],
                          _env(**MALLOC))
  if args.points:
    g, half = args.points, args.points // 2
    sweep = [f"--samples={args.sweep_samples}", "--chunks=1"]
    out["one_process"] = worker("sweep", a + sweep + [f"--points={g}"],
                                _env())
    if len(cores) >= 2:
      # One pinned worker per core; they start timing together (a barrier).
      for key, opts in (("workers_one_run", sweep),
                        ("workers_per_point", sweep + ["--group=1"])):
        sync = os.path.join(os.path.dirname(_CACHE[0]),
                            f"barrier_{key}_{time.time_ns()}")
        pair = workers([("sweep", a + opts + [
            f"--points={half}", f"--core={c}", f"--barrier={sync}"],
                         _env(SINGLE)) for c in cores[:2]])
        out[key] = _combine(pair)
      out["host_devices"] = worker(
          "sweep", a + sweep + [f"--points={g}"],
          _env(f"{SINGLE} --xla_force_host_platform_device_count="
               f"{len(cores)}"))
  return out


def _combine(pair: list[dict[str, Any]]) -> dict[str, Any]:
  """Two workers that ran at once: their rates add up. ``overlap`` is the
  share of their timed spans that coincided."""
  start, end = max(p["start"] for p in pair), min(p["end"] for p in pair)
  span = max(p["end"] for p in pair) - min(p["start"] for p in pair)
  rate = sum(p["samples_per_s"] for p in pair)
  cores = sum(p["cores_used"] for p in pair)
  return {"samples_per_s": rate, "cores_used": cores,
          "samples_per_cpu_s": rate / cores,
          "overlap": max(0.0, end - start) / span if span > 0 else 0.0}


def _median(xs: list[float]) -> Optional[float]:
  xs = [x for x in xs if x is not None]
  return float(statistics.median(xs)) if xs else None


def summarize(arch: str, rounds: list[dict], equivalence: dict) -> dict:
  """Medians over rounds; ratios as medians of per-round ratios."""
  def rate(r, k, field="samples_per_s"):
    return r[k][field] if k in r else None

  floor = [1e6 / (r["floor"]["read_us"] + r["floor"]["rw_us"])
           for r in rounds]
  fig: dict[str, Any] = {"arch": arch, "rows": {}, "sweeps": {},
                         "equivalence": equivalence,
                         "floor_samples_per_s": _median(floor),
                         "floor": {k: _median([r["floor"][k] for r in rounds])
                                   for k in rounds[0]["floor"]}}
  for key in ROWS:
    if key not in rounds[0]:
      continue
    per_round = [rate(r, key) for r in rounds]
    fig["rows"][key] = {
        "samples_per_s": _median(per_round), "per_round": per_round,
        "samples_per_cpu_s": _median([rate(r, key, "samples_per_cpu_s")
                                      for r in rounds]),
        "over_torch": _median([rate(r, key) / rate(r, "torch")
                               for r in rounds]) if "torch" in rounds[0]
                      else None,
        "cpu_over_torch": _median([
            rate(r, key, "samples_per_cpu_s")
            / rate(r, "torch", "samples_per_cpu_s") for r in rounds])
                          if "torch" in rounds[0] else None,
        "x_floor": _median([f / rate(r, key) for r, f in zip(rounds, floor)]),
    }
  for key in SWEEPS:
    if key not in rounds[0]:
      continue
    fig["sweeps"][key] = {
        "samples_per_s": _median([rate(r, key) for r in rounds]),
        "per_round": [rate(r, key) for r in rounds],
        "samples_per_cpu_s": _median([rate(r, key, "samples_per_cpu_s")
                                      for r in rounds]),
        "over_single": _median([rate(r, key) / rate(r, "fused_bp_oja")
                                for r in rounds]),
        "cpu_over_single": _median([
            rate(r, key, "samples_per_cpu_s")
            / rate(r, "fused_bp_oja", "samples_per_cpu_s") for r in rounds]),
        "cores_used": _median([r[key]["cores_used"] for r in rounds]),
        "overlap": _median([r[key].get("overlap") for r in rounds]),
    }
  return fig


def _f(x: Optional[float], d: int = 0) -> str:
  return "-" if x is None else f"{x:,.{d}f}"


def markdown(figs: list[dict], meta: dict) -> str:
  out = []
  for fig in figs:
    fl = fig["floor"]
    out.append(f"### {fig['arch']} ({fl['weights_mib']:.2f} MiB of weights)\n")
    out.append("| single stream, 1 seed | samples/s | per round | per "
               "CPU-s | x PyTorch | x floor |")
    out.append("|---|---:|---|---:|---:|---:|")
    for key, row in fig["rows"].items():
      out.append(f"| {ROWS[key]} | {_f(row['samples_per_s'])} | "
                 + ", ".join(_f(x) for x in row["per_round"])
                 + f" | {_f(row['samples_per_cpu_s'])} | "
                 f"{_f(row['over_torch'], 2)} | {_f(row['x_floor'], 2)} |")
    out.append(f"| floor: 1 read + 1 read-write pass over the weights "
               f"({fl['read_us']:.1f} + {fl['rw_us']:.1f} us) | "
               f"{_f(fig['floor_samples_per_s'])} | | | | 1.00 |")
    if fig["sweeps"]:
      out.append(f"\n| sweep, {meta['points']} grid points, fused step | "
                 "aggregate samples/s | per round | cores used | per CPU-s | "
                 "x single stream | x single, per CPU-s | workers' timed "
                 "spans overlap |")
      out.append("|---|---:|---|---:|---:|---:|---:|---:|")
      for key, s in fig["sweeps"].items():
        out.append(f"| {SWEEPS[key]} | {_f(s['samples_per_s'])} | "
                   + ", ".join(_f(x) for x in s["per_round"]) + " | "
                   f"{_f(s['cores_used'], 2)} | {_f(s['samples_per_cpu_s'])} | "
                   f"{_f(s['over_single'], 2)} | "
                   f"{_f(s['cpu_over_single'], 2)} | "
                   f"{_f(s['overlap'] and 100 * s['overlap'])}{'%' * bool(s['overlap'])} |")
    eq = fig["equivalence"]
    if eq:
      out.append(
          f"\nSame weights after {eq['samples']} samples from one init and "
          f"sample order (max |difference|): BP+Oja fused vs PyTorch "
          f"{eq['bp_oja_fused_vs_torch']:.1e}, generic vs PyTorch "
          f"{eq['bp_oja_generic_vs_torch']:.1e}; SGD "
          f"{eq['sgd_fused_vs_torch']:.1e} / {eq['sgd_generic_vs_torch']:.1e};"
          f" the Oja term moves them by {eq['oja_term_effect']:.2f}.")
    out.append(f"Floor probe: read {fl['jax_read_us']:.1f} us (XLA) / "
               f"{fl['numpy_read_us']:.1f} us (NumPy), read-write "
               f"{fl['jax_rw_us']:.1f} / {fl['numpy_rw_us']:.1f} us.\n")
  if meta.get("gpu") and "skipped" not in meta["gpu"]:
    g = meta["gpu"]
    out.append(f"GPU ({g['device']}), 784-256-256-10 fused loop:\n")
    out.append("| vmapped seeds | aggregate samples/s | peak memory MiB |")
    out.append("|---:|---:|---:|")
    for n in ("1", "64", "1024"):
      peak = g[n]["peak_bytes"]
      out.append(f"| {n} | {_f(g[n]['samples_per_s'])} | "
                 f"{_f(peak / 2**20 if peak else None)} |")
  out.append(f"\n`{meta['command']}` on {meta['cpu']} ({meta['cpus']} CPUs), "
             f"{meta['date']}; load average {meta['load_start']} at start, "
             f"{meta['load_end']} at end; "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
             + f"; XLA_FLAGS={meta['xla_flags']!r}.")
  return "\n".join(out) + "\n"


def _meta(argv) -> dict[str, Any]:
  versions = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "optax", "flax", "torch", "numpy"):
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = "-"
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f
                 if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"cpu": cpu, "cpus": len(os.sched_getaffinity(0)),
          "versions": versions, "load_start": round(os.getloadavg()[0], 2),
          "date": datetime.datetime.now().isoformat(timespec="minutes"),
          "command": " ".join(["benchmarks/bench.py", *argv]),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true",
                      help="784-256-256-10, 1 round, fewer samples, 8 points")
  parser.add_argument("--archs", default=",".join(ARCHS))
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--samples", type=int, default=20000,
                      help="samples per timed chunk, single stream")
  parser.add_argument("--points", type=int, default=16,
                      help="sweep grid points (0: no sweep rows)")
  parser.add_argument("--sweep_samples", type=int, default=10000,
                      help="samples per point per sweep chunk (one timed)")
  parser.add_argument("--chunks", type=int, default=2,
                      help="timed chunks per process (after one to compile)")
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--markdown", default=None, help="write tables here")
  parser.add_argument("--json", default=None, help="write all figures here")
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(argv)
  if args.quick:
    args.archs, args.rounds, args.samples, args.chunks = ARCHS[0], 1, 5000, 1
    args.points, args.sweep_samples = 8, 2500
  meta = _meta(argv)
  meta["points"] = args.points
  has_torch = not args.no_torch
  try:
    importlib.metadata.version("torch")
  except importlib.metadata.PackageNotFoundError:
    print("bench: torch is not installed (`make bench` installs the bench "
          "extra: torch==2.13.0); no PyTorch rows.", file=sys.stderr)
    has_torch = False
  cores = sorted(os.sched_getaffinity(0))
  figs = []
  with tempfile.TemporaryDirectory(prefix="ojax_bench_") as tmp:
    _CACHE[:] = [os.path.join(tmp, "jax_cache")]
    for arch in args.archs.split(","):
      problem, equivalence = "", {}
      if has_torch:
        problem = os.path.join(tmp, f"{arch}.npz")
        worker("prep", [f"--arch={arch}", f"--samples={args.samples}",
                        f"--out={problem}"], _env())
        equivalence = worker("equivalence", [f"--arch={arch}",
                                             f"--problem={problem}",
                                             "--samples=100"], _env())
        if not equivalence["max_diff"] <= TOLERANCE:
          raise SystemExit(f"bench: {arch}: ojax and PyTorch disagree after "
                           f"100 samples: {equivalence}")
      rounds = []
      for r in range(args.rounds):
        print(f"bench: {arch} round {r + 1}/{args.rounds}", file=sys.stderr)
        rounds.append(one_round(arch, problem, cores, args))
      figs.append(summarize(arch, rounds, equivalence))
    meta["gpu"] = worker("gpu", ["--samples=2000"], _env(cpu_only=False))
  meta["load_end"] = round(os.getloadavg()[0], 2)
  text = markdown(figs, meta)
  print(text)
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(text)
  result = {**_keys(figs[0]), "other_archs": {f["arch"]: _keys(f)
                                              for f in figs[1:]},
            "targets": _targets(figs), "meta": meta}
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"figures": figs, **result}, f, indent=1)
  print(json.dumps(result))
  return result


def _keys(fig: dict) -> dict[str, Any]:
  rows, sweeps = fig["rows"], fig["sweeps"]
  get = lambda k, f="samples_per_s": rows[k][f] if k in rows else None
  best = max(sweeps, key=lambda k: sweeps[k]["samples_per_s"]) if sweeps else (
      None)
  return {
      "arch": fig["arch"],
      "ojax_bp_oja_samples_per_s": get("fused_bp_oja"),
      "ojax_sgd_samples_per_s": get("fused_sgd"),
      "torch_bp_oja_samples_per_s": get("torch"),
      "ojax_bp_oja_generic_samples_per_s": get("generic_bp_oja"),
      "ojax_sgd_generic_samples_per_s": get("generic_sgd"),
      "ojax_bp_oja_threads_samples_per_s": get("fused_threads"),
      "ojax_bp_oja_samples_per_cpu_s": get("fused_bp_oja",
                                           "samples_per_cpu_s"),
      "fused_over_torch": get("fused_bp_oja", "over_torch"),
      "fused_over_torch_per_cpu_s": get("fused_bp_oja", "cpu_over_torch"),
      "generic_over_torch": get("generic_bp_oja", "over_torch"),
      "floor_samples_per_s": fig["floor_samples_per_s"],
      "fused_x_floor": get("fused_bp_oja", "x_floor"),
      "sweep_samples_per_s": {k: v["samples_per_s"] for k, v in
                              sweeps.items()},
      "sweep_best": best,
      "sweep_best_over_single": sweeps[best]["over_single"] if best else None,
      "sweep_cpu_over_single": {k: v["cpu_over_single"] for k, v in
                                sweeps.items()},
      "sweep_cores_used": {k: v["cores_used"] for k, v in sweeps.items()},
      "equivalence_max_diff": fig["equivalence"].get("max_diff"),
  }


def _targets(figs: list[dict]) -> dict[str, Any]:
  out = {}
  for fig in figs:
    k = _keys(fig)
    if fig["arch"] in TARGETS and k["fused_over_torch"] is not None:
      out[f"fused_over_torch_{fig['arch']}"] = {
          "target": TARGETS[fig["arch"]], "measured": k["fused_over_torch"],
          "met": k["fused_over_torch"] >= TARGETS[fig["arch"]]}
    if k["sweep_best_over_single"] is not None:
      out[f"sweep_over_single_{fig['arch']}"] = {
          "target": SWEEP_TARGET, "measured": k["sweep_best_over_single"],
          "best": k["sweep_best"],
          "met": k["sweep_best_over_single"] >= SWEEP_TARGET}
  return out


if __name__ == "__main__":
  main()

r"""Online (batch-1) training speed: ojax against a per-sample PyTorch loop.

  make bench                    # full run, both networks (several minutes)
  make bench ARGS="--quick"     # smoke run, < 2 minutes
  python benchmarks/bench.py --markdown=/tmp/table.md

For each network (784-256-256-10 and the reference 784-170-130-100-70-10,
softplus beta=10, no biases, batch 1) it measures, each in a fresh process:

1. ojax BP+Oja: ``jit(ojax.train.train_steps)``, the compiled ``lax.scan``
   loop over samples, one seed; compile time apart;
2. ojax plain SGD in the same loop (the Oja overhead is their ratio);
3. rows 1-2 with the speed-ups of ``benchmarks/proposed.py`` ("tuned");
4. a jitted per-sample JAX step called from a Python loop;
5. ojax BP+Oja with S seeds under ``vmap`` (``ojax.train.run``'s code),
   aggregate samples/s; all S seeds share the same total of sample updates;
6. the reference-formulation PyTorch loop (``benchmarks/torch_ref.py``) at
   its best thread count (1 or 2, chosen by a short probe of each with tuned
   malloc), with tuned glibc malloc settings and with the defaults;

plus the peak resident set of each process, and a check that ojax, the
Python-loop step and PyTorch reach the same weights after 100 samples from the
same initialization and sample order. Data: the embedded 4,000 MNIST training
digits (``ojax.data``), repeated in per-epoch permutations.

Every variant runs once per round; rounds are interleaved so that a change in
background load hits all variants alike. Figures are medians over rounds of
the median over repetitions inside a process; ratios are medians of the
per-round ratios. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common
from benchmarks import proposed

MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": "8000000",
                "MALLOC_TRIM_THRESHOLD_": "100000000",
                "MALLOC_TOP_PAD_": "67108864"}
TOLERANCE = 1e-4
TARGETS = {"ojax_over_torch": 5.0, "oja_overhead": 1.3, "vmap16_speedup": 6.0}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of the table: a worker invocation and its environment."""

  key: str
  label: str
  mode: str
  args: tuple[str, ...] = ()
  env: tuple[tuple[str, str], ...] = ()
  tuned_malloc: bool = False


def variants(seeds: list[int], torch_threads: list[int], torch_default: bool,
             tuned: bool) -> list[Variant]:
  """The rows to measure for one network."""
  out = [
      Variant("ojax_bp_oja", "ojax BP+Oja, compiled lax.scan, 1 seed",
              "ojax_scan", ("--rule=bp_oja",)),
      Variant("ojax_sgd", "ojax plain SGD, compiled lax.scan, 1 seed",
              "ojax_scan", ("--rule=sgd",)),
  ]
  if tuned:
    flags = (("XLA_FLAGS", proposed.TUNED_XLA_FLAGS),)
    out += [
        Variant("ojax_tuned_bp_oja", "ojax BP+Oja, lax.scan, tuned (proposed)",
                "ojax_scan", ("--rule=bp_oja", "--proposed"), flags),
        Variant("ojax_tuned_sgd", "ojax plain SGD, lax.scan, tuned (proposed)",
                "ojax_scan", ("--rule=sgd", "--proposed"), flags),
    ]
  if tuned and 16 in seeds:
    out.append(Variant(
        "ojax_tuned_vmap16_bp_oja",
        "ojax BP+Oja, vmap over 16 seeds, tuned (proposed)", "ojax_vmap",
        ("--rule=bp_oja", "--seeds=16", "--proposed"),
        (("XLA_FLAGS", proposed.TUNED_XLA_FLAGS),)))
  out.append(Variant("jax_pyloop_bp_oja",
                     "JAX BP+Oja, jitted step called from a Python loop",
                     "jax_pyloop", ("--rule=bp_oja",)))
  for s in seeds:
    out.append(Variant(f"ojax_vmap{s}_bp_oja",
                       f"ojax BP+Oja, vmap over {s} seeds (aggregate)",
                       "ojax_vmap", ("--rule=bp_oja", f"--seeds={s}")))
  for t in torch_threads:
    out.append(Variant(
        f"torch_t{t}_bp_oja",
        f"PyTorch per-sample loop, {t} thread{'s' * (t > 1)}, tuned malloc",
        "torch", ("--rule=bp_oja", f"--threads={t}"),
        tuple(MALLOC_TUNED.items()), tuned_malloc=True))
    if torch_default:
      out.append(Variant(
          f"torch_t{t}_default_malloc_bp_oja",
          f"PyTorch per-sample loop, {t} thread{'s' * (t > 1)}, default malloc",
          "torch", ("--rule=bp_oja", f"--threads={t}")))
  return out


def _env(variant: Variant) -> dict[str, str]:
  """The worker's environment: ours without malloc tuning, plus the row's."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  env["PYTHONPATH"] = os.pathsep.join(
      [_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  if variant.mode == "torch":
    threads = next(a.split("=")[1] for a in variant.args
                   if a.startswith("--threads="))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
  for key, value in variant.env:
    if key == "XLA_FLAGS":  # Added to the caller's flags, not instead.
      value = f"{env.get(key, '')} {value}".strip()
    env[key] = value
  return env


def run_worker(mode: str, args: list[str], env: Optional[dict[str, str]] = None
               ) -> dict[str, Any]:
  """Runs ``python -m benchmarks.worker MODE ARGS``; returns its JSON.

  The worker reports its own peak resident set (``VmHWM`` of
  /proc/self/status), so each process's figure is its own.
  """
  cmd = [sys.executable, "-m", "benchmarks.worker", mode, *args]
  if env is None:
    env = _env(Variant("", "", mode))
  proc = subprocess.Popen(cmd, cwd=_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  stdout, stderr = proc.communicate()
  if proc.returncode != 0:
    raise RuntimeError(f"worker failed ({proc.returncode}): "
                       f"{shlex.join(cmd)}\n{stderr[-3000:]}")
  lines = [l for l in stdout.splitlines() if l.startswith("{")]
  if not lines:
    raise RuntimeError(f"worker printed no JSON: {shlex.join(cmd)}\n"
                       f"{stdout[-2000:]}\n{stderr[-2000:]}")
  return json.loads(lines[-1])


def _versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "torch", "numpy"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


def _loadavg() -> Optional[float]:
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def _median(values: list[float]) -> float:
  return float(statistics.median(values))


def _round_ratios(num: list[float], den: list[float]) -> float:
  """Median over rounds of per-round ratios ``num[r] / den[r]``."""
  return _median([a / b for a, b in zip(num, den) if b > 0])


def summarize(arch: str, rows: dict[str, list[dict[str, Any]]],
              labels: dict[str, str], equivalence: dict[str, Any],
              torch_threads: list[int]) -> dict[str, Any]:
  """Medians, ratios and the torch thread count that won, for one network."""
  rates = {k: [r["samples_per_s"] for r in v] for k, v in rows.items()}
  fig: dict[str, Any] = {"arch": arch, "rows": {}}
  for key, results in rows.items():
    fig["rows"][key] = {
        "label": labels[key],
        "samples_per_s": _median(rates[key]),
        "per_round": rates[key],
        # Samples per second of CPU time the process got (all its threads):
        # less sensitive to other processes sharing the cores than wall time.
        "samples_per_cpu_s": _median([
            r["samples"] / statistics.median(r["cpu_s"]) for r in results
            if r.get("cpu_s")] or [float("nan")]),
        "compile_s": (_median([r["compile_s"] for r in results])
                      if "compile_s" in results[0] else None),
        "rss_mb": max(r["rss_mb"] for r in results),
        "samples": results[0]["samples"],
        "finite": all(r.get("finite", True) for r in results),
    }
  rounds = len(next(iter(rates.values())))

  def best_torch(suffix: str) -> tuple[list[float], Optional[int]]:
    keys = [f"torch_t{t}{suffix}_bp_oja" for t in torch_threads
            if f"torch_t{t}{suffix}_bp_oja" in rates]
    if not keys:
      return [], None
    per_round = [max(rates[k][i] for k in keys) for i in range(rounds)]
    best = max(keys, key=lambda k: _median(rates[k]))
    return per_round, int(best.split("_")[1][1:])

  torch_best, threads = best_torch("")
  torch_default, default_threads = best_torch("_default_malloc")
  fig["torch_best_threads"] = threads
  fig["torch_best_samples_per_s"] = _median(torch_best) if torch_best else None
  fig["torch_default_malloc_samples_per_s"] = (
      _median(torch_default) if torch_default else None)
  fig["torch_default_malloc_threads"] = default_threads
  ratios: dict[str, float] = {}
  if torch_best:
    for key in ("ojax_bp_oja", "ojax_tuned_bp_oja", "jax_pyloop_bp_oja"):
      if key in rates:
        ratios[f"{key.removesuffix('_bp_oja')}_over_torch"] = _round_ratios(
            rates[key], torch_best)
  for prefix in ("ojax", "ojax_tuned"):
    if f"{prefix}_sgd" in rates:
      name = "oja_overhead" + prefix.removeprefix("ojax")
      ratios[name] = _round_ratios(rates[f"{prefix}_sgd"],
                                   rates[f"{prefix}_bp_oja"])
  vmaps = sorted(int(k[len("ojax_vmap"):].split("_")[0]) for k in rates
                 if k.startswith("ojax_vmap"))
  if "ojax_tuned_vmap16_bp_oja" in rates and "ojax_tuned_bp_oja" in rates:
    ratios["vmap16_tuned_over_scan1_tuned"] = _round_ratios(
        rates["ojax_tuned_vmap16_bp_oja"], rates["ojax_tuned_bp_oja"])
  if 1 in vmaps:
    for s in vmaps:
      ratios[f"vmap{s}_speedup"] = _round_ratios(
          rates[f"ojax_vmap{s}_bp_oja"], rates["ojax_vmap1_bp_oja"])
    if "ojax_bp_oja" in rates and 16 in vmaps:
      ratios["vmap16_over_scan1"] = _round_ratios(
          rates["ojax_vmap16_bp_oja"], rates["ojax_bp_oja"])
  fig["ratios"] = ratios
  fig["equivalence"] = equivalence
  return fig


def _fmt(x: Optional[float], digits: int = 0) -> str:
  if x is None:
    return "-"
  return f"{x:,.{digits}f}"


def markdown(figs: list[dict[str, Any]], meta: dict[str, Any]) -> str:
  """The results as Markdown tables, one per network."""
  out = []
  for fig in figs:
    torch_best = fig["torch_best_samples_per_s"]
    out.append(f"### {fig['arch']}\n")
    out.append("| implementation | samples/s (median) | per round | x PyTorch "
               "best | samples per CPU-s | compile s | peak RSS MiB |")
    out.append("|---|---:|---|---:|---:|---:|---:|")
    for row in fig["rows"].values():
      rate = row["samples_per_s"]
      rel = f"{rate / torch_best:.2f}" if torch_best else "-"
      per_round = ", ".join(f"{r:,.0f}" for r in row["per_round"])
      flag = "" if row["finite"] else " (non-finite!)"
      out.append(f"| {row['label']}{flag} | {_fmt(rate)} | {per_round} | {rel} "
                 f"| {_fmt(row['samples_per_cpu_s'])} "
                 f"| {_fmt(row['compile_s'], 2)} | {_fmt(row['rss_mb'])} |")
    r = fig["ratios"]
    eq = fig["equivalence"]
    out.append("")
    probe = ", ".join(f"{t} thread{'s' * (t > 1)} {r:,.0f}" for t, r in
                      fig.get("torch_thread_probe", {}).items())
    out.append(f"PyTorch best: {fig['torch_best_threads']} thread(s) with "
               f"tuned malloc, {_fmt(torch_best)} samples/s; default malloc "
               f"({fig['torch_default_malloc_threads']} thread(s)): "
               f"{_fmt(fig['torch_default_malloc_samples_per_s'])} samples/s."
               + (f" Thread-count probe (samples/s, tuned malloc): {probe}."
                  if probe else ""))
    lines = []
    names = {
        "ojax_over_torch": "ojax BP+Oja / PyTorch best",
        "ojax_tuned_over_torch": "ojax BP+Oja tuned / PyTorch best",
        "jax_pyloop_over_torch": "JAX Python-loop step / PyTorch best",
        "oja_overhead": "Oja overhead (SGD rate / BP+Oja rate)",
        "oja_overhead_tuned": "Oja overhead, tuned",
        "vmap16_speedup": "16 vmapped seeds / 1 vmapped seed (aggregate)",
        "vmap16_over_scan1": "16 vmapped seeds / unvmapped 1-seed scan",
        "vmap16_tuned_over_scan1_tuned":
            "16 vmapped seeds / 1-seed scan, both tuned",
    }
    for key, name in names.items():
      if key in r:
        lines.append(f"| {name} | {r[key]:.2f} |")
    for key in sorted(r):
      if key.startswith("vmap") and key.endswith("_speedup") and (
          key != "vmap16_speedup"):
        lines.append(f"| {key[4:-8]} vmapped seeds / 1 (aggregate) | "
                     f"{r[key]:.2f} |")
    out.append("\n| ratio (median of per-round ratios) | value |\n|---|---:|")
    out.extend(lines)
    if eq:
      out.append(
          f"\nSame weights after {eq['samples']} samples (max |difference| "
          f"over all kernels; BP+Oja: ojax vs PyTorch "
          f"{eq['bp_oja']['ojax_vs_torch']:.1e}, Python-loop step vs PyTorch "
          f"{eq['bp_oja']['pyloop_vs_torch']:.1e}; plain SGD: "
          f"{eq['sgd']['ojax_vs_torch']:.1e}); the Oja term itself moves them "
          f"by {eq['oja_term_effect']:.2f}. Tolerance {TOLERANCE:g}: "
          f"{'passed' if eq['max_diff'] <= TOLERANCE else 'FAILED'}.\n")
  out.append(f"Machine: {meta['cpu']}, {meta['cpus']} CPUs; "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
             + f". Load average {meta['loadavg_start']} at start, "
             f"{meta['loadavg_end']} at end."
             + (f" XLA_FLAGS={meta['xla_flags']!r} for every JAX row."
                if meta["xla_flags"] else ""))
  return "\n".join(out) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true",
                      help="smoke run under 2 minutes: 784-256-256-10 only, "
                      "2,000 samples, 1 round of 3 repetitions, vmap over "
                      "1 and 16 seeds")
  parser.add_argument("--archs", default=",".join(common.ARCHS),
                      help="comma-separated networks, e.g. 784-256-256-10")
  parser.add_argument("--samples", type=int, default=20000,
                      help="training samples per timed pass (>= 100)")
  parser.add_argument("--rounds", type=int, default=3,
                      help="interleaved rounds (one process per variant each)")
  parser.add_argument("--reps", type=int, default=1,
                      help="timed passes inside each process")
  parser.add_argument("--seeds", default="1,4,16,64",
                      help="vmapped seed counts")
  parser.add_argument("--torch_threads", default="1,2",
                      help="PyTorch thread counts to try")
  parser.add_argument("--torch_probe_samples", type=int, default=2000,
                      help="samples of the probe that picks the PyTorch "
                      "thread count")
  parser.add_argument("--no_torch", action="store_true",
                      help="skip the PyTorch rows (no torch installed)")
  parser.add_argument("--no_tuned", action="store_true",
                      help="skip the rows with benchmarks/proposed.py")
  parser.add_argument("--markdown", default=None,
                      help="also write the tables to this file")
  parser.add_argument("--json", default=None,
                      help="also write the full results to this file")
  args = parser.parse_args(argv)
  if args.quick:
    args.archs, args.samples, args.rounds, args.reps, args.seeds = (
        common.ARCHS[0], 2000, 1, 3, "1,16")
    args.torch_probe_samples = 1000
  if args.samples < 100:
    parser.error("--samples must be >= 100 (the equivalence check uses 100).")
  return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
  args = parse_args(argv)
  archs = [a.strip() for a in args.archs.split(",") if a.strip()]
  for arch in archs:
    common.parse_arch(arch)
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  threads = [int(t) for t in args.torch_threads.split(",") if t.strip()]
  has_torch = not args.no_torch
  if has_torch:
    try:
      importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
      print("bench: torch is not installed (pip install torch==2.13.0, or "
            "`make bench` installs the bench extra); skipping PyTorch rows.",
            file=sys.stderr)
      has_torch = False
  meta = {"cpu": common.cpu_model(), "cpus": common.num_cpus(),
          "versions": _versions(), "loadavg_start": _loadavg(),
          "command": shlex.join([os.path.relpath(sys.argv[0], _ROOT)]
                                + (argv if argv is not None else sys.argv[1:])),
          "date": datetime.datetime.now().isoformat(timespec="seconds"),
          "samples": args.samples, "rounds": args.rounds, "reps": args.reps,
          "malloc_tuned": MALLOC_TUNED,
          "tuned_xla_flags": proposed.TUNED_XLA_FLAGS,
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "data": "embedded MNIST (4,000 real training digits, repeated)"}
  if meta["loadavg_start"] and meta["loadavg_start"] > 0.5 * meta["cpus"]:
    print(f"bench: load average is {meta['loadavg_start']} on "
          f"{meta['cpus']} CPUs; other processes will slow every row.",
          file=sys.stderr)
  tic = time.perf_counter()
  figs = []
  with tempfile.TemporaryDirectory(prefix="ojax_bench_") as tmp:
    problems, equivalences = {}, {}
    for arch in archs:
      path = os.path.join(tmp, f"{arch}.npz")
      run_worker("prep", [f"--arch={arch}", f"--samples={args.samples}",
                          f"--problem={path}"])
      problems[arch] = path
      if has_torch:
        equivalences[arch] = run_worker(
            "equivalence", [f"--problem={path}", "--samples=100"])
        print(f"bench: {arch}: weights after 100 samples agree to "
              f"{equivalences[arch]['max_diff']:.1e}", file=sys.stderr)
    probes = {arch: {} for arch in archs}
    todo = {}
    for arch in archs:
      best = []
      if has_torch:
        for t in threads:
          v = variants([], [t], torch_default=False, tuned=False)[-1]
          probes[arch][t] = run_worker(
              v.mode, [f"--problem={problems[arch]}", "--reps=1",
                       f"--limit={args.torch_probe_samples}", *v.args],
              _env(v))["samples_per_s"]
        best = [max(probes[arch], key=probes[arch].get)]
        print(f"bench: {arch}: PyTorch thread probe {probes[arch]} samples/s;"
              f" measuring {best[0]} thread(s)", file=sys.stderr)
      todo[arch] = variants(seeds, best, torch_default=True,
                            tuned=not args.no_tuned)
    rows = {arch: {} for arch in archs}
    labels = {}
    for rnd in range(args.rounds):
      for arch in archs:
        for v in todo[arch]:
          result = run_worker(v.mode, [f"--problem={problems[arch]}",
                                       f"--reps={args.reps}", *v.args],
                              _env(v))
          rows[arch].setdefault(v.key, []).append(result)
          labels[v.key] = v.label
          print(f"bench: round {rnd + 1}/{args.rounds} {arch} {v.key}: "
                f"{result['samples_per_s']:,.0f} samples/s, "
                f"rss {result['rss_mb']:.0f} MiB", file=sys.stderr)
    for arch in archs:
      fig = summarize(arch, rows[arch], labels, equivalences.get(arch),
                      threads)
      fig["torch_thread_probe"] = probes[arch]
      figs.append(fig)
  meta["loadavg_end"] = _loadavg()
  meta["seconds"] = round(time.perf_counter() - tic, 1)
  table = markdown(figs, meta)
  print(table)
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(table)
  main_fig = figs[0]
  rows0 = main_fig["rows"]
  r0 = main_fig["ratios"]
  summary: dict[str, Any] = {
      "arch": main_fig["arch"],
      "ojax_bp_oja_samples_per_s": rows0["ojax_bp_oja"]["samples_per_s"],
      "ojax_sgd_samples_per_s": rows0["ojax_sgd"]["samples_per_s"],
      "torch_bp_oja_samples_per_s": main_fig["torch_best_samples_per_s"],
      "torch_bp_oja_default_malloc_samples_per_s":
          main_fig["torch_default_malloc_samples_per_s"],
      "torch_best_threads": main_fig["torch_best_threads"],
  }
  for key, row in rows0.items():
    if key not in ("ojax_bp_oja", "ojax_sgd"):
      summary[f"{key}_samples_per_s"] = row["samples_per_s"]
  summary["ojax_bp_oja_compile_s"] = rows0["ojax_bp_oja"]["compile_s"]
  summary["ojax_sgd_compile_s"] = rows0["ojax_sgd"]["compile_s"]
  summary["rss_mb"] = {k: round(v["rss_mb"], 1) for k, v in rows0.items()}
  summary.update(r0)
  if main_fig["equivalence"]:
    summary["equivalence_max_abs_diff"] = main_fig["equivalence"]["max_diff"]
    summary["equivalence_passed"] = bool(
        main_fig["equivalence"]["max_diff"] <= TOLERANCE)
  summary["targets_met"] = {
      "ojax_over_torch_ge_5": r0.get("ojax_over_torch", 0) >= 5.0,
      "oja_overhead_le_1_3": r0.get("oja_overhead", 9) <= 1.3,
      "vmap16_speedup_ge_6": r0.get("vmap16_speedup", 0) >= 6.0,
  }
  summary["other_archs"] = {
      f["arch"]: {"ojax_bp_oja_samples_per_s":
                      f["rows"]["ojax_bp_oja"]["samples_per_s"],
                  "ojax_sgd_samples_per_s":
                      f["rows"]["ojax_sgd"]["samples_per_s"],
                  "torch_bp_oja_samples_per_s": f["torch_best_samples_per_s"],
                  **{f"{k}_samples_per_s": v["samples_per_s"]
                     for k, v in f["rows"].items()
                     if k not in ("ojax_bp_oja", "ojax_sgd")},
                  **f["ratios"],
                  "equivalence_max_abs_diff": (f["equivalence"] or {}).get(
                      "max_diff")}
      for f in figs[1:]}
  summary["meta"] = meta
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"summary": summary, "figures": figs}, f, indent=1)
  print(json.dumps(summary), flush=True)
  if main_fig["equivalence"] and not summary["equivalence_passed"]:
    sys.exit(1)
  return summary


if __name__ == "__main__":
  main()

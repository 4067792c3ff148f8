"""Small writers shared by the recurrent_memory and meta_plasticity runners.

Files are written atomically (``.tmp`` then rename), so a crash leaves either
the previous version or the new one, never half a file.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Sequence

import numpy as np

from ojax import stats

LEVEL = 0.98
RESAMPLES = 500
VERDICTS = ("reproduced", "partly reproduced", "not reproduced")


def jsonable(x: Any) -> Any:
  """Plain JSON types; non-finite floats become None (strict JSON)."""
  if isinstance(x, dict):
    return {k: jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return jsonable(x.tolist())
  if isinstance(x, np.generic):
    return jsonable(x.item())
  if isinstance(x, float) and not math.isfinite(x):
    return None
  return x


def write_text(path: str, text: str) -> str:
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
  return path


def write_json(path: str, obj: Any) -> str:
  return write_text(path, json.dumps(jsonable(obj), indent=2,
                                     allow_nan=False))


def write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> str:
  return write_text(path, "".join(
      json.dumps(jsonable(r), allow_nan=False) + "\n" for r in rows))


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def ci(values) -> stats.Estimate:
  return stats.bootstrap_ci(values, LEVEL, RESAMPLES)


def paired(a, b) -> stats.Estimate:
  return stats.paired_difference(a, b, level=LEVEL, num_resamples=RESAMPLES)


def significance(diff: stats.Estimate) -> str:
  return ("better" if diff.low > 0 else "worse" if diff.high < 0 else
          "no significant difference")


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def write_verdict(run_dir: str, claim: str, verdict: str, evidence: str,
                  figures: Sequence[str]) -> str:
  if verdict not in VERDICTS:
    raise ValueError(f"verdict {verdict!r} must be one of {VERDICTS}.")
  return write_json(os.path.join(run_dir, "verdict.json"), {
      "claim": claim, "verdict": verdict, "evidence": evidence,
      "figures": list(figures)})

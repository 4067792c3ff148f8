"""Prints the lowest versions pyproject.toml allows, for `make test-min`.

Each `name>=v` of [project].dependencies becomes `name==v` (jaxlib follows
jax). The floors are defined once, in pyproject.toml.
"""

import pathlib
import re
import tomllib


def pins() -> list[str]:
  path = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
  deps = tomllib.loads(path.read_text())["project"]["dependencies"]
  out = []
  for dep in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)\s*", dep)
    if not m:
      raise SystemExit(f"min_requirements: {dep!r} is not NAME>=VERSION")
    out.append(f"{m[1]}=={m[2]}")
    if m[1] == "jax":
      out.append(f"jaxlib=={m[2]}")
  return out


if __name__ == "__main__":
  print(" ".join(pins()))

"""The import graph of ``ojax/`` and ``experiments/`` has no cycle.

Every ``import`` counts, at the top of a module or inside a function: an
import moved into a function to dodge a cycle is still a cycle. The library
(``ojax/``) never imports the experiments.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("ojax", "experiments")


def _modules() -> dict[str, str]:
  """Module name -> path, for every ``.py`` file under the packages."""
  out = {}
  for package in PACKAGES:
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
      for name in files:
        if not name.endswith(".py"):
          continue
        path = os.path.join(dirpath, name)
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        if parts[-1] == "__init__":
          parts = parts[:-1]
        out[".".join(parts)] = path
  return out


def _resolve(name: str, modules: dict[str, str]) -> str | None:
  """The module ``name`` is, or the package module it lies in; None if it
  is outside the packages."""
  while name:
    if name in modules:
      return name
    name = name.rpartition(".")[0]
  return None


def _imports(module: str, path: str, modules: dict[str, str]) -> set[str]:
  """The modules of the packages that ``module`` imports, anywhere in it.

  ``from p import x`` is an edge to ``p.x`` when that is a module, else to
  ``p``; relative imports are resolved against ``module``'s package.
  """
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  is_package = os.path.basename(path) == "__init__.py"
  package = module if is_package else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
               for a in node.names]
    else:
      continue
    for name in names:
      target = _resolve(name, modules)
      if target is not None and target != module:
        out.add(target)
  return out


def import_graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(m, p, modules) for m, p in sorted(modules.items())}


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
  """One cycle per strongly connected component with more than one module
  (Tarjan): the path ``a -> ... -> a`` and every module of the component."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        components.append(set(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  out = []
  for component in components:
    start = min(component)
    # A shortest way back to ``start`` inside the component (BFS).
    parent, frontier = {start: None}, [start]
    end = None
    while frontier and end is None:
      nxt = []
      for v in frontier:
        for w in sorted(graph[v] & component):
          if w == start:
            end = v
            break
          if w not in parent:
            parent[w] = v
            nxt.append(w)
        if end is not None:
          break
      frontier = nxt
    chain = []
    while end is not None:
      chain.append(end)
      end = parent[end]
    out.append((chain[::-1] + [start], sorted(component)))
  return out


def _format(cycle: tuple[list[str], list[str]]) -> str:
  path, members = cycle
  return f"{' -> '.join(path)} (all in the cycle: {', '.join(members)})"


def test_the_graph_sees_function_level_and_from_imports():
  graph = import_graph()
  assert "experiments.runner" in graph["experiments.main"]  # from e import x
  assert "ojax.rules" in graph["ojax"]
  assert "ojax.rules._common" in graph["ojax.traces"]
  toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert cycles(toy) == [(["a", "b", "c", "a"], ["a", "b", "c"])]


@pytest.mark.parametrize("package", ["ojax", "experiments"])
def test_no_import_cycles(package):
  found = [c for c in cycles(import_graph())
           if c[1][0].split(".")[0] == package]
  assert not found, "import cycles:\n  " + "\n  ".join(
      _format(c) for c in found)


def test_the_library_does_not_import_the_experiments():
  graph = import_graph()
  bad = sorted(f"{m} -> {t}" for m, targets in graph.items()
               if m.split(".")[0] == "ojax"
               for t in targets if t.split(".")[0] == "experiments")
  assert not bad, bad

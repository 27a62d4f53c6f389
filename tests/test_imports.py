"""The house: pdist's modules import each other without circles.

Every `import` counts, at module level or inside a function (a deferred import is still a
dependency), and importing `a.b.c` also imports the packages `a` and `a.b`. The layers, bottom to
top: registry; the components (data, models, optim, privacy, compression, federated, ps, ...);
distill's loss and tasks; strategies; config (the schema, which gathers every registered group);
artifacts and the entry points (train, sweep, replay, quantize, reproduce, __main__).
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pdist")


def _modules(root: str) -> dict[str, str]:
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path[:-3], os.path.dirname(root)).replace(os.sep, ".")
        out[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = path
  return out


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
  """{module: the pdist modules it imports}, every import statement anywhere in the file."""
  modules = _modules(root)
  top = os.path.basename(root)
  graph = {}
  for module, path in modules.items():
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    targets = set()
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        if node.level:
          base = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(base + ([node.module] if node.module else []))
        else:
          base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                 for a in node.names]
      else:
        continue
      for name in names:
        if name != top and not name.startswith(top + "."):
          continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):   # a.b.c imports a and a.b first
          prefix = ".".join(parts[:i])
          if prefix in modules and prefix != module and not module.startswith(prefix + "."):
            targets.add(prefix)
    graph[module] = targets
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

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
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_the_cycle_finder_finds_a_planted_circle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
  assert cycles(graph) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_imports_inside_functions(tmp_path):
  package = tmp_path / "pkg"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "low.py").write_text("def f():\n  from pkg import high\n")
  (package / "high.py").write_text("from pkg import low\n")
  assert cycles(import_graph(str(package))) == [["pkg.high", "pkg.low"]]


def test_pdist_has_no_import_circles():
  graph = import_graph()
  assert "pdist.strategies.ps_ray" in graph and "pdist.config" in graph["pdist.artifacts"]
  assert cycles(graph) == []


def test_nothing_below_config_imports_it():
  """config gathers the components' groups, so a component that imported config (or the
  artifacts and entry points above it) would close a circle through the registries."""
  graph = import_graph()
  above = {"pdist.config", "pdist.artifacts", "pdist.train", "pdist.sweep", "pdist.reproduce",
           "pdist.__main__", "pdist.replay", "pdist.quantize", "pdist.launch"}
  below = [m for m in graph if m.startswith(("pdist.strategies", "pdist.data", "pdist.models",
                                             "pdist.privacy", "pdist.federated", "pdist.ps",
                                             "pdist.compression", "pdist.optim", "pdist.tasks",
                                             "pdist.distill"))]
  offenders = {m: sorted(graph[m] & above) for m in below if graph[m] & above}
  assert offenders == {}

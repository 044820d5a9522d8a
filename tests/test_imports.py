"""The package import graph, read with ``ast`` (nothing is imported): no cycles among the modules of
``retriever`` and ``mining_jobs``, counting every import (module level, inside functions, under
``TYPE_CHECKING``; relative ones resolved), and ``retriever`` never imports ``mining_jobs``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("retriever", "mining_jobs")

# Edges left out of the cycle check, each with its reason. Only for cycles that cannot be cut yet; an entry whose
# edge no longer exists fails the test, so that a fixed cycle drops its exception.
KNOWN_CYCLE_EDGES: dict[tuple[str, str], str] = {}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages (``pkg.__init__`` is ``pkg``)."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _resolve(mod: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <.level><target> import ...`` written in module ``mod``."""
    if level == 0:
        return target or ""
    base = mod.split(".") if is_package else mod.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(mod: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``mod`` imports anywhere in its source. ``from X import a`` counts as
    importing the submodule ``X.a`` when there is one, else ``X`` itself."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                # ``import a.b.c`` imports a, a.b and a.b.c; only the deepest known one matters for cycles
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name:
                    found.add(name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif base in known:
                    found.add(base)
    found.discard(mod)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {mod: imports_of(mod, path, known) for mod, path in files.items()}


def components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of two or more modules (or of a module that imports itself), ordered
    by their smallest module: each is a set of modules that import one another. Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = set()
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.add(m)
                        if m == node:
                            break
                    if len(comp) > 1 or node in graph[node]:
                        found.append(comp)
    return sorted(found, key=min)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per component of ``components``; empty when the graph has no cycle."""
    return [_cycle_in(graph, comp) for comp in components(graph)]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the smallest module of a strongly connected component (breadth-first)."""
    start = min(comp)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & comp):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(comp)}")


def test_graph_sees_known_imports():
    """The walker itself: module-level, function-level, relative and ``from . import x`` imports are found."""
    graph = import_graph()
    assert "retriever.bm25" in graph["retriever"]  # from .bm25 import BM25Index (package __init__)
    assert "retriever.text" in graph["retriever.bm25"]  # relative, module level
    assert "mining_jobs.mine" in graph["mining_jobs.cli"]  # inside a function
    assert "retriever.metrics" in graph["mining_jobs.cli"]  # from retriever import metrics as M
    assert "mining_jobs.ray_engine" in graph["mining_jobs.engine"]  # inside a function


def test_find_cycles_reports_each_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": {"b2", "c"}, "b2": set(), "c": {"b"}}) == [["b", "c", "b"]]
    assert find_cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"z"}, "z": {"x"}, "s": {"s"}}) == [
        ["a", "b", "a"], ["s", "s"], ["x", "y", "z", "x"]]


def test_no_import_cycles():
    graph = import_graph()
    for (src, dst), why in KNOWN_CYCLE_EDGES.items():
        assert dst in graph.get(src, set()), (
            f"known exception {src} -> {dst} ({why}) no longer exists: remove it from KNOWN_CYCLE_EDGES")
        graph[src] = graph[src] - {dst}
    comps = components(graph)
    assert not comps, "import cycles:\n" + "\n".join(
        f"  {' -> '.join(_cycle_in(graph, comp))}   (modules importing one another: {', '.join(sorted(comp))})"
        for comp in comps)


def test_retriever_never_imports_mining_jobs():
    graph = import_graph()
    bad = {mod: sorted(d for d in deps if d.split(".")[0] == "mining_jobs")
           for mod, deps in graph.items() if mod.split(".")[0] == "retriever"}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"retriever modules importing mining_jobs: {bad}"


def test_the_job_store_imports_no_job_kind():
    """The service's store is given the kind names by whoever opens it; it imports nothing of the service (nor,
    through it, any job)."""
    graph = import_graph()
    reach, todo = set(), ["mining_jobs.service.store"]
    while todo:
        for dep in graph[todo.pop()] - reach:
            reach.add(dep)
            todo.append(dep)
    assert not {m for m in reach if m.startswith("mining_jobs")}, sorted(reach)

"""The package's import graph has no cycle: every ``import`` of a module of dance_analysis, at module level or inside
a function (a deferred import hides a cycle, it does not remove it), read with ``ast`` from the source files.

Blocks under ``if TYPE_CHECKING:`` are left out (they never run). ``from package import name`` is an edge to the
submodule ``package.name`` when there is one, else to the package itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dance_analysis

PACKAGE = Path(dance_analysis.__file__).resolve().parent
NAME = "dance_analysis"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its ``__init__.py``)."""
    out = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = list(file.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([NAME, *parts])] = file
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(module: str, file: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The project modules ``module`` imports: name -> line of the first such import."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    is_package = file.name == "__init__.py"
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        # the longest prefix that is a module of the package
        parts = target.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if parts and ".".join(parts) != module:
            out.setdefault(".".join(parts), line)

    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == NAME or alias.name.startswith(NAME + "."):
                    add(alias.name, node.lineno)
            continue
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if not (source == NAME or source.startswith(NAME + ".")):
            continue
        for alias in node.names:
            child = f"{source}.{alias.name}"
            add(child if child in modules else source, node.lineno)
    return out


def import_graph() -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    modules = _modules()
    return {name: imports_of(name, file, modules) for name, file in modules.items()}, modules


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` (iterative depth-first search)."""
    state: dict[str, int] = {}        # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, iters = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, {}))))
    return None


def _describe(cycle: list[str], graph: dict[str, dict[str, int]], modules: dict[str, Path]) -> str:
    steps = []
    for a, b in zip(cycle, cycle[1:]):
        steps.append(f"  {modules[a].relative_to(PACKAGE.parent)}:{graph[a][b]} imports {b}")
    return "import cycle " + " -> ".join(cycle) + "\n" + "\n".join(steps)


def test_the_finder_sees_deferred_relative_and_absolute_imports():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 1}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 2}}) is None
    modules = _modules()
    # a function-level relative import (run_folder -> prepare used to be one) and a from-package import are edges
    graph, _ = import_graph()
    assert "dance_analysis.checkpoints" in graph["dance_analysis.training.run_folder"]
    assert "dance_analysis.training.refresh" in graph["dance_analysis.training.prepare"]      # inside prepare()
    assert "dance_analysis.checkpoints" in graph["dance_analysis.report.inputs"]             # from .. import x
    assert set(graph) == set(modules)


def test_no_import_cycle():
    graph, modules = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, _describe(cycle, graph, modules)


def test_checkpoints_is_on_the_ground_floor():
    """The run-folder reader imports nothing above it (no training, report, model or command code, at any depth,
    deferred imports included), and importing it loads no torch."""
    import subprocess
    import sys

    graph, _ = import_graph()
    above = ("training", "report", "cli", "model", "encode", "pipeline", "comparison", "reproduce", "interop")
    seen, todo = set(), ["dance_analysis.checkpoints"]
    while todo:
        for target in graph[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    assert not [m for m in seen if m.split(".")[1] in above], sorted(seen)
    loaded = subprocess.run([sys.executable, "-c", "import sys, dance_analysis.checkpoints; "
                             "print(' '.join(sorted(sys.modules)))"], capture_output=True, text=True, check=True)
    names = loaded.stdout.split()
    assert "torch" not in names and not [n for n in names if n.startswith("dance_analysis.training")]

"""No circle among companion's imports: a lower module never imports a higher one.

Every module under companion/ is parsed (ast, nothing imported), and each of its imports of
companion, absolute or relative, at the top or inside a function (a lazy import is still a
dependency: it only moves the failure to the first call), becomes an edge of the module
graph. `from package import name` is an edge to the module package.name where there is
one, else to the package (its __init__: a submodule that takes a name from its own
package's __init__, which imports that submodule, is a circle too). `import a.b.c` is an
edge to a.b.c only: that Python runs the packages' __init__ files first is no choice of the
code. Imports under `if TYPE_CHECKING:` never run, and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "companion"


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """{dotted name: file} for every module of the package (a package as its __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (never run)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports_of(name: str, source: str, modules, is_package: bool = False) -> set[str]:
    """The modules of `modules` that the module `name` (source text) imports, anywhere in it."""
    tree = ast.parse(source)
    skip = _type_checking_only(tree)
    here = name if is_package else name.rpartition(".")[0]  # what `from .` means
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imports_of(name, path.read_text(), modules, path.name == "__init__.py")
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected part of the graph that has one (Tarjan's
    algorithm), as [a, b, ..., a], each starting at its smallest name; sorted."""
    index, low, stack, on_stack, parts = {}, {}, [], set(), []

    def visit(v):  # recursion depth is the import chain's length: a few dozen at most
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
            part = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1 or v in graph.get(v, ()):
                parts.append(part)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(_shortest_cycle(graph, part) for part in parts)


def _shortest_cycle(graph, part: set[str]) -> list[str]:
    """The shortest cycle from the smallest name of `part` back to it, within `part`."""
    start = min(part)
    paths, seen = [[start]], set()
    while paths:
        path = paths.pop(0)
        for w in sorted(graph.get(path[-1], ())):
            if w == start:
                return path + [start]
            if w in part and w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError(f"{part} is no cycle")


def test_companion_imports_have_no_cycle():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (a lower module imports a higher one):\n  " + \
        "\n  ".join(" -> ".join(c) + _others(graph, c) for c in found)


def _others(graph, cycle: list[str]) -> str:
    """The other modules on circles through cycle's first module, if any."""
    start = cycle[0]
    part = {v for v in _reachable(graph, start) if start in _reachable(graph, v)}
    return f" (and through {', '.join(sorted(part - set(cycle)))})" if part - set(cycle) else ""


def _reachable(graph, v: str) -> set[str]:
    seen, todo = {v}, [v]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert cycles(g) == [["a", "b", "c", "a"], ["e", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    both = {"x": {"y", "z"}, "y": {"x"}, "z": {"x"}}  # one strongly connected part
    assert cycles(both) == [["x", "y", "x"]]


def test_imports_are_resolved_as_python_resolves_them(tmp_path):
    """Relative and absolute, at the top and inside a function, not under TYPE_CHECKING;
    `from package import module` is an edge to the module, `from package import name` to
    the package."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .sub.low import f\n")
    (pkg / "top.py").write_text("import os\nfrom pkg import sub\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "low.py").write_text(
        "from typing import TYPE_CHECKING\nfrom . import mid\n"
        "if TYPE_CHECKING:\n    from ..top import x\n"
        "def f():\n    from .. import top\n    import pkg.sub.mid\n")
    (pkg / "sub" / "mid.py").write_text("from .low import f\nfrom pkg.sub import nothing\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.sub.low"}, "pkg.top": {"pkg.sub"}, "pkg.sub": set(),
                     "pkg.sub.low": {"pkg.sub.mid", "pkg.top"},
                     "pkg.sub.mid": {"pkg.sub.low", "pkg.sub"}}
    assert cycles(graph) == [["pkg.sub.low", "pkg.sub.mid", "pkg.sub.low"]]

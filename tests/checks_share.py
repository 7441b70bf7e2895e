"""How much of a module's code is argument checking, and which checks are written twice.

    python tests/checks_share.py                      # the math modules' shares
    python tests/checks_share.py companion/sde.py     # any modules
    python tests/checks_share.py --duplicates         # checks written more than once

The rule. A *code line* is a physical line of a statement outside docstrings, blank lines
and comments. A *check line* is a code line of:
  1. an `if` whose body only raises an argument error (ValueError, TypeError or
     companion's ArgumentError; not a solver's RuntimeError), its condition and its
     raise, message included;
  2. a statement that calls an argument check and does nothing else: a call to a
     function of `companion.run.checks`, or to a function whose name starts with `check` or
     `_check`, alone, assigned or returned (`T = checks.count("T", T)`), or a tuple of
     such calls (`a, b = checks.real("a", a), checks.real("b", b)`);
  3. the whole body of a function whose name starts with `check` or `_check` (a module's
     own check helpers).
The share is check lines / code lines. `--duplicates` lists the conditions of rule 1 that
appear in more than one place across companion/ (names replaced by placeholders, so that
`K < 1` and `T < 1` count as one check written twice; builtins and modules keep their
names: `isinstance(_, int)` and `isinstance(_, str)` differ).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATH = ["companion/diffusion.py", "companion/sde.py", "companion/flow.py"]
TARGET = 0.20


def _lines(node: ast.AST) -> set[int]:
    return set(range(node.lineno, node.end_lineno + 1))


def _docstring_lines(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(
                    body[0].value.value, str):
                out |= _lines(body[0])
    return out


def _is_check_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "checks":
        return True
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
    return name.startswith(("check", "_check"))


ARGUMENT_ERRORS = {"ValueError", "TypeError", "ArgumentError"}


def _raised(node: ast.Raise) -> str:
    exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return exc.attr if isinstance(exc, ast.Attribute) else getattr(exc, "id", "")


def _only_raises(body: list[ast.stmt]) -> bool:
    return bool(body) and all(isinstance(s, ast.Raise) and _raised(s) in ARGUMENT_ERRORS
                              for s in body)


def _only_checks(value) -> bool:
    """A check call, or a tuple of them."""
    if isinstance(value, ast.Tuple):
        return bool(value.elts) and all(_is_check_call(v) for v in value.elts)
    return _is_check_call(value)


def check_lines(tree: ast.AST) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _only_raises(node.body) and not node.orelse:
            out |= _lines(node)
        elif isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign, ast.Return)) and \
                _only_checks(node.value):
            out |= _lines(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                node.name.startswith(("check", "_check")):
            out |= _lines(node)
    return out


def code_lines(source: str, tree: ast.AST) -> set[int]:
    docs = _docstring_lines(tree)
    text = source.splitlines()
    stmt_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            stmt_lines |= _lines(node)
    return {n for n in stmt_lines - docs
            if text[n - 1].strip() and not text[n - 1].strip().startswith("#")}


def share(path: Path) -> tuple[int, int]:
    source = path.read_text()
    tree = ast.parse(source)
    code = code_lines(source, tree)
    return len(check_lines(tree) & code), len(code)


KEEP = {"isinstance", "len", "tuple", "int", "float", "bool", "str", "torch", "math", "np",
        "checks", "any", "all"}  # builtins and modules: what a check does, not its names


class _Anonymous(ast.NodeTransformer):
    def visit_Name(self, node):
        if node.id in KEEP:
            return node
        return ast.copy_location(ast.Name(id="_", ctx=node.ctx), node)

    def visit_Constant(self, node):
        if isinstance(node.value, str):
            return ast.copy_location(ast.Constant(value="_"), node)
        return node


def duplicates(paths) -> dict[str, list[str]]:
    """Rule-1 conditions (names anonymised) that appear in more than one place."""
    seen: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _only_raises(node.body) and not node.orelse:
                key = ast.unparse(_Anonymous().visit(ast.parse(ast.unparse(node.test))))
                seen[key].append(f"{path.relative_to(ROOT)}:{node.lineno}")
    trivial = {"_", "not _", "_ is None", "_ is not None"}
    return {k: v for k, v in seen.items() if len(v) > 1 and k not in trivial}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=MATH)
    parser.add_argument("--duplicates", action="store_true")
    args = parser.parse_args(argv)
    if args.duplicates:
        found = duplicates(sorted((ROOT / "companion").rglob("*.py")))
        for key, where in sorted(found.items(), key=lambda kv: -len(kv[1])):
            print(f"{len(where)}x  if {key}: raise ...   ({', '.join(where)})")
        print(f"{len(found)} conditions written more than once")
        return 0
    worst = 0.0
    for p in args.paths:
        checks, code = share(ROOT / p)
        worst = max(worst, checks / code)
        print(f"{p:32s} {checks:4d} of {code:4d} code lines are checks: {checks / code:5.1%}")
    print(f"target: at most {TARGET:.0%} in each ({'met' if worst <= TARGET else 'not met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much of each chapter's shown code is setup and bookkeeping (issue 51: at most ~15%).

    python tools/setup_share.py            # a table: chapter, shown lines, setup lines, share
    python tools/setup_share.py --lines 09 # the setup lines of chapter 9, as counted

How lines are counted, from the MyST twins (notebooks/NN_*.md):

- shown: the lines of the code cells a reader sees on the web page, that is every code cell
  without a `remove-cell`, `remove-input`, `hide-cell` or `hide-input` tag (those are hidden
  or collapsed), less blank lines and lines that are only a comment;
- setup and bookkeeping, among the shown lines: imports (with the continuation lines of a
  parenthesized import), the setup call and the plot style (`companion.setup(`,
  `use_style(`), seeding (`manual_seed(`, `seed_everything(`), the Colab install lines,
  and what records results for the page rather than computing them (`glue(`, `results.`,
  `timed(`, `display(Markdown(`).
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = {"remove-cell", "remove-input", "hide-cell", "hide-input"}
LIMIT = 0.15
BOOKKEEPING = re.compile(
    r"^\s*(import |from \S+ import )"
    r"|companion\.setup\(|\buse_style\(|manual_seed\(|seed_everything\("
    r"|\bglue\(|\bresults\."
    r"|^SPEC = |google\.colab|subprocess|checkpoint_path\(|profile\.(pick|count)\(", re.M)


def code_cells(path: Path | str) -> list[tuple[set[str], list[str]]]:
    """(tags, source lines) of every code cell of a MyST notebook (read by jupytext), given
    its path or its text."""
    import jupytext

    nb = jupytext.read(path) if isinstance(path, Path) else jupytext.reads(path, "md:myst")
    return [(set(c.metadata.get("tags", [])), c.source.splitlines())
            for c in nb.cells if c.cell_type == "code"]


def _statements(body: list[ast.stmt]):
    """Every simple statement, and the header of every compound one, as (node, lines)."""
    for node in body:
        inner = [getattr(node, f, None) for f in ("body", "orelse", "finalbody", "handlers")]
        inner = [b for b in inner if isinstance(b, list) and b]
        if not inner:
            yield node, range(node.lineno, node.end_lineno + 1)
            continue
        first = min(b[0].lineno for b in inner)
        yield node, range(node.lineno, first)
        for b in inner:
            for h in b:
                if isinstance(h, ast.ExceptHandler):
                    yield h, range(h.lineno, h.body[0].lineno)
                    yield from _statements(h.body)
            yield from _statements([h for h in b if not isinstance(h, ast.ExceptHandler)])


def counted(path: Path | str) -> tuple[list[str], list[str]]:
    """(shown code lines, the setup and bookkeeping lines among them). A statement counts
    as setup when its text matches BOOKKEEPING (all its lines, a wrapped import's too); the
    Colab install block counts whole."""
    shown, setup = [], []
    for tags, lines in code_cells(path):
        if tags & HIDDEN:
            continue
        source = "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in lines)
        tree = ast.parse(source)
        colab = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "google.colab" in ast.unparse(node.test):
                colab |= set(range(node.lineno, node.end_lineno + 1))
        for _node, rows in _statements(tree.body):
            text_rows = [lines[r - 1] for r in rows
                         if lines[r - 1].strip() and not lines[r - 1].strip().startswith("#")]
            stmt = "\n".join(text_rows)
            is_setup = bool(BOOKKEEPING.search(stmt)) or rows[0] in colab
            shown += text_rows
            if is_setup:
                setup += text_rows
    return shown, setup


def shares(root: Path = ROOT) -> dict[str, tuple[int, int]]:
    """{chapter stem: (shown lines, setup lines)} for every chapter."""
    out = {}
    for path in sorted((root / "notebooks").glob("[0-9]*.md")):
        shown, setup = counted(path)
        out[path.stem] = (len(shown), len(setup))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", metavar="NN", help="print the setup lines of chapter NN")
    args = ap.parse_args(argv)
    if args.lines:
        path = next((ROOT / "notebooks").glob(f"{args.lines}_*.md"))
        for line in counted(path)[1]:
            print(line)
        return 0
    print(f"{'chapter':28} {'shown':>6} {'setup':>6} {'share':>6}")
    for stem, (shown, setup) in shares().items():
        print(f"{stem:28} {shown:6d} {setup:6d} {setup / max(shown, 1):6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

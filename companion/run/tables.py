"""The tables a chapter shows: one helper, so that a notebook holds numbers, not formatting.

    from companion.run.tables import table
    table(["sampler", "energy distance"], [["ancestral", 1.52], ["ODE", (1.6, 0.3)]],
          formats=[None, ".2f"], title="Energy distance (x 1000):")

A cell is a string (shown as it is), a number (formatted with its column's format), or a
pair (value, standard error), shown as "value ± se" in that format. A NaN or infinite number
is refused (a table would show "nan" or "1 ± nan" without a word): pass a string, such as
"n/a", for a value that does not exist. Columns whose cells are
numbers are right-aligned, the others left-aligned. The result is an IPython Markdown object
(a table in the rendered book and in Jupyter); `markdown(...)` returns the same text as a str.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence


def _is_number(x) -> bool:
    """A real number: int, float, or a NumPy / torch scalar (not a bool)."""
    if hasattr(x, "item") and getattr(x, "ndim", None) == 0:
        x = x.item()
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _cell(x, fmt: str | None) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, tuple) and len(x) == 2 and all(map(_is_number, x)):
        value, se = (float(v) for v in x)
        _finite(value, "a value of ")
        _finite(se, "a standard error of ")
        f = fmt or ".3g"
        return f"{value:{f}} ± {se:{f}}"
    if _is_number(x):
        x = x.item() if hasattr(x, "item") else x
        _finite(float(x), "")
        return format(x, fmt or "")
    raise TypeError(f"a table cell must be a string, a number or a pair (value, se); got "
                    f"{type(x).__name__} {x!r:.40}")


class _NotFinite(ValueError):
    """A cell's number that is NaN or infinite; _formatted says where."""


def _finite(v: float, what: str) -> None:
    if not math.isfinite(v):
        raise _NotFinite(f"{what}{v}")


def _formatted(x, fmt: str | None, where: str) -> str:
    """_cell(x, fmt), a format spec that does not fit the cell's number named with it."""
    try:
        return _cell(x, fmt)
    except _NotFinite as err:
        raise ValueError(f"{where} holds {err}, which a table would show without a word: "
                         "fix what computed it, or pass a string that says why there is no "
                         "value (say 'n/a')") from None
    except ValueError as err:  # format()'s own: "Unknown format code 'q' for object ..."
        raise ValueError(f"the format {fmt!r} cannot show {where}, {x!r:.40} ({err}): give "
                         "that column a spec for its numbers, such as '.3f', ',d' or None"
                         ) from None


def _one_line(text: str, where: str) -> str:
    """text, refused if it holds a line break (which ends a Markdown table's row)."""
    if "\n" in text or "\r" in text:  # CommonMark's line endings
        raise ValueError(f"a table cell must be one line, but {where} holds a line break: "
                         f"{text!r:.60}; a Markdown row ends at a line break, so the table "
                         "would break there. Join the lines (say with ' ' or '; ')")
    return text


def markdown(columns: Sequence[str], rows: Iterable[Sequence], *,
             formats: Sequence[str | None] | None = None, title: str | None = None,
             align: str | None = None) -> str:
    """The table as Markdown text: a header row, an alignment row, one line per row.

    columns: k header strings; rows: sequences of k cells; formats: k format specs (".2f",
    ",d", None for the default) applied to the number cells of each column; title: a line
    above the table; align: k letters "l" or "r" (default: numbers right, text left).
    """
    columns = [str(c) for c in columns]
    k = len(columns)
    if k == 0:
        raise ValueError("a table needs at least one column")
    formats = list(formats) if formats is not None else [None] * k
    if len(formats) != k:
        raise ValueError(f"formats must give one spec per column ({k}), got {len(formats)}")
    rows = [list(r) for r in rows]
    for i, r in enumerate(rows):
        if len(r) != k:
            raise ValueError(f"row {i} has {len(r)} cells, the table has {k} columns "
                             f"({', '.join(columns)})")
    numeric = [bool(rows) and all(not isinstance(r[j], str) for r in rows) for j in range(k)]
    if align is not None:
        if len(align) != k or set(align) - {"l", "r"}:
            raise ValueError(f"align must be {k} letters 'l' or 'r', one per column, got "
                             f"{align!r}")
        numeric = [a == "r" for a in align]
    for j, c in enumerate(columns):
        _one_line(c, f"the header of column {j}")
    lines = ["| " + " | ".join(c.replace("|", "\\|") for c in columns) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    for i, r in enumerate(rows):
        cells = [_one_line(_formatted(x, f, f"row {i}, column {columns[j]!r}"),
                           f"row {i}, column {columns[j]!r}")
                 for j, (x, f) in enumerate(zip(r, formats, strict=True))]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    text = "\n".join(lines)
    return f"{title}\n\n{text}" if title else text


def table(columns: Sequence[str], rows: Iterable[Sequence], *,
          formats: Sequence[str | None] | None = None, title: str | None = None,
          align: str | None = None):
    """`markdown(...)` as an IPython Markdown object: display it, or end a cell with it."""
    from IPython.display import Markdown

    return Markdown(markdown(columns, rows, formats=formats, title=title, align=align))

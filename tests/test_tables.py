"""Tests of companion.run.tables: the Markdown tables the chapters show."""

import pytest
import torch

from companion.run.tables import markdown, table


def test_cells_formats_and_alignment():
    text = markdown(["sampler", "distance", "n"],
                    [["ancestral", (1.234, 0.56), 2000], ["ODE", 1.5, torch.tensor(10)]],
                    formats=[None, ".2f", ",d"], title="Energy distance:")
    assert text.splitlines() == [
        "Energy distance:", "",
        "| sampler | distance | n |",
        "|---|---:|---:|",
        "| ancestral | 1.23 ± 0.56 | 2,000 |",
        "| ODE | 1.50 | 10 |",
    ]
    assert table(["a"], [[1]]).data == "| a |\n|---:|\n| 1 |"
    assert markdown(["a", "b"], [["1, 2", 3]], align="rr").splitlines()[1] == "|---:|---:|"


@pytest.mark.parametrize("columns, rows, formats, match", [
    (["a", "b"], [[1]], None, "row 0 has 1 cells"),
    (["a"], [[1]], [".1f", ".2f"], "one spec per column"),
    (["a"], [[object()]], None, "a table cell must be"),
    ([], [], None, "at least one column"),
    (["a"], [[1]], "bad align", "align must be"),
])
def test_bad_input_says_what_to_fix(columns, rows, formats, match):
    align = "x" if formats == "bad align" else None
    formats = None if formats == "bad align" else formats
    with pytest.raises((ValueError, TypeError), match=match):
        markdown(columns, rows, formats=formats, align=align)

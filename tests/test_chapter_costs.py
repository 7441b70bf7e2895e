"""README's table of what each chapter costs is the stored notebooks' (tools/chapter_costs.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("chapter_costs", ROOT / "tools" / "chapter_costs.py")
costs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(costs)


def test_readme_table_is_the_notebooks():
    text = (ROOT / "README.md").read_text()
    assert costs.replaced(text, costs.table()) == text, (
        "README.md's chapter costs are stale: run `python tools/chapter_costs.py --write`")


def test_every_chapter_has_a_row_with_a_measured_time():
    rows = costs.rows()
    assert len(rows) >= 20
    for chapter, where, cached, _ in rows:
        assert where.startswith(("`cpu`", "`gpu`")), chapter
        assert cached != "not measured", chapter


def test_missing_markers_say_where_the_table_goes():
    with pytest.raises(SystemExit, match="lacks the markers"):
        costs.replaced("# README without the table\n", "| t |")
    new = costs.replaced(f"a\n{costs.START}\nold\n{costs.END}\nb", "| t |")
    assert new == f"a\n{costs.START}\n| t |\n{costs.END}\nb"


def test_every_stored_cpu_run_is_within_a_quarter_of_an_hour():
    """What README and the running page promise of the `cpu` profile (DESIGN.md: 15 minutes
    on 2 cores with the earlier chapters' models cached)."""
    es = costs._status_module()
    slow = [(p.stem, round(st.seconds)) for p in es.toc_notebooks(ROOT)
            if (st := es.notebook_status(p)).profile == "cpu" and st.seconds > 15 * 60]
    assert not slow, f"stored cpu runs over 15 minutes (name, seconds): {slow}"

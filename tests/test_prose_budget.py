"""The reading budgets (tools/prose_budget.py): the counter on planted notebooks, and every
budget of the chapters written in the book's voice on the stored ones."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("prose_budget", ROOT / "tools" / "prose_budget.py")
pb = importlib.util.module_from_spec(spec)
sys.modules["prose_budget"] = pb
spec.loader.exec_module(pb)


def _md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(outputs=(), **metadata):
    return {"cell_type": "code", "metadata": metadata, "source": "x = 1",
            "outputs": list(outputs), "execution_count": 1}


def _glue(name, text):
    return {"output_type": "display_data", "metadata": {"scrapbook": {
        "name": name, "mime_prefix": "application/papermill.record/"}},
        "data": {"application/papermill.record/text/plain": text}}


BOX = ("\n\n:::{admonition} What these runs are\n:class: note\n**Runs.** cpu. "
       "**What they can say.** a. **What they cannot say.** b. **At scale.** c. "
       "**In Colab** d.\n:::\n")
PNG = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBOR"}}


def _notebook(tmp_path, cells, execution=None, name="21_planted"):
    nb = {"cells": cells, "metadata": {"book": {"execution": execution or {}}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / f"{name}.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_words_are_split_by_where_they_sit(tmp_path):
    cells = [
        _md("# A title\n\nOne two three four five.\n\n$$\na + b = c\n$$\n\n"
            "With $x^2$ and {cite}`ho2020denoising` six words here."),
        _code([_glue("ch_a", "'ahead'"), _glue("ch_n", "3.14159")]),
        _md("It is {glue:text}`ch_a` by {glue:text}`ch_n:.2f`.\n\n"
            ":::{admonition} How sure is this?\n:class: dropdown\n"
            "Seven words inside the dropdown sit apart.\n:::\n"),
        _code([PNG]),
        _md("## Exercises\n\n1. Derive it in three lines.\n\n"
            ":::{admonition} Solution\n:class: dropdown\nThe answer is four.\n:::\n"),
        _code([PNG]),  # a solution's figure is not the chapter's
    ]
    ch = pb.measure(_notebook(tmp_path, cells))
    # "A title" 2 + 5 + "With x and [cite] six words here." 7 + "It is ahead by 3.14." 5,
    # the dropdown's title 4 ("How sure is this?") counted with it
    assert ch.main == 2 + 5 + 7 + 5
    assert ch.dropdowns == 4 + 7
    # "Exercises" 1 + "1. Derive it in three lines." 6, "Solution" + 4
    assert ch.exercises == 1 + 6 + 1 + 4
    assert ch.figures == 1 and ch.long_glue == []


def test_long_glue_inside_a_sentence_is_caught(tmp_path):
    verdict = "'lower by 76.8 (4.8 SE; paired jackknife, 255 df) at every budget we ran'"
    cells = [_code([_glue("ch_v", verdict), PNG]),
             _md("The guided model is {glue:text}`ch_v`.")]
    ch = pb.measure(_notebook(tmp_path, cells))
    assert len(ch.long_glue) == 1 and ch.long_glue[0].startswith("lower by 76.8")
    assert any("glued text of" in p for p in ch.over())


def test_each_budget_fails_a_planted_chapter(tmp_path):
    words = " ".join(["word"] * 4_100)
    over = pb.measure(_notebook(tmp_path, [_md(words), _code([PNG])],
                                {"profile_env": "cpu", "seconds": 1_000,
                                 "checkpoints": "reused"}))
    found = over.over()
    assert any("main prose 4,100 words" in p for p in found)
    assert any("words per figure" in p for p in found)
    assert any("stored cpu run 17 min > 15 min" in p for p in found)
    assert any("0 budget boxes" in p for p in found)
    fresh = pb.measure(_notebook(tmp_path, [_md("Short." + BOX), _code([PNG])],
                                 {"profile_env": "cpu", "seconds": 1_000}, name="22_fresh"))
    assert fresh.over() == []  # trained from an empty cache: 30 minutes
    assert pb.problems([over, fresh], voiced={"21_planted"}) == [
        f"21_planted: {p}" for p in found]
    assert pb.problems([over, fresh], voiced=set()) == []


def test_explorers_count_as_figures(tmp_path):
    cells = [_md(" ".join(["word"] * 900)), _code(explorer={"name": "bound"}), _code([PNG])]
    ch = pb.measure(_notebook(tmp_path, cells))
    assert ch.figures == 2 and ch.words_per_figure == 450


def test_voiced_chapters_keep_their_budgets():
    """Every chapter in the book's voice (pb.VOICED) keeps every budget; the table of the
    whole book is `python tools/prose_budget.py`."""
    rows = pb.chapters()
    text = pb.report(rows)
    assert len(rows) >= 20 and all(c.name in text for c in rows)
    assert all(c.main > 500 for c in rows)  # every chapter was read, not skipped
    assert pb.problems(rows) == []


def test_the_budget_box_has_one_shape(tmp_path):
    """One box a chapter, with every field; its words count as main prose."""
    ch = pb.measure(_notebook(tmp_path, [_md("Intro." + BOX), _code([PNG])]))
    assert len(ch.boxes) == 1 and ch.over() == []
    assert ch.main == 1 + 4 + 18  # "Intro.", the title, the fields and their words
    lacking = pb.measure(_notebook(tmp_path, [_md(BOX.replace("**At scale.** c. ", "")),
                                              _code([PNG])], name="22_lacking"))
    assert lacking.over() == ["the budget box lacks **At scale.**"]
    two = pb.measure(_notebook(tmp_path, [_md(BOX + BOX), _code([PNG])], name="23_two"))
    assert two.over() == ["2 budget boxes ('What these runs are'), not one"]


def test_glued_values_show_as_the_page_formats_them():
    values = {"n": "2820", "x": "0.04407", "s": "'lower than chapter 9's'", "w": "'a'"}
    text = ("{glue:text}`n:,d` {glue:text}`x:.0%` {glue:text}`x:.2f` "
            "{glue:text}`s` {glue:text}`w:.2f` {glue:text}`n`")
    assert pb.substitute_glue(text, values) == "2,820 4% 0.04 lower than chapter 9's a 2820"

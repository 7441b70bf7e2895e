"""An evidence table's rows are link targets on the page and in the PDF's LaTeX
(book/_ext/evidence_anchors.py), and the tables write one anchor per glued phrase."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from companion.compare import Evidence, paired

EXT = Path(__file__).resolve().parents[1] / "book" / "_ext"
sys.path.insert(0, str(EXT.parents[1] / "tools"))

PAGE = """# Page

The gap is [lower](#ch99_fd_words), the other [within noise](#ch99_tie), a third
[higher](#ch99_fd_VDM_simple) (a model's name in capitals).

| claim | verdict |
| :-- | :-- |
| <a id="ch99_fd_words"></a>FD, A - B | lower |
| <a id="ch99_tie" name="ch99_tie"></a><a id="ch99_tie_again"></a>FD, A - C | within noise |
| <a id="ch99_fd_VDM_simple" name="ch99_fd_VDM_simple"></a>FD, VDM - L_simple | higher |
"""


def _build(tmp_path: Path, extensions: list[str], builder: str = "html") -> tuple[int, str]:
    """A strict Sphinx build of PAGE in its own process (Sphinx and docutils keep roles in
    globals: a second build in one process warns that they are registered again)."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "index.md").write_text(PAGE)
    (src / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(EXT)!r})\nextensions = {extensions!r}\n"
        "exclude_patterns = ['_build']\n")
    out = tmp_path / f"out-{builder}-{len(extensions)}"
    done = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-W", "-n", "-b", builder,
                           str(src), str(out)], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def test_the_rows_anchors_become_targets_that_the_links_resolve(tmp_path):
    rc, log = _build(tmp_path, ["myst_parser", "evidence_anchors"])
    assert rc == 0, log
    page = (tmp_path / "out-html-2" / "index.html").read_text()
    for name in ("ch99-fd-words", "ch99-tie", "ch99-tie-again", "ch99-fd-vdm-simple"):
        assert re.search(f'<span [^>]*id="{name}"', page), name
    assert 'href="#ch99-fd-words"' in page and 'href="#ch99-tie"' in page
    assert 'href="#ch99-fd-vdm-simple"' in page  # Sphinx's names are lower case
    assert "&lt;a id" not in page and '<a id="ch99' not in page  # no raw tag left


def test_without_the_extension_the_links_fail_the_strict_build(tmp_path):
    rc, log = _build(tmp_path, ["myst_parser"])
    assert rc != 0 and "ch99_fd_words" in log


def test_the_pdfs_latex_gets_a_label_per_row(tmp_path):
    rc, log = _build(tmp_path, ["myst_parser", "evidence_anchors"], builder="latex")
    assert rc == 0, log
    tex = next((tmp_path / "out-latex-2").glob("*.tex")).read_text()
    assert r"\label{\detokenize{index:ch99-fd-words}}" in tex
    assert r"\hyperref[\detokenize{index:ch99-fd-words}]" in tex


def test_a_glued_verdict_names_its_row_and_stores_plain_text(monkeypatch):
    from companion.run import glue as glue_module

    shown = []
    monkeypatch.setattr("IPython.display.display",
                        lambda data, raw=False, metadata=None: shown.append((data, metadata)))
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    ev = Evidence("ch99-evidence")
    low = ev.verdict("FD, A - B", paired(a - 2, a + 0.1 * rng.normal(size=30)),
                     behind="lower")
    tie = ev.verdict("FD, A - C", paired(a, a + rng.normal(size=30)))
    ev.verdict("FD, A - D", paired(a, a + rng.normal(size=30)))  # glued nowhere
    inside = ev.verdict("FD, A - E", paired(a, a + rng.normal(size=30)), name="ch99_sentence")
    glue_module.glue("ch99_sentence", f"{inside} at every budget", display=False)
    glue_module.glue("ch99_fd_words", low, display=False)
    glue_module.glue("ch99_tie", tie, display=False)
    glue_module.glue("ch99_tie_again", tie, display=False)
    text = [d["application/papermill.record/text/plain"] for d, _ in shown]
    assert text[1:] == ["'lower'", "'within noise'", "'within noise'"]  # a str, no class
    rows = ev.markdown().splitlines()[2:]
    assert rows[0].startswith('| <a id="ch99_fd_words" name="ch99_fd_words"></a>FD, A - B')
    assert rows[1].startswith('| <a id="ch99_tie" name="ch99_tie"></a>'
                              '<a id="ch99_tie_again" name="ch99_tie_again"></a>FD, A - C')
    assert rows[2].startswith("| FD, A - D")
    assert rows[3].startswith('| <a id="ch99_sentence" name="ch99_sentence"></a>FD, A - E')
    with pytest.raises(ValueError, match="glue name"):
        ev.name(0, "two words")


np = pytest.importorskip("numpy")

ROOT = Path(__file__).resolve().parents[1]


def _notebook(prose: str, table: str) -> dict:
    return {"cells": [{"cell_type": "markdown", "metadata": {}, "source": [prose]},
                      {"cell_type": "code", "metadata": {}, "source": ["ev.table()"],
                       "outputs": [{"output_type": "execute_result", "metadata": {},
                                    "data": {"text/markdown": [table]}}]}]}


def test_the_links_of_anchored_phrases_move_to_their_rows(tmp_path):
    import evidence_links as el

    prose = ("FD is [{glue:text}`ch99_fd_words`](#ch99-evidence), KID is\n"
             "[{glue:text}`ch99_kid_words`](#ch99-evidence) and the mean\n"
             "[{glue:text}`ch99_mean:.2f` lower](#ch99-evidence).\n")
    table = '| <a id="ch99_fd_words" name="ch99_fd_words"></a>FD | lower |\n' \
            '| <a id="ch99_mean" name="ch99_mean"></a>mean | lower |\n'
    nb = tmp_path / "99_x.ipynb"
    nb.write_text(json.dumps(_notebook(prose, table)))
    (tmp_path / "99_x.md").write_text("---\njupytext: {}\n---\n\n" + prose)
    assert el.main(["--check", str(nb)]) == 1  # two links could land on their rows
    assert el.main([str(nb)]) == 0
    want = ("FD is [{glue:text}`ch99_fd_words`](#ch99_fd_words), KID is\n"
            "[{glue:text}`ch99_kid_words`](#ch99-evidence) and the mean\n"
            "[{glue:text}`ch99_mean:.2f` lower](#ch99_mean).\n")
    assert "".join(json.loads(nb.read_text())["cells"][0]["source"]) == want
    assert (tmp_path / "99_x.md").read_text().endswith(want)
    assert el.main(["--check", str(nb)]) == 0  # a second run changes nothing


def test_every_stored_table_link_of_an_anchored_phrase_lands_on_its_row():
    import evidence_links as el

    books = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    could = {p.name: el.rewire(p, check=True) for p in books}
    assert not any(could.values()), (
        f"links to a whole evidence table whose row has an anchor: "
        f"{ {k: v for k, v in could.items() if v} }; run tools/evidence_links.py on them")
    for p in books:  # and every link to a row finds the row in the stored run
        nb = json.loads(p.read_text())
        prose = "".join("".join(c["source"]) for c in nb["cells"]
                        if c["cell_type"] == "markdown")
        rows = re.findall(r"\{glue:text\}`([\w-]+)[^`]*`[^\]]*\]\(#\1\)", prose)
        missing = sorted(set(rows) - el.row_anchors(nb))
        assert not missing, f"{p.name}: links to rows its stored tables lack: {missing}"


def test_a_verdict_pickles_and_copies_as_its_phrase():
    import copy
    import pickle

    rng = np.random.default_rng(1)
    a = rng.normal(size=20)
    v = Evidence("ch99-evidence").verdict("x", paired(a, a + rng.normal(size=20)))
    for back in (pickle.loads(pickle.dumps(v)), copy.deepcopy(v), copy.copy(v)):
        assert back == str(v) and type(back) is str

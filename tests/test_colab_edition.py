"""The Colab edition (tools/colab_edition.py): its checker on planted defects, and the
editions of every chapter, built from the stored notebooks and this test run's build of the
book (tests/conftest.py's `built_book`, shared with test_book), against what its pages show."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("colab_edition", ROOT / "tools" / "colab_edition.py")
ce = importlib.util.module_from_spec(spec)
sys.modules["colab_edition"] = ce
spec.loader.exec_module(ce)

CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
REF = "0123456789abcdef0123456789abcdef01234567"  # the commit the install cells pin here
BASE = "https://owner.github.io/name/"

# One defect each, and a word of the report that names it.
DEFECTS = {
    "role": ("As shown {cite}`kingma2014auto`, it works.", "MyST role"),
    "role in HTML": ("<summary>{eq}`ch1-x`</summary>", "MyST role in HTML"),
    "directive fence": ("```{note}\nA note.\n```", "directive fence"),
    "colon fence": (":::{admonition} Solution\n:class: dropdown\nIt is 2.\n:::",
                    "colon fence"),
    "target line": ("(ch1-protocol)=\n## The protocol", "target line"),
    "equation label": ("$$\nx = 1\n$$ (ch1-one)", "equation label"),
    "unbalanced $": ("It costs $x + 1 to run.", "unbalanced $:"),
    "comment": ("% a note to the authors\nText.", "MyST comment"),
    "anchor of the notebook": ("See [the evidence](#ch16-evidence).", "anchor of the notebook"),
    "unbalanced $$": ("$$\nx = 1\n\nand so on.", "unbalanced $$"),  # last: all after is maths
}
CLEAN = """# A chapter

Text with $x_t$ and $$y = 1$$ inline, a link ([Hyvärinen 2005](https://example.org/b)),
code `{cite}` and `$`, a dollar sign \\$ and a [page](https://owner.github.io/name/p.html#a).

$$
z = 1 \\tag{1.1}
$$

<details>
<summary>Solution, for $x$</summary>

```python
print("{py:func}`f`", "$")
```

</details>
"""


def test_checker_catches_each_planted_defect():
    for name, (text, word) in DEFECTS.items():
        found = ce.problems(f"Some text.\n\n{text}\n")
        assert any(word in p for p in found), (name, found)
    everything = "\n\n".join(text for text, _ in DEFECTS.values())
    found = ce.problems(everything)
    for name, (_, word) in DEFECTS.items():
        assert any(word in p for p in found), (name, found)


def test_checker_passes_clean_markdown():
    assert ce.problems(CLEAN) == []


def test_checker_finds_links_the_site_lacks(tmp_path):
    (tmp_path / "p.html").write_text('<p id="a">x</p>')
    site = ce.Site(BASE, tmp_path)
    assert ce.problems(CLEAN, site) == []
    lacks = ce.problems(f"[x]({BASE}p.html#b) and [y]({BASE}q.html)\n", site)
    assert len(lacks) == 2 and "anchor the built site lacks" in lacks[0] \
        and "page the built site lacks" in lacks[1]


def test_online_book_from_the_repository():
    assert ce.online_book("https://github.com/Owner/name") == "https://owner.github.io/name/"
    assert ce.online_book().endswith("/") and ce.online_book().startswith("https://")


def test_directives_become_html_around_markdown():
    book = ce.Book(ce.Site(BASE), ce.Site(""), {}, "https://github.com/owner/name", REF)
    chapter = ce.Chapter(book, "notebooks/01_x.html", {"v": "0.123"})
    text = chapter.markdown(":::{admonition} Solution\n:class: dropdown\n$x$ is "
                            "{glue:text}`v:.2f`.\n```python\nx = 1\n```\n:::\nAfter.\n\n"
                            ":::{note}\n$$\ny\n$$\n:::\n")
    assert "<details>\n<summary>Solution</summary>\n\n$x$ is 0.12." in text
    assert "```python\nx = 1\n```\n\n</details>\n\nAfter." in text
    assert "<blockquote>\n\n**Note**\n\n$$\ny\n$$\n\n</blockquote>" in text
    assert ce.problems(text) == [] and chapter.glued == [("v", "0.12")]


def _glue_output(name, mime, value):
    """What `glue(name, value, display=False)` stores."""
    return nbformat.v4.new_output(
        "display_data", data={f"application/papermill.record/{mime}": value},
        metadata={"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}})


def test_a_planted_notebook(tmp_path):
    """The directives the book does not use yet: glue:figure, figure, math, code-block."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# T\n\n[![Open In Colab](x.svg)](y)\n\n"
                                      "It is {glue}`a:.1f`."),
        nbformat.v4.new_code_cell('glue("a", 1.25)\nglue("fig", fig)', metadata={
            "tags": ["remove-cell"]}, outputs=[
            _glue_output("a", "text/plain", "1.25"),
            _glue_output("fig", "image/png", "iVBORw0KGgo=")]),
        nbformat.v4.new_markdown_cell(
            ":::{glue:figure} fig\nThe glued figure.\n:::\n\n"
            "```{math}\n:label: one\nx = 1\n```\n\nSo {eq}`one`, {numref}`a-fig`.\n\n"
            "```{figure} img/a.png\n:alt: A\n:name: a-fig\n\nA caption.\n```\n\n"
            "```{code-block} python\n:linenos:\nx = 1\n```\n\n% a comment\n(lab)=\n## H"),
    ]
    nb.metadata["book"] = {"execution": {"profile_env": "cpu", "cpus": 2, "machine": "x86"}}
    path = tmp_path / "01_tiny.ipynb"
    nbformat.write(nb, path)
    book = ce.Book(ce.Site(BASE), ce.index_sources([path]), {},
                   "https://github.com/owner/name", REF)
    target, edition, chapter = ce.write_edition(path, book, tmp_path / "out")
    first, code, second = edition["cells"]
    assert "(the `cpu` profile on a 2-core x86 machine)" in first["source"]
    assert "It is 1.2." in first["source"]
    assert code["source"].startswith(f"# @title {ce.FORM_TITLES['remove-cell']}\n")
    assert code["metadata"]["cellView"] == "form"
    assert second["attachments"] == {"fig.png": {"image/png": "iVBORw0KGgo="}}
    text = second["source"]
    for shown in ("![fig](attachment:fig.png)\n\nThe glued figure.", "x = 1\n\\tag{1.1}$$",
                  f"So [(1.1)]({BASE}notebooks/01_tiny.html#equation-one), "
                  f"[Fig. 1.1]({BASE}notebooks/01_tiny.html#a-fig).",
                  f"![A](https://raw.githubusercontent.com/owner/name/{REF}/notebooks/img/a.png)"
                  "\n\n**Fig. 1.1.** A caption.", "```python\nx = 1\n```", "\n\n## H"):
        assert shown in text, (shown, text)
    assert ce.problems(text) == [] and chapter.unresolved == []


# --- the editions of the book's chapters -------------------------------------------------

@pytest.fixture(scope="module")
def editions(built_book, tmp_path_factory):
    """Every chapter's edition, built once from this tree's site: (book, {stem: (source
    nb, edition nb, Chapter, its file)})."""
    book = ce.load_book(built_book, REF)
    out = tmp_path_factory.mktemp("colab")
    built = {}
    for path in CHAPTERS:
        target, nb, chapter = ce.write_edition(path, book, out)
        built[path.stem] = (json.loads(path.read_text()), nb, chapter, target)
    return book, built


def _markdown(nb):
    return [ce._source(c) for c in nb["cells"] if c["cell_type"] == "markdown"]


@pytest.mark.slow
def test_every_edition_is_clean(editions):
    book, built = editions
    assert len(built) == len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    for stem, (source, nb, chapter, target) in built.items():
        nbformat.validate(nbformat.read(target, as_version=4))
        for text in _markdown(nb):
            assert ce.problems(text) == [], (stem, ce.problems(text), text[:300])
        assert chapter.unresolved == [], (stem, chapter.unresolved)
        _check_code_cells(stem, source, nb)
        _check_header(stem, source, nb, book)


def _check_code_cells(stem, source, nb):
    """Hidden code is a form; every other code cell and every output is the book's."""
    edited = {c["id"]: c for c in nb["cells"] if c["cell_type"] == "code"}
    for cell in (c for c in source["cells"] if c["cell_type"] == "code"):
        new = edited[cell["id"]]
        assert new["outputs"] == cell["outputs"], (stem, cell["id"])
        tags = cell["metadata"].get("tags", [])
        if set(tags) & set(ce.FORM_TITLES):
            assert new["metadata"]["cellView"] == "form", (stem, cell["id"])
            assert new["source"].startswith("# @title "), (stem, cell["id"])
        elif "SPEC = " not in ce._source(cell):
            assert ce._source(new) == ce._source(cell), (stem, cell["id"])
            assert new["metadata"] == cell["metadata"], (stem, cell["id"])


def _check_header(stem, source, nb, book):
    """The badge opens the edition; the install cell pins the commit; the run is named."""
    first = _markdown(nb)[0]
    assert f"/blob/{ce.EDITION_BRANCH}/notebooks/{stem}.ipynb)" in first, stem
    code = "\n".join(ce._source(c) for c in nb["cells"] if c["cell_type"] == "code")
    assert f"SPEC = 'companion @ git+{book.url}@{REF}'" in code, stem
    glued = ce.GLUE_ROLE.search("\n".join(_markdown(source)))
    assert ("are the book's stored run (the `" in first) == bool(glued), stem


@pytest.mark.slow
def test_editions_are_deterministic(editions, tmp_path):
    book, built = editions
    for stem in ("01_autoencoders", "16_scores_guidance"):
        target = ce.write_edition(ROOT / "notebooks" / f"{stem}.ipynb", book, tmp_path)[0]
        assert target.read_bytes() == built[stem][3].read_bytes(), stem


@pytest.mark.slow
def test_links_resolve_on_the_built_site(editions):
    book, built = editions
    for stem, (_, nb, _, _) in built.items():
        for text in _markdown(nb):
            assert ce.problems(text, book.site) == [], (stem, ce.problems(text, book.site))


@pytest.mark.slow
def test_numbers_from_the_sources_match_the_site(editions):
    """The fallback for a stale site numbers as Sphinx does, where the page is current."""
    book, built = editions
    pages = {f"notebooks/{s}.html" for s in built}
    for table in ("equations", "numbers"):
        site, sources = getattr(book.site, table), getattr(book.sources, table)
        for label, (href, number) in sources.items():
            if href.split("#")[0] in pages:
                assert site.get(label) == (href, number), (label, site.get(label), number)


PASTED = re.compile(r'<span class="pasted-text">(.*?)</span>', re.S)
CITED = re.compile(r'bibliography\.html#(id\d+)')


def _plain(text: str) -> str:
    """Text as read: tags dropped, whitespace collapsed, and quotes straight (Sphinx's
    smartquotes curls the page's; Colab shows the source's, in the glued text as around it)."""
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    return " ".join(text.translate(str.maketrans("‘’“”", "''\"\"")).split())


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["06_vae_mnist", "10_comparison", "12_inpainting",
                                  "16_scores_guidance", "20_judging_samples"])
def test_glued_values_and_citations_match_the_web_page(editions, stem):
    book, built = editions
    page = (book.site.root / "notebooks" / f"{stem}.html").read_text()
    _, nb, chapter, _ = built[stem]
    assert [_plain(t) for _, t in chapter.glued] == [_plain(t) for t in PASTED.findall(page)]
    text = "\n".join(_markdown(nb))
    assert all(ce._escape(t) in text for _, t in chapter.glued)
    assert CITED.findall(text) == CITED.findall(page)


def test_display_math_lines_never_read_as_list_items():
    text = "Text\n- a real item\n\n$$\na = b\n  + c\n- d \\\\\n1. e\n$$\n\n* item"
    out = ce.guard_display_math(text)
    assert out == ("Text\n- a real item\n\n$$\na = b\n  {}+ c\n{}- d \\\\\n{}1. e\n$$"
                   "\n\n* item")
    assert ce.guard_display_math(out) == out  # idempotent

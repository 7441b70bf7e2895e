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
from markdown_it import MarkdownIt

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
    "anchor without target": ("See [the evidence](#ch16-evidence).", "anchor the notebook lacks"),
    "formula across lines": ("So $a +\nb$ holds.", "inline formula across a line break"),
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


def test_checker_finds_links_to_a_chapters_web_page():
    """From the edition, a chapter is a notebook: its own anchors, another's edition."""
    site = ce.Site(BASE)
    for href in (f"{BASE}notebooks/01_x.html#a", f"{BASE}notebooks/02_y.html"):
        found = ce.problems(f"See [there]({href}).\n", site)
        assert len(found) == 1 and "a chapter's web page" in found[0], found
    assert ce.problems(f"The [API]({BASE}api/x.html) and [a](#t).\n\n<a name=\"t\"></a>x\n",
                       site) == []


def test_inline_formulas_are_joined_outside_code():
    text = "A $x +\n  y$ and $$a\nb$$ and `$c\nd$`\n\n```\n$e\nf$\n```\n- \\$5 or\n  $g$\n"
    out = ce.join_inline_math(text)
    assert out == "A $x + y$ and $$a\nb$$ and `$c\nd$`\n\n```\n$e\nf$\n```\n- \\$5 or\n  $g$\n"
    assert ce.broken_inline_math(text) == ["$x +\n  y$"] and ce.broken_inline_math(out) == []


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
    """The directives the book does not use yet (glue:figure, figure, math, code-block), and
    where links go: into the notebook, to another chapter's edition, to the references."""
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
            "```{code-block} python\n:linenos:\nx = 1\n```\n\n% a comment\n(lab)=\n## H\n\n"
            "See [H](#lab), {eq}`two` of chapter 2, {cite:t}`kingma2014auto`; so $a +\nb$."),
    ]
    nb.metadata["book"] = {"execution": {"profile_env": "cpu", "cpus": 2, "machine": "x86"}}
    path, other = tmp_path / "01_tiny.ipynb", tmp_path / "02_other.ipynb"
    nbformat.write(nb, path)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "# U\n\n$$\ny\n$$ (two)")]), other)
    refs = {"kingma2014auto": ce.Reference("kingma2014auto", ("Kingma", "Welling"), "2014",
                                           "Auto-encoding variational Bayes")}
    book = ce.Book(ce.Site(BASE), ce.index_sources([path, other]), refs,
                   "https://github.com/owner/name", REF)
    target, edition, chapter = ce.write_edition(path, book, tmp_path / "out")
    first, code, second, references = edition["cells"]
    assert "(the `cpu` profile on a 2-core x86 machine)" in first["source"]
    assert "It is 1.2." in first["source"]
    assert code["source"].startswith(f"# @title {ce.FORM_TITLES['remove-cell']}\n")
    assert code["metadata"]["cellView"] == "form"
    assert second["attachments"] == {"fig.png": {"image/png": "iVBORw0KGgo="}}
    text = second["source"]
    edition_of = "https://colab.research.google.com/github/owner/name/blob/colab/notebooks/"
    for shown in ("![fig](attachment:fig.png)\n\nThe glued figure.",
                  '<a id="equation-one" name="equation-one"></a>$$\nx = 1\n\\tag{1.1}$$',
                  "So [(1.1)](#equation-one), [Fig. 1.1](#a-fig).",
                  f"![A](https://raw.githubusercontent.com/owner/name/{REF}/notebooks/img/a.png)"
                  '\n\n<a id="a-fig" name="a-fig"></a>**Fig. 1.1.** A caption.',
                  "```python\nx = 1\n```", '\n\n## H <a id="lab" name="lab"></a>\n',
                  f"See [H](#lab), [(2.1)]({edition_of}02_other.ipynb#equation-two) of chapter 2, "
                  "[Kingma and Welling (2014)](#kingma2014auto); so $a + b$."):
        assert shown in text, (shown, text)
    assert references["source"].startswith(
        '## References\n\n- <a id="kingma2014auto" name="kingma2014auto"></a>Kingma, Welling '
        "(2014). Auto-encoding variational Bayes.\n")
    assert ce.notebook_problems(edition, book.site) == ([], []) and chapter.unresolved == []


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
        own, _ = ce.notebook_problems(nb)
        assert own == [], (stem, own)
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
        assert ce.notebook_problems(nb, book.site) == ([], []), stem


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
CITED = re.compile(r'bibliography\.html#(id\d+)')  # a citation on the page
CITES = re.compile(r"\]\(#([a-z]+\d{4}[a-z]*)\)")  # and in the edition: its cite key


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
    key_of = {href.partition("#")[2]: key for key, href in book.site.bib.items()}
    assert CITES.findall(text) == [key_of[i] for i in CITED.findall(page)]


def test_display_math_lines_never_read_as_list_items():
    text = "Text\n- a real item\n\n$$\na = b\n  + c\n- d \\\\\n1. e\n$$\n\n* item"
    out = ce.guard_display_math(text)
    assert out == ("Text\n- a real item\n\n$$\na = b\n  {}+ c\n{}- d \\\\\n{}1. e\n$$"
                   "\n\n* item")
    assert ce.guard_display_math(out) == out  # idempotent


# --- the editions are self-contained, read here without the generator's own checker -------

MD = MarkdownIt("commonmark")
TARGETS = re.compile(r'<a\b[^>]*?\b(?:name|id)="([^"]+)"')
CITE_ROLE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
CHAPTER_PAGE = re.compile(r"notebooks/\d\d_[\w-]+\.html")


def _hrefs(markdown: str) -> list[str]:
    """Every link and image address of a Markdown text, HTML's included."""
    found = []
    for t in MD.parse(markdown):
        html_parts = [t.content] if t.type == "html_block" else []
        for kid in t.children or []:
            if kid.type in ("link_open", "image"):
                found.append(kid.attrs.get("href") or kid.attrs.get("src") or "")
            html_parts += [kid.content] if kid.type == "html_inline" else []
        found += [h for part in html_parts for h in re.findall(r'\b(?:href|src)="([^"]*)"', part)]
    return found


def _inline_formulas_across_lines(markdown: str) -> list[str]:
    """The `$...$` formulas that hold a line break, outside code blocks and code spans."""
    code = {n for t in MD.parse(markdown) if t.type in ("fence", "code_block") and t.map
            for n in range(*t.map)}
    prose = "\n".join(line for n, line in enumerate(markdown.split("\n")) if n not in code)
    prose = re.sub(r"(`+)(?!`).+?(?<!`)\1(?!`)", "", prose, flags=re.S).replace("\\$", "")
    return [m[0] for m in re.finditer(r"\$\$.+?\$\$|\$[^$]+\$", prose, re.S)
            if not m[0].startswith("$$") and "\n" in m[0]]


@pytest.mark.slow
def test_editions_are_self_contained(editions):
    """A student with a chapter open in Colab stays in it to read its equations, figures,
    evidence rows and sections: no link opens a chapter's web page; every `#name` link
    has its target in the notebook, and a link to another chapter's edition a target in
    that edition; each citation links its cite key's entry in the references the notebook
    ends with, which list exactly the works the chapter cites; no inline formula spans a
    line break (issue 95)."""
    book, built = editions
    owner_name = book.url.removeprefix("https://github.com/")
    edition_of = (f"https://colab.research.google.com/github/{owner_name}/blob/"
                  f"{ce.EDITION_BRANCH}/notebooks/")
    assert ce.colab.colab_url("notebooks/01_autoencoders.ipynb") == \
        edition_of + "01_autoencoders.ipynb"  # where the badges point
    names = {stem: [n for text in _markdown(nb) + ce.links.markdown_outputs(nb)
                    for n in TARGETS.findall(text)]  # evidence rows: in the tables shown
             for stem, (_, nb, _, _) in built.items()}
    followed = {"#": 0, "edition": 0, "citation": 0}
    for stem, (source, nb, _, _) in built.items():
        cells = _markdown(nb)
        assert len(names[stem]) == len(set(names[stem])), (stem, "a target twice")
        hrefs = [h for text in cells for h in _hrefs(text)]
        web = [h for h in hrefs if h.startswith(book.base)
               and CHAPTER_PAGE.fullmatch(h.removeprefix(book.base).partition("#")[0])]
        assert web == [], (stem, web[:5])
        inside = [h[1:] for h in hrefs if h.startswith("#")]
        assert [a for a in inside if a not in names[stem]] == [], stem
        across = [h.removeprefix(edition_of).split("#") for h in hrefs
                  if h.startswith(edition_of) and "#" in h]
        assert [(o, a) for o, a in across if a not in names[o.removesuffix(".ipynb")]] == [], stem
        cited = {k.strip() for text in _markdown(source) for body in CITE_ROLE.findall(text)
                 for k in body.split(",")}
        listed = [c for c in cells if c.startswith("## References")]
        assert set(TARGETS.findall(listed[-1] if listed else "")) == cited, stem
        assert {a for a in inside if a in book.refs} == cited, stem
        assert not [h for h in hrefs if "bibliography.html#" in h], stem
        broken = [f for text in cells for f in _inline_formulas_across_lines(text)]
        assert broken == [], (stem, broken[:3])
        followed["#"] += len(inside)
        followed["edition"] += len(across)
        followed["citation"] += len(cited)
    assert min(followed.values()) > 0, followed  # each kind of link was there to check


def test_a_link_to_an_evidence_row_finds_the_anchor_its_table_shows():
    prose = "The gap is [lower](#ch99_fd_words)."
    table = '| <a id="ch99_fd_words" name="ch99_fd_words"></a>FD, A - B | lower |\n'
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": [prose]},
                    {"cell_type": "code", "metadata": {}, "source": ["ev.table()"],
                     "outputs": [{"output_type": "execute_result", "metadata": {},
                                  "data": {"text/markdown": [table]}}]}]}
    assert ce.notebook_problems(nb) == ([], [])
    nb["cells"][1]["outputs"] = []  # a table stored without its rows' anchors
    own, _ = ce.notebook_problems(nb)
    assert any("anchor the notebook lacks" in p for p in own), own

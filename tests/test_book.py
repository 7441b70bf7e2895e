"""A -W build of the book from the stored outputs, and what the built pages must contain."""

import re
from pathlib import Path

import pytest
import yaml

from companion.run import colab

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def html(built_book):
    """The one -W -n build of this test run (tests/conftest.py), shared with test_browser."""
    return built_book


def test_every_toc_page_is_built(html):
    from tests.test_notebooks import toc_files
    for f in toc_files():
        assert (html / f"{f}.html").exists(), f


def test_chapter_pages_have_math_figures_and_colab(html):
    from tests.test_notebooks import toc_files
    for nb in [ROOT / f"{f}.ipynb" for f in toc_files() if f.startswith("notebooks/")]:
        page = (html / "notebooks" / f"{nb.stem}.html").read_text()
        assert 'class="math' in page, f"{nb.stem}: no rendered math"
        # figures with alt text (cell metadata) or without: either way a PNG under _images
        assert re.search(r'<img [^>]*src="\.\./_images/[^"]+\.png"', page), \
            f"{nb.stem}: no PNG figure"
        assert colab.colab_url(f"notebooks/{nb.name}") in page, f"{nb.stem}: Colab link"


def test_bibliography_lists_the_references(html):
    page = (html / "book" / "bibliography.html").read_text()
    for name in ("Kingma", "Rezende", "Doersch", "Burda", "Sønderby", "Vahdat", "Ho",
                 "Song", "Luo", "Chan"):
        assert name in page, name


def test_cdn_config_for_make_book_without_npm(tmp_path, monkeypatch):
    """`make book` without npm builds with tools/mathjax_cdn.py's copy of _config.yml:
    as Jupyter Book reads it, MathJax comes from the CDN, no local copy is expected, and the
    local extension still resolves although the copy lives in another folder."""
    import subprocess
    import sys

    from jupyter_book.config import get_final_config

    out = tmp_path / "cdn" / "_config.yml"
    make = (ROOT / "Makefile").read_text()
    version = re.search(r"^MATHJAX_VERSION := (\S+)$", make, re.M).group(1)
    subprocess.run([sys.executable, str(ROOT / "tools/mathjax_cdn.py"), version, str(out)],
                   check=True)
    monkeypatch.setattr(sys, "path", list(sys.path))
    config, _ = get_final_config(user_yaml=out, cli_config={"latex_individualpages": False},
                                 sourcedir=ROOT, raise_on_invalid=True)
    assert config["mathjax_path"] == (f"https://cdn.jsdelivr.net/npm/mathjax@{version}/"
                                      "tex-mml-chtml.js")
    assert "html_extra_path" not in config
    # MathJax 4 then takes its font from the CDN as well, not from the missing local copy
    assert "fonts" not in config["mathjax3_config"]["loader"]["paths"]
    assert config["mathjax3_config"]["output"]["displayOverflow"] == "linebreak"
    assert "execution_status" in config["extensions"]
    assert str((ROOT / "book" / "_ext").resolve()) in sys.path
    assert "mathjax_cdn.py $(MATHJAX_VERSION)" in make and "--config _build/cdn" in make


EQNO = re.compile(r'id="equation-([^"]+)"[^>]*>\s*<span class="eqno">\(([^)<]+)\)')
EQREF = re.compile(r'<a class="reference internal" href="([^"#]*)#equation-([^"]+)"[^>]*>'
                   r'(?:<span[^>]*>)?\(([^)<]+)\)')


def numbered_chapters() -> list[str]:
    """The files of the numbered part of _toc.yml, in order: chapter 1, 2, ..."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    parts = [p for p in toc.get("parts", []) if p.get("numbered")]
    assert len(parts) == 1, "one numbered part (the chapters) in _toc.yml"
    return [c["file"] for c in parts[0]["chapters"]]


def test_equations_are_numbered_per_chapter(html):
    """Chapter n's equations read (n.1), (n.2), ... in order, not numbered book-wide."""
    chapters = numbered_chapters()
    assert all(f.startswith("notebooks/") for f in chapters)
    for n, f in enumerate(chapters, start=1):
        numbers = [num for _, num in EQNO.findall((html / f"{f}.html").read_text())]
        assert numbers == [f"{n}.{k}" for k in range(1, len(numbers) + 1)], \
            f"{f}: equation numbers {numbers[:6]}, expected ({n}.1), ({n}.2), ..."


def test_every_eq_reference_resolves_to_its_equation_number(html):
    """Each {eq} role in a chapter's source is a link in the built page, showing the
    number that its target equation carries."""
    chapters = numbered_chapters()
    number = {}
    for f in chapters:
        number.update(EQNO.findall((html / f"{f}.html").read_text()))
    for f in chapters:
        page = (html / f"{f}.html").read_text()
        shown = {(label, num) for _, label, num in EQREF.findall(page)}
        for label, num in shown:
            assert label in number, f"{f}: reference to unknown equation {label!r}"
            assert num == number[label], \
                f"{f}: reference to {label} shows ({num}), the equation is ({number[label]})"
        cited = set(re.findall(r"\{eq\}`([^`]+)`", (ROOT / f"{f}.md").read_text()))
        linked = {label for label, _ in shown}
        assert cited <= linked, f"{f}: {{eq}} references not rendered as links: " \
                                f"{sorted(cited - linked)}"


def api_pages(html) -> list[Path]:
    return sorted((html / "book" / "api").rglob("*.html"))


def test_api_pages_document_their_modules(html):
    """Each module's page documents its functions and classes, each with its source."""
    from tests.test_api_reference import api_reference, documented_objects

    modules = sorted(api_reference.public_modules(ROOT), key=len, reverse=True)
    objects = {}
    for qual, _ in documented_objects():
        module = next(m for m in modules if qual.startswith(m + "."))
        objects.setdefault(module, []).append(qual)
    pages = {p.relative_to(html / "book" / "api").with_suffix("").as_posix(): p.read_text()
             for p in api_pages(html)}
    for module, quals in objects.items():
        page = pages[module.removeprefix("companion.").replace(".", "/")]
        absent = [q for q in quals if f'id="{q}"' not in page]
        assert not absent, f"{module}: not documented on its page: {absent}"
        assert "viewcode-link" in page, f"{module}: no [source] link"


def test_equations_and_functions_link_both_ways(html):
    """Each {py:...} role of a chapter is a link to its object on the API pages; each
    docstring's `Book: :eq:` is a link from the API page to the equation, showing its
    number (chapter.n)."""
    from tests.test_api_reference import CITE, ROLE, documented_objects

    number = {}
    for f in numbered_chapters():
        for label, num in EQNO.findall((html / f"{f}.html").read_text()):
            number[label] = (f, num)
    for f in numbered_chapters():
        page = (html / f"{f}.html").read_text()
        for _, name in set(ROLE.findall((ROOT / f"{f}.md").read_text())):
            assert re.search(r'<a class="reference internal" href="\.\./book/api/[\w/]+\.html#'
                             + re.escape(name) + '"', page), \
                f"{f}: {name} is not a link to its entry in the API reference"
    linked = set()
    for p in api_pages(html):
        for href, label, num in EQREF.findall(p.read_text()):
            chapter, expected = number[label]
            assert href.endswith(f"{chapter}.html") and num == expected, \
                f"{p.name}: the link to {label} shows ({num}) -> {href}, expected " \
                f"({expected}) in {chapter}"
            linked.add(label)
    cited = {label for _, obj in documented_objects() for label in CITE.findall(obj.__doc__ or "")}
    assert cited <= linked, f"cited in docstrings, not linked on the API pages: {cited - linked}"

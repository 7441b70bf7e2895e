"""A -W build of the book from the stored outputs, and what the built pages must contain."""

from pathlib import Path

import pytest

from companion import colab

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
        assert '<img alt="../_images/' in page and ".png" in page, f"{nb.stem}: no PNG figure"
        assert colab.colab_url(f"notebooks/{nb.name}") in page, f"{nb.stem}: Colab link"


def test_bibliography_lists_the_references(html):
    page = (html / "book" / "bibliography.html").read_text()
    for name in ("Kingma", "Rezende", "Doersch", "Burda", "Sønderby", "Vahdat", "Ho",
                 "Song", "Luo", "Chan"):
        assert name in page, name

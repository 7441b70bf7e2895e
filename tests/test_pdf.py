"""The PDF's checks (tools/pdf_check.py), each shown to catch the defect it exists for on
planted input; and the PDF build's settings, which live in four files, kept in agreement.

The PDF itself is built and checked by `make pdf` (`.ci/run` runs it after `make test`)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, folder: str = "tools"):
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pdf_check = _load("pdf_check")
book_pdf = _load("book_pdf", "book/_ext")  # a Sphinx extension

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TARGET = CONFIG["latex"]["latex_documents"]["targetname"]


# What LaTeX and poppler print, cut down to the lines that matter.
LOG_OK = """\
This is XeTeX, Version 3.141592653-2.6-0.999995 (TeX Live 2022/Debian)
book-pdf text block: left=72.26999pt width=452.9679pt
Overfull \\hbox (1.2pt too wide) in paragraph at lines 10--12
Output written on autoencoders-to-diffusion.pdf (200 pages).
"""


def bbox(*words: tuple[float, float, str]) -> str:
    rows = "".join(f'<word xMin="{a}" yMin="100.0" xMax="{b}" yMax="110.0">{w}</word>\n'
                   for a, b, w in words)
    return (f'<html><body><doc>\n<page width="595.276" height="841.890">\n{rows}</page>\n'
            '<page width="595.276" height="841.890">\n</page>\n</doc></body></html>')


def test_log_problems_finds_errors_missing_glyphs_and_undefined_references():
    assert pdf_check.log_problems(LOG_OK) == []
    planted = LOG_OK + (
        "! Undefined control sequence.\nl.120 \\bm\n{x}\n"
        "Missing character: There is no ₁ (U+2081) in font FreeSerif/OT:script=latn;!\n"
        "LaTeX Warning: Reference `notebooks/08_diffusion_elbo:equation-q' on page 12 "
        "undefined on input line 4.\n"
        "LaTeX Warning: There were undefined references.\n")
    problems = pdf_check.log_problems(planted)
    assert len(problems) == 4, problems
    assert "Undefined control sequence" in problems[0] and "\\bm" in problems[0]
    assert "U+2081" in problems[1] and "equation-q" in problems[2]


def test_text_block_from_the_log_in_pdf_points():
    left, right = pdf_check.text_block(LOG_OK)
    assert abs(left - 72.0) < 1e-3 and abs(right - (72.0 + 452.9679 * 72 / 72.27)) < 1e-3
    try:
        pdf_check.text_block("no such line")
    except ValueError as e:
        assert "preamble" in str(e)
    else:
        raise AssertionError("a log without the text block must raise")


def test_a_word_running_into_the_margin_or_off_the_page_is_found():
    left, right = 72.0, 523.3
    inside = bbox((72.0, 110.0, "x_t"), (400.0, 524.5, "sqrt"))  # within the tolerance
    assert pdf_check.words_outside(inside, left, right) == []
    cut = bbox((72.0, 110.0, "print(x)"), (500.0, 601.2, "0.1234,"), (30.0, 60.0, "&lt;lost"))
    found = pdf_check.words_outside(cut, left, right)
    assert len(found) == 2, found
    assert found[0].startswith("p. 1: '0.1234,'") and "<lost" in found[1]


def test_missing_titles_and_question_marks():
    text = ("Contents\nChapter 8\nDiffusion as a hierarchical VAE: the bound\ntaken apart\n"
            "as in (8.3) and fig \ufb01ts\u2019 \u2013 see (??) above")
    titles = ["Diffusion as a hierarchical VAE: the bound taken apart", "fig", "fits' - see",
              "Hierarchical VAEs"]
    assert pdf_check.missing_titles(titles, text) == ["Hierarchical VAEs"]
    found = pdf_check.unresolved_references(text)
    assert len(found) == 1 and "see (??)" in found[0]
    assert pdf_check.unresolved_references(text.replace("??", "8.4")) == []


def test_front_matter_sections_carry_no_chapter_0_numbers():
    text = ("Contents\n0.1 What makes this book different . . . vi\n1.2 Data . . . 4\n"
            "  0.11 GPU notes . . . . xii\n")
    assert pdf_check.front_matter_numbers(text) == [
        "0.1 What makes this book different . . . vi", "0.11 GPU notes . . . . xii"]
    assert pdf_check.front_matter_numbers(
        "What makes this book different . . . vi\n0.5 nats\n0.25 . . . 0.75 iv\n"
        "p = 0.10\n1.1 Data . . . 4") == []


def test_pdf_images_counts_images_not_their_soft_masks():
    listing = """\
page   num  type   width height color comp bpc  enc interp  object ID x-ppi y-ppi size ratio
--------------------------------------------------------------------------------------------
   5     0 image     800   600  rgb     3   8  image  no        12  0   144   144 20.1K 1.4%
   5     1 smask     800   600  gray    1   8  image  no        12  0   144   144  1.2K 0.3%
   9     2 image     400   300  rgb     3   8  image  no        20  0   144   144 10.0K 2.8%
"""
    assert pdf_check.pdf_images(listing) == 2


def test_html_figures_skips_removed_cells(tmp_path):
    png = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "F"}}
    cells = [{"cell_type": "code", "metadata": {}, "outputs": [png, png]},
             {"cell_type": "code", "metadata": {"tags": ["remove-output"]}, "outputs": [png]},
             {"cell_type": "code", "metadata": {"tags": ["remove-cell"]}, "outputs": [png]},
             {"cell_type": "code", "metadata": {"tags": ["hide-input"]}, "outputs": [png]},
             {"cell_type": "markdown", "metadata": {}, "source": ["# A title\n"]}]
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "a.ipynb").write_text(json.dumps({"cells": cells}))
    assert pdf_check.html_figures(tmp_path, ["nb/a"]) == 3
    assert pdf_check.page_title(tmp_path, "nb/a") == "A title"


def test_every_toc_page_has_a_title_to_look_for_chapters_with_their_number():
    files = pdf_check.toc_files()
    titles = pdf_check.expected_titles()
    assert len(titles) == len(files) and all(titles)
    # every numbered chapter, whatever _toc.yml lists today, with the web's number
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    chapters = [c["file"] for p in toc["parts"] if p.get("numbered") for c in p["chapters"]]
    assert chapters and chapters == pdf_check.numbered_files()
    for n, f in enumerate(chapters, start=1):
        assert titles[files.index(f)] == f"{n} {pdf_check.page_title(ROOT, f)}"
    # a chapter numbered as LaTeX would without front matter (notation was chapter 6) fails
    shifted = "Contents\n18 Diffusion as a hierarchical VAE: the bound taken apart 144"
    assert pdf_check.missing_titles(["8 Diffusion as a hierarchical VAE: the bound taken "
                                     "apart"], shifted)


def test_pdf_settings_agree_across_the_files():
    """The target name in _config.yml is the PDF that `make pdf`, the Pages workflow and the
    download button use; the TeX packages that .ci/run installs are those `make pdf` names."""
    assert CONFIG["latex"]["latex_engine"] == "xelatex"
    assert "book_pdf" in CONFIG["sphinx"]["local_extensions"]
    name = Path(TARGET).with_suffix(".pdf").name
    make = (ROOT / "Makefile").read_text()
    assert f"_build/latex/{name}" in make
    pages = (ROOT / ".github" / "workflows" / "pages.yml").read_text()
    assert f"_build/latex/{name}" in pages and f"_build/html/{name}" in pages
    packages = re.search(r"^PDF_PACKAGES\s*:=\s*(.+)$", make, re.M).group(1).split()
    ci = (ROOT / ".ci" / "run").read_text()
    for package in packages:
        assert package in ci, f".ci/run does not install {package}"
        assert package in pages, f"the Pages workflow does not install {package}"


def test_the_text_block_line_is_in_the_preamble():
    preamble = CONFIG["sphinx"]["config"]["latex_elements"]["preamble"]
    assert "book-pdf text block:" in preamble and "left=" in preamble and "width=" in preamble


def test_download_button_gets_the_book_pdf():
    class Config:
        latex_documents = [("book/intro", TARGET, "T", "A", "manual")]

    class App:
        config = Config()

    own = {"type": "link", "url": "_sources/x.ipynb", "label": "download-notebook-button"}
    context = {"pathto": lambda name, resource: f"../{name}",
               "header_buttons": [{"label": "download-buttons", "buttons": [own]},
                                  {"label": "fullscreen-button"}]}
    book_pdf.add_pdf_to_download_button(App(), "notebooks/x", "page.html", context, None)
    buttons = context["header_buttons"][0]["buttons"]
    assert buttons[0]["url"] == "../" + Path(TARGET).with_suffix(".pdf").name
    assert buttons[1] is own and len(buttons) == 2


def test_version_is_the_git_tag_or_commit():
    version = book_pdf.git_version(ROOT)
    if (ROOT / ".git").exists():
        assert version and re.fullmatch(r"[\w.\-+]+", version), version
    assert book_pdf.git_version(Path("/")) is None


@pytest.mark.slow
def test_every_built_page_offers_the_book_pdf(built_book):
    """The -W -n HTML build of this test run (tests/conftest.py): each page's download button
    links the PDF at the site's root (sphinx-book-theme's link button markup)."""
    name = Path(TARGET).with_suffix(".pdf").name
    link = re.compile(r'<a href="([^"]+)" target="_blank"\s+class="[^"]*'
                      r'btn-download-book-pdf-button')
    for page in [built_book / "book" / "intro.html",
                 built_book / "notebooks" / "08_diffusion_elbo.html"]:
        found = link.findall(page.read_text())
        assert found == [f"../{name}"], (page.name, found)

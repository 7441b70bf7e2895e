"""Checks the book's PDF page by page (`make pdf` runs it after building; `.ci/run` too).

    python tools/pdf_check.py _build/latex/autoencoders-to-diffusion.pdf

What fails it, each read from the PDF or from LaTeX's log beside it:
- a LaTeX error (a line starting with "!"), a character the font lacks ("Missing
  character"), an undefined reference or citation;
- "??" anywhere in the text (what LaTeX prints for a reference it could not resolve);
- the title of a page in _toc.yml (every chapter, the front and back matter) not found, or
  a chapter's title without its number from the web (chapter n of the numbered part is
  "n Title" in the contents, as on the web; its equations are (n.k));
- a word that reaches outside the text block: code or output that runs into the margin or
  off the page, which the reader cannot see whole (`pdftotext -bbox`, against the text
  block that the preamble writes into the log, see _config.yml);
- fewer images in the PDF (`pdfimages -list`) than PNG figures the HTML pages show.

A PDF that cannot be checked at all (missing, a directory, empty, not a PDF, unreadable to
poppler, no pages, no log beside it) is one line saying what is wrong with which file, and
exit status 2.

Needs poppler-utils (pdftotext, pdfimages, pdfinfo).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# The preamble's \typeout (_config.yml, latex preamble) of the text block, in TeX points.
TEXT_BLOCK = re.compile(r"book-pdf text block: left=([\d.]+)pt width=([\d.]+)pt")
TEX_PT_PER_BP = 72.27 / 72
# How far (PDF points) a glyph may poke past the text block: a bold letter's side bearing,
# a wrapped line's continuation arrow. A cut code line reaches much further.
TOLERANCE_BP = 2.0


def toc_files(root: Path = ROOT) -> list[str]:
    """Every page of _toc.yml in order: the root, then each part's chapters."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


def numbered_files(root: Path = ROOT) -> list[str]:
    """The chapters: the pages of _toc.yml's numbered part, in order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    return [c["file"] for part in toc.get("parts", []) if part.get("numbered")
            for c in part.get("chapters", [])]


def expected_titles(root: Path = ROOT) -> list[str]:
    """Each page's title as the PDF must show it: "n Title" for chapter n."""
    number = {f: n for n, f in enumerate(numbered_files(root), start=1)}
    return [f"{number[f]} {page_title(root, f)}" if f in number else page_title(root, f)
            for f in toc_files(root)]


def page_title(root: Path, file: str) -> str:
    """A page's first-level heading: the .ipynb's first Markdown cell, else the .md."""
    nb = root / f"{file}.ipynb"
    if nb.exists():
        cells = json.loads(nb.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = (root / f"{file}.md").read_text()
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    raise ValueError(f"{file}: no '# ' title")


def normalize(text: str) -> str:
    """Text as pdftotext gives it, reduced to what a title comparison needs: ligatures and
    typographic quotes and dashes undone, hyphenated line ends joined, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    for typo, plain in {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"',
                        "\u2013": "-", "\u2014": "-", "\u2212": "-"}.items():
        text = text.replace(typo, plain)
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", text)
    return re.sub(r"\s+", " ", text)


def missing_titles(titles: list[str], text: str) -> list[str]:
    """Titles not in the text; "8 Title" does not match inside "18 Title"."""
    plain = normalize(text)
    return [t for t in titles if not re.search(r"(?<![\w.])" + re.escape(normalize(t)), plain)]


def front_matter_numbers(text: str) -> list[str]:
    """Contents lines of sections numbered in an unnumbered chapter ("0.3 The chapters . . .
    viii": a front-matter page, roman page number): the front matter's sections carry none."""
    entry = r"(?m)^[ \t]*0\.\d+[ \t]+\S[^\n]*?(?:\.[ \t]){3,}[ .\t]*[ivxlc]+[ \t]*$"
    return [m.group(0).strip() for m in re.finditer(entry, text)]


def unresolved_references(text: str) -> list[str]:
    """Each "??" with the words around it."""
    flat = re.sub(r"\s+", " ", text)
    return [flat[max(m.start() - 50, 0):m.end() + 30] for m in re.finditer(r"\?\?", flat)]


def log_problems(log: str) -> list[str]:
    """LaTeX errors, missing glyphs, undefined references and citations in a .log."""
    problems = []
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("! "):
            problems.append(" ".join([line, *lines[i + 1:i + 3]]).strip())
        elif line.startswith("Missing character: There is no"):
            problems.append(line.strip())
        elif re.match(r"(LaTeX|Package \w+) Warning: (Reference|Citation|Hyper reference)",
                      line):
            problems.append(" ".join([line, *lines[i + 1:i + 2]]).strip())
        elif "There were undefined references" in line:
            problems.append(line.strip())
    return problems


def text_block(log: str) -> tuple[float, float]:
    """The text block's left and right edges in PDF points, from the preamble's \\typeout."""
    m = TEXT_BLOCK.search(log)
    if m is None:
        raise ValueError("the LaTeX log has no 'book-pdf text block' line: the preamble in "
                         "_config.yml (sphinx.config.latex_elements) writes it")
    left, width = (float(v) / TEX_PT_PER_BP for v in m.groups())
    return left, left + width


WORD = re.compile(r'<word xMin="([\d.]+)" yMin="[\d.]+" xMax="([\d.]+)" yMax="[\d.]+">'
                  r"(.*?)</word>")


def words_outside(bbox_html: str, left: float, right: float,
                  tolerance: float = TOLERANCE_BP) -> list[str]:
    """Every word of `pdftotext -bbox` output that reaches past the text block, with its page
    and the rest of its line: "p. 7: 'tensor([0.1,' ... (right edge 540.1 > 523.3)"."""
    found = []
    for number, page in enumerate(re.split(r"<page ", bbox_html)[1:], start=1):
        for x0, x1, word in WORD.findall(page):
            x0, x1 = float(x0), float(x1)
            if x0 < left - tolerance or x1 > right + tolerance:
                found.append(f"p. {number}: {html.unescape(word)!r} spans {x0:.1f}-{x1:.1f}, "
                             f"the text block {left:.1f}-{right:.1f}")
    return found


def html_figures(root: Path, files: list[str]) -> int:
    """PNG figures the HTML pages show: image outputs of cells not removed by a tag."""
    count = 0
    for file in files:
        nb = root / f"{file}.ipynb"
        if not nb.exists():
            continue
        for cell in json.loads(nb.read_text())["cells"]:
            tags = set(cell.get("metadata", {}).get("tags", []))
            if cell["cell_type"] != "code" or tags & {"remove-cell", "remove-output"}:
                continue
            count += sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
    return count


def pdf_images(listing: str) -> int:
    """Images placed in the PDF, from `pdfimages -list` (soft masks are not images)."""
    rows = [line.split() for line in listing.splitlines()[2:]]
    return sum(1 for row in rows if len(row) > 2 and row[2] == "image")


class Unreadable(Exception):
    """The PDF (or its log) cannot be checked at all; the message is one line naming the file."""


REBUILD = "rebuild it (make pdf)"


def run(*cmd: str) -> str:
    """A poppler command's output; its failure as Unreadable with poppler's own message."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except FileNotFoundError:
        sys.exit(f"{cmd[0]} not found: apt-get install poppler-utils")
    if done.returncode != 0:
        errors = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        said = "; ".join(dict.fromkeys(e for e in errors if "Error" in e) or errors[-1:])
        file = next(c for c in reversed(cmd) if c != "-")
        raise Unreadable(f"{file}: {cmd[0]} cannot read it "
                         f"(exit {done.returncode}: {said or 'no message'}); the file is "
                         f"damaged or incomplete, {REBUILD}")
    return done.stdout


def readable(pdf: Path) -> tuple[int, str]:
    """(pages, the LaTeX log's text) of a PDF that can be checked; Unreadable otherwise."""
    log = pdf.with_suffix(".log")
    if not pdf.exists():
        raise Unreadable(f"{pdf}: no such file; build the PDF first (make pdf) or give the "
                         "path of the one built (_build/latex/*.pdf)")
    if pdf.is_dir():
        inside = sorted(pdf.glob("*.pdf"))
        raise Unreadable(f"{pdf} is a directory, not a PDF; give the PDF's path"
                         + (f" (say {inside[0]})" if inside else ""))
    with pdf.open("rb") as f:
        head = f.read(5)
    if not head:
        raise Unreadable(f"{pdf} is empty (0 bytes): the LaTeX run that writes it stopped "
                         f"early (see {log.name}); {REBUILD}")
    if head != b"%PDF-":
        raise Unreadable(f"{pdf} is not a PDF: it starts with {head!r}, not b'%PDF-'; "
                         f"{REBUILD}")
    try:
        info = run("pdfinfo", str(pdf))
    except Unreadable as e:
        if "page count 0" not in str(e):
            raise
        raise Unreadable(f"{pdf} has no pages (pdfinfo: Invalid page count 0); {REBUILD}") \
            from None
    pages = re.search(r"(?m)^Pages:\s+(\d+)", info)
    if pages is None or int(pages.group(1)) == 0:
        raise Unreadable(f"{pdf} has no pages (pdfinfo: Pages: "
                         f"{pages.group(1) if pages else 'missing'}); {REBUILD}")
    if not log.is_file():
        raise Unreadable(f"{log}: no such file; the check reads LaTeX's log beside the PDF "
                         f"(the same name, .log), which make pdf keeps; {REBUILD}")
    return int(pages.group(1)), log.read_text(errors="replace")


def check(pdf: Path, root: Path = ROOT) -> list[str]:
    """Every problem found in `pdf` (empty when it passes); prints what it measured. A PDF
    that cannot be checked at all raises Unreadable (see `readable`)."""
    pages, log = readable(pdf)
    text = run("pdftotext", "-enc", "UTF-8", str(pdf), "-")
    files = toc_files(root)
    titles = expected_titles(root)
    left, right = text_block(log)
    outside = words_outside(run("pdftotext", "-bbox", str(pdf), "-"), left, right)
    figures, images = html_figures(root, files), pdf_images(run("pdfimages", "-list", str(pdf)))
    print(f"{pdf}: {pages} pages, {pdf.stat().st_size / 2**20:.1f} MiB; {len(titles)} titles "
          f"from _toc.yml; {images} images for {figures} PNG figures in the HTML; text block "
          f"{left:.1f}-{right:.1f} pt")
    problems = [f"LaTeX log: {p}" for p in log_problems(log)]
    problems += [f"title not in the PDF: {t!r}" for t in missing_titles(titles, text)]
    problems += [f"unresolved reference '??': ...{c}..." for c in unresolved_references(text)]
    problems += [f"a front-matter section numbered as chapter 0: {n!r}"
                 for n in front_matter_numbers(text)]
    problems += [f"outside the text block: {w}" for w in outside]
    if images < figures:
        problems.append(f"{images} images in the PDF, fewer than the {figures} PNG figures "
                        "of the HTML pages")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pdf", type=Path)
    parser.add_argument("--root", type=Path, default=ROOT, help="the book's folder")
    args = parser.parse_args(argv)
    try:
        problems = check(args.pdf, args.root)
    except Unreadable as e:
        print(f"pdf_check: {e}", file=sys.stderr)
        return 2
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)" if problems else "the PDF passes every check")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

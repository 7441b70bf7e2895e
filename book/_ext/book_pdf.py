"""The book as a PDF (`make pdf`, Sphinx's LaTeX builder): the version on its title page, and
a link to it in every web page's download button.

- `release` (the title page's "Version") is `git describe --tags --always --dirty`: the tag
  when the commit has one, otherwise the tag plus commits since it, or the bare commit;
  "-dirty" when the working tree had changes. Outside a git checkout it stays as configured.
- The repository's address (`repository.url` in _config.yml, the one place it lives) as the
  LaTeX macro \bookrepository, for the title page.
- An image from the web (each chapter's Colab badge) becomes its alt text in the PDF, inside
  the same link: LaTeX can only place local files, and a badge means nothing on paper.
- The PDF's structure (LaTeX only, BookMatter): the intro's own text becomes an
  unnumbered chapter "Introduction" (Sphinx would make each of its sections a chapter), the
  pages before the numbered part of _toc.yml are front matter (unnumbered, roman page
  numbers: the preamble starts \frontmatter before the contents), the numbered part is the
  main matter, so chapter n and equation (n.k) carry the web's numbers, and what follows is
  back matter; a page whose only content is the bibliography (moved by Sphinx to the end)
  gets the bibliography in place of its empty chapter.
- The HTML pages' download button (sphinx-book-theme) gets a first entry, the whole book as a
  PDF, linked at the site's root under the LaTeX target's name. An HTML build copies an
  existing `_build/latex/<name>.pdf` there, so `make pdf` then `make book` (or the Pages
  workflow, which builds the PDF first) publishes it with the pages.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from docutils import nodes
from sphinx import addnodes
from sphinx.builders.latex.nodes import thebibliography
from sphinx.transforms.post_transforms import SphinxPostTransform


def git_version(folder: Path) -> str | None:
    """The tag or commit of the checkout that holds `folder`, or None outside git."""
    try:
        out = subprocess.run(["git", "describe", "--tags", "--always", "--dirty"],
                             cwd=folder, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return out.stdout.strip()


def pdf_name(config) -> str:
    """The PDF's file name: the first LaTeX document's target, .tex replaced by .pdf."""
    target = config.latex_documents[0][1] if config.latex_documents else "book.tex"
    return Path(target).with_suffix(".pdf").name


def set_version(app, config) -> None:
    version = git_version(Path(app.srcdir))
    if version:
        config.release = config.version = version


def define_repository(app, config) -> None:
    url = config.html_theme_options.get("repository_url", "")
    preamble = config.latex_elements.get("preamble", "")
    config.latex_elements = {**config.latex_elements, "preamble": preamble
                             + f"\\newcommand{{\\bookrepository}}{{\\url{{{url}}}}}\n"}


class RemoteImagesAsText(SphinxPostTransform):
    """LaTeX only; runs before Sphinx's ImageDownloader (priority 100) would fetch them."""
    default_priority = 90
    formats = ("latex",)

    def run(self, **kwargs) -> None:
        for image in list(self.document.findall(nodes.image)):
            if "://" in image["uri"]:
                image.replace_self(nodes.Text(image.get("alt", "")))


class LongTablesWrap(SphinxPostTransform):
    """LaTeX only. Sphinx sets a table of more than 30 rows as a longtable of unwrapped `l`
    columns, which runs off the page when its cells are long (an evidence table's claims):
    give such a table column widths in proportion to its longest cells (capped, so that one
    long claim does not starve the others), and Sphinx sets wrapping columns instead."""
    default_priority = 90
    formats = ("latex",)

    def run(self, **kwargs) -> None:
        for table in self.document.findall(nodes.table):
            groups = list(table.findall(nodes.tgroup))
            rows = list(table.findall(nodes.row))
            if len(groups) != 1 or len(rows) <= 30 or "colwidths-given" in table["classes"]:
                continue
            specs = [c for c in groups[0].children if isinstance(c, nodes.colspec)]
            widths = [4] * len(specs)
            for row in rows:
                for i, entry in enumerate(e for e in row.children if isinstance(e, nodes.entry)):
                    if i < len(widths):
                        widths[i] = max(widths[i], min(len(entry.astext()), 40))
            for spec, width in zip(specs, widths, strict=True):
                spec["colwidth"] = width
            table["classes"].append("colwidths-given")


def numbered_docnames(srcdir: Path) -> list[str]:
    """The pages of _toc.yml's numbered part (the chapters), in order."""
    toc = yaml.safe_load((Path(srcdir) / "_toc.yml").read_text())
    return [c["file"] for part in toc.get("parts", []) if part.get("numbered")
            for c in part.get("chapters", [])]


def latex(code: str) -> nodes.raw:
    return nodes.raw("", code + "\n", format="latex")


class BookMatter(SphinxPostTransform):
    """Runs on the whole book's tree once Sphinx has inlined every page (a start_of_file node
    each) and moved the citations to the end (BibliographyTransform, priority 750)."""
    default_priority = 800
    formats = ("latex",)

    def run(self, **kwargs) -> None:
        root = next(self.document.findall(nodes.section))
        pages = [n for n in self.document.findall(addnodes.start_of_file)
                 if not any(isinstance(a, addnodes.start_of_file) for a in _ancestors(n))]
        # the intro's own text: what the root section holds before its first toctree
        first = next((i for i, child in enumerate(root.children)
                      if any(True for _ in child.findall(addnodes.start_of_file))),
                     len(root.children))
        own = root.children[1:first]
        if own:
            intro = nodes.section(ids=["book-introduction"], names=["book-introduction"])
            intro += nodes.title("", "Introduction")
            for child in own:
                root.remove(child)
                intro += child
            root.insert(1, intro)
        numbered = set(numbered_docnames(self.env.srcdir))
        chapters = [p for p in pages if p["docname"] in numbered]
        if chapters:
            chapters[0].parent.insert(chapters[0].parent.index(chapters[0]),
                                      latex("\\mainmatter"
                                            "\\setcounter{secnumdepth}{\\booksecnumdepth}"))
            last = chapters[-1]
            last.parent.insert(last.parent.index(last) + 1, latex("\\backmatter"))
        bibliography = next(self.document.findall(thebibliography), None)
        for page in pages:
            section = next(page.findall(nodes.section), None)
            if (bibliography is not None and section is not None
                    and section.astext().strip() == section[0].astext().strip()):
                # the empty chapter's labels (links to the page) go on the bibliography's
                # heading: the preamble's sphinxthebibliography calls \bookbibliographylabels
                labels = "".join(f"\\label{{\\detokenize{{{page['docname']}:{i}}}}}"
                                 for i in section["ids"])
                bibliography.parent.remove(bibliography)
                section.replace_self([latex(f"\\gdef\\bookbibliographylabels{{{labels}}}"),
                                      bibliography])
                break


def _ancestors(node):
    node = node.parent
    while node is not None:
        yield node
        node = node.parent


def add_pdf_to_download_button(app, pagename, templatename, context, doctree) -> None:
    """Runs after sphinx-book-theme's own header buttons (priority 501)."""
    for button in context.get("header_buttons", []):
        if button.get("label") == "download-buttons":
            button["buttons"].insert(0, {
                "type": "link",
                "url": context["pathto"](pdf_name(app.config), 1),
                "text": "Book .pdf",
                "tooltip": "Download the whole book as a PDF",
                "icon": "fas fa-book",
                "label": "download-book-pdf-button",
            })


def copy_pdf_into_site(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    name = pdf_name(app.config)
    pdf = Path(app.outdir).parent / "latex" / name
    if pdf.exists():
        shutil.copy2(pdf, Path(app.outdir) / name)


def setup(app):
    app.connect("config-inited", set_version)
    app.connect("config-inited", define_repository)
    app.add_post_transform(RemoteImagesAsText)
    app.add_post_transform(LongTablesWrap)
    app.add_post_transform(BookMatter)
    app.connect("html-page-context", add_pdf_to_download_button, priority=502)
    app.connect("build-finished", copy_pdf_into_site)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

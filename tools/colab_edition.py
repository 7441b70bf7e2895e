"""The Colab edition: each chapter notebook as Colab shows it, from the same sources.

    python tools/colab_edition.py                        # all chapters into _build/colab
    python tools/colab_edition.py --out /tmp/c notebooks/16_*.ipynb
    python tools/colab_edition.py --ref v1.0             # pin the install cell to a tag

Every Colab badge opens `notebooks/NN_name.ipynb`, and Colab renders Markdown as plain
CommonMark with MathJax for `$` and `$$`: the book's MyST (roles, directives, labels) would
show raw. This tool writes `<out>/notebooks/NN_name.ipynb` for each chapter, from the stored
notebook and the built site (`make book`), never edited by hand; the branch EDITION_BRANCH
holds them (the badges point there).

What changes, and how:

- Roles are resolved as the web page shows them. A glued value becomes the text the stored
  run glued, in the role's format (tools/prose_budget.py's `glued_values`, `_formatted`;
  an integer keeps its type, as in myst-nb: `,d` gives 2,820); the chapter's first cell
  says so in one added sentence (RUN_SENTENCE, from the notebook's `book.execution`
  metadata). Quotes stay straight, in the glued text as around it (the page's are curled
  by Sphinx's smartquotes). `{cite}` becomes "(Author Year; ...)", `{cite:t}`
  "Author (Year)", each linked to its entry of the online bibliography; `{py:func}` and the
  other `py` roles the short name in code font, linked to the API page; `{eq}`, `{numref}`,
  `{ref}` and `{doc}` the number or title the web page shows, linked to it. MyST's links
  to a label (`[text](#label)`) go to the web page too: Colab has no such anchors.
- Numbers and anchors come from the built site (_build/html: objects.inv, the equation
  numbers and figure captions of the chapter pages, the bibliography page). A label the
  site lacks or numbers otherwise (a site older than the notebooks) takes the number the
  sources give, counted as Sphinx counts (the tests check both agree on a current site),
  and the tool says so: run `make book` and build again.
- A labelled display equation `$$ ... $$ (label)` gets `\\tag{N}` with the page's number;
  `(label)=` target lines and `%` comments go.
- Directives: a dropdown (an admonition of class `dropdown`, `{dropdown}`, `{toggle}`)
  becomes `<details><summary>Title</summary>`, folded like the page's, and any other
  admonition a block quote opened by its bold title. Both are HTML elements around
  Markdown (blank lines inside) rather than `>` lines: where the maths is taken out before
  the Markdown is parsed (Jupyter's way), a `> ` prefix would stay inside a multi-line
  equation.
  Figures and images become Markdown images (caption below, numbered), `{math}` a `$$`
  block, `{code-block}` a plain fence; an unknown directive a titled block quote (and a
  warning). A code cell's figure caption (its `mystnb` metadata, which Colab does not
  show) follows the cell as a Markdown cell: the text cites the figures by number.
- Code the page hides becomes a Colab form (`cellView: form` and a `# @title` line), which
  Colab folds but runs: `remove-cell` (the glue calls and other bookkeeping),
  `remove-input`, `hide-input` (the setup cell) and `hide-cell`. Their outputs stay; Colab
  cannot fold an output, so `hide-output` cells are left as they are. Every other code
  cell and every stored output is unchanged: the student sees the book's run until theirs.
- The install cell pins the package to the commit the edition was built from (`--ref`,
  default `git rev-parse HEAD`); the badge opens the edition on EDITION_BRANCH.

`problems(markdown, site)` is the checker the tests run on every Markdown cell: the MyST
Colab would show raw, unbalanced maths, and links to the online book that the built site
lacks. The tool prints one line per chapter (MyST constructs before -> after) and a table,
then what it resolved from the sources because the site is older; it exits 1 when an
edition has a problem or an unresolved name (links the site lacks only warn: `make book`).
"""

from __future__ import annotations

import argparse
import copy
import html
import importlib.util
import json
import re
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    """A module from its file: companion/run/colab.py without `companion`'s torch import."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


colab = sys.modules.get("companion.run.colab") or _load("companion_run_colab",
                                                        ROOT / "companion" / "run" / "colab.py")
prose_budget = _load("prose_budget", ROOT / "tools" / "prose_budget.py")

EDITION_BRANCH = colab.EDITION_BRANCH  # the branch the badges open
RUN_SENTENCE = ("The numbers and verdict words in the text are the book's stored run ({run}); "
                "when you run the chapter, the code's outputs and tables show your run's, and "
                "the text stays as it is.")
# The `# @title` of each kind of hidden code cell (an earlier key wins over a later one).
FORM_TITLES = {
    "remove-cell": "Bookkeeping: the values and verdicts the text quotes",
    "remove-input": "Code the book does not show (double-click to see it)",
    "hide-input": "Setup and code the book folds away: run it (double-click to see it)",
    "hide-cell": "Code the book folds away (double-click to see it)",
}
BOOKKEEPING_CHECKS = "Bookkeeping: checks and the web page's data"  # remove-cell, no glue
ADMONITIONS = {"admonition": "", "note": "Note", "tip": "Tip", "hint": "Hint",
               "important": "Important", "warning": "Warning", "caution": "Caution",
               "attention": "Attention", "danger": "Danger", "error": "Error",
               "seealso": "See also", "dropdown": "", "toggle": "", "topic": "",
               "sidebar": "", "margin": "", "epigraph": "", "pull-quote": "",
               "versionadded": "New", "versionchanged": "Changed", "deprecated": "Deprecated"}
DROPDOWNS = ("dropdown", "toggle")
PY_ROLES = ("func", "meth", "class", "mod", "attr", "obj", "data", "exc", "const")
CODE_DIRECTIVES = ("code-block", "code", "sourcecode", "code-cell")
SILENT_DIRECTIVES = ("bibliography", "tableofcontents", "toctree", "glossary")

GLUE_ROLE = prose_budget.GLUE_ROLE
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|:{3,})(?P<info>.*)$")
OPTION = re.compile(r"^\s*:(?P<key>[\w-]+):\s*(?P<value>.*)$")
TARGET_LINE = re.compile(r"^\s*\((?P<label>[^()\s]+)\)=\s*$")
COMMENT_LINE = re.compile(r"^\s*%")
EQ_LABEL = re.compile(r"\$\$[ \t]*\((?P<label>[^()\s]+)\)[ \t]*$", re.M)
# One scan over a text, left to right: a role, a code span (left as it is) or a link to a
# label of MyST's (`](#label)`).
INLINE = re.compile(r"\{(?P<role>[a-z][\w:+.-]*)\}(?P<ticks>`+)(?P<body>.+?)(?P=ticks)"
                    r"|(?P<code>(?P<cticks>`+).+?(?P=cticks))"
                    r"|\]\(#(?P<anchor>[^)\s]+)\)", re.S)
TITLED = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$", re.S)
INLINE_MATH = re.compile(r"\$\$.+?\$\$|\$[^$]+\$", re.S)
MD = MarkdownIt("commonmark")


# --- the online book -----------------------------------------------------------------------

def online_book(repository_url: str | None = None) -> str:
    """The online book's address, GitHub Pages' site of the repository of _config.yml:
    https://github.com/OWNER/NAME -> https://OWNER.github.io/NAME/."""
    url = repository_url or colab.repository(ROOT)[0]
    owner, name = url.removeprefix("https://github.com/").strip("/").split("/")[:2]
    return f"https://{owner.lower()}.github.io/{name}/"


@dataclass(frozen=True)
class Reference:
    """One entry of book/references.bib, as a citation names it."""

    key: str
    names: tuple[str, ...]  # the authors' last names (with their "van den")
    year: str
    title: str

    @property
    def authors(self) -> str:
        """The author part of an author-year citation, as the web page writes it."""
        if len(self.names) == 1:
            return self.names[0]
        if len(self.names) == 2:
            return f"{self.names[0]} and {self.names[1]}"
        return f"{self.names[0]} et al."


def bibliography(path: Path = ROOT / "book" / "references.bib") -> dict[str, Reference]:
    """key -> Reference, with LaTeX accents decoded (pybtex, which the book's build uses)."""
    from pybtex.backends.plaintext import Backend
    from pybtex.database import parse_file
    from pybtex.richtext import Text

    backend = Backend()  # one: render_as() looks the plugin up again at every call (slow)

    def plain(latex: str) -> str:
        return Text.from_latex(latex).render(backend)

    refs = {}
    for key, entry in parse_file(str(path)).entries.items():
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        names = tuple(plain(" ".join(p.prelast_names + p.last_names)) for p in people)
        refs[key] = Reference(key, names, entry.fields.get("year", "n.d."),
                              plain(entry.fields.get("title", "")))
    return refs


def _letters(text: str) -> str:
    """Text reduced to lower-case letters and digits (accents dropped), for matching."""
    text = unicodedata.normalize("NFKD", html.unescape(re.sub(r"<[^>]+>", "", text)))
    return re.sub(r"[^a-z0-9]", "", text.lower())


def bib_anchors(page: str, refs: dict[str, Reference]) -> dict[str, str]:
    """key -> the id of its entry on the bibliography page. sphinxcontrib-bibtex numbers the
    ids, so each key is found by its title, then by its first author and its year while
    more than one entry holds the title ("Consistency models" is in two)."""
    entries = [(m[1], _letters(m[2])) for m in
               re.finditer(r'<div class="citation" id="([^"]+)"[^>]*>(.*?)</div>', page, re.S)]
    anchors = {}
    for key, ref in refs.items():
        found = entries
        for part in (ref.title, *ref.names[:1], ref.year):
            if len(found) > 1:
                found = [(i, text) for i, text in found if _letters(part) in text]
        if len(found) == 1:
            anchors[key] = found[0][0]
    return anchors


# --- what the built site shows -------------------------------------------------------------

EQNO = re.compile(r'<span class="eqno">(\([^)<]*\))<a class="headerlink" '
                  r'href="#equation-([^"]+)"')
CAPTIONED = re.compile(r'<(figure|table)\b[^>]*\bid="([^"]+)"[^>]*>(.*?)</\1>', re.S)
CAPTION_NUMBER = re.compile(r'<span class="caption-number">([^<]*)</span>')
SECTION_NUMBER = re.compile(r'<span id="([^"]+)"></span><h\d><span class="section-number">'
                            r'([\d.]+?)\.? </span>')


@dataclass
class Site:
    """The built site's names, numbers and anchors (empty where there is no site)."""

    base: str
    root: Path | None = None
    version: str = ""
    py: dict[str, str] = field(default_factory=dict)  # object -> page#anchor
    modules: dict[str, str] = field(default_factory=dict)  # module -> its page
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> (href, title)
    docs: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> (page, title)
    numbers: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> (href, "Fig. 1.2")
    equations: dict[str, tuple[str, str]] = field(default_factory=dict)  # -> (href, "(1.2)")
    bib: dict[str, str] = field(default_factory=dict)  # key -> page#anchor
    bib_rank: dict[str, int] = field(default_factory=dict)  # key -> place on that page
    _ids: dict[str, set[str] | None] = field(default_factory=dict)

    def ids(self, page: str) -> set[str] | None:
        """The ids of a page of the site (None when the site has no such page)."""
        if page not in self._ids:
            path = self.root / page if self.root else None
            self._ids[page] = (set(re.findall(r'\bid="([^"]+)"', path.read_text()))
                               if path and path.is_file() else None)
        return self._ids[page]


def load_site(root: Path | None, base: str | None = None,
              refs: dict[str, Reference] | None = None) -> Site:
    """What `make book` built into `root` (an empty Site when it is missing)."""
    site = Site(base or online_book())
    if root is None or not (Path(root) / "objects.inv").is_file():
        return site
    site.root = Path(root)
    _read_inventory(site)
    for page in sorted(site.root.glob("notebooks/*.html")):
        _read_page(site, page.relative_to(site.root).as_posix(), page.read_text())
    bib_page = site.root / "book" / "bibliography.html"
    if bib_page.is_file():
        text = bib_page.read_text()
        anchors = bib_anchors(text, refs if refs is not None else bibliography())
        site.bib = {k: f"book/bibliography.html#{a}" for k, a in anchors.items()}
        place = {a: text.index(f'id="{a}"') for a in anchors.values()}
        site.bib_rank = {k: place[a] for k, a in anchors.items()}
    return site


def _read_inventory(site: Site) -> None:
    from sphinx.util.inventory import InventoryFile

    raw = (site.root / "objects.inv").read_bytes()
    version = re.search(rb"# Version: *(\S*)", raw)
    site.version = version[1].decode() if version else ""
    with open(site.root / "objects.inv", "rb") as f:
        inv = InventoryFile.load(f, "", lambda a, b: a + b)
    for domain, objects in sorted(inv.items()):
        for name, (_, _, uri, shown) in objects.items():
            title = "" if shown == "-" else shown
            if domain == "py:module":
                site.modules[name] = uri.split("#")[0]
            if domain.startswith("py:"):
                site.py.setdefault(name, uri)
            elif domain == "std:label":
                site.labels[name] = (uri, title)
            elif domain == "std:doc":
                site.docs[name] = (uri, title)


def _read_page(site: Site, page: str, text: str) -> None:
    """A chapter page's equation, figure, table and section numbers."""
    for number, label in EQNO.findall(text):
        site.equations[label] = (f"{page}#equation-{label}", number)
    for _, label, inner in CAPTIONED.findall(text):
        m = CAPTION_NUMBER.search(inner)
        if m:
            site.numbers[label] = (f"{page}#{label}", m[1].strip())
    for label, number in SECTION_NUMBER.findall(text):
        site.numbers.setdefault(label, (f"{page}#{label}", f"Section {number}"))


# --- numbers from the sources, for a site older than the notebooks -----------------------

def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _chapter_number(path: Path) -> int:
    """The chapter's number as the book shows it (`execution_status.chapter_numbers`); the
    file's NN for a notebook outside the TOC (a planted one in the tests)."""
    status = _load("execution_status", ROOT / "book" / "_ext" / "execution_status.py")
    return status.chapter_numbers(ROOT).get(Path(path).stem, int(Path(path).name[:2]))


SOURCE_NUMBERED = re.compile(
    r"\$\$[ \t]*\((?P<eq>[^()\s]+)\)[ \t]*$"
    r"|^\s*(?:`{3,}|:{3,})\{math\}.*\n(?:\s*:[\w-]+:.*\n)*?\s*:label:\s*(?P<math>\S+)"
    r"|^\s*(?:`{3,}|:{3,})\{figure\}.*\n(?:\s*:[\w-]+:.*\n)*?\s*:name:\s*(?P<fig>\S+)",
    re.M)


def index_sources(paths) -> Site:
    """Numbers and titles as Sphinx gives them, counted from the notebooks: labelled
    equations (N.k) and named figures (Fig. N.k) in order, a label's heading as its title."""
    found = Site("")
    for path in paths:
        _index_notebook(Path(path), found)
    return found


def _index_notebook(path: Path, found: Site) -> None:
    nb = json.loads(path.read_text())
    page, n = f"notebooks/{path.stem}.html", _chapter_number(path)
    eqs, figs = [], []  # labels in order: their place is their number
    for cell in nb["cells"]:
        text = _source(cell)
        if cell["cell_type"] == "code":
            name = cell.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("name")
            figs += [name] if name else []
            continue
        for m in SOURCE_NUMBERED.finditer(text):
            eqs += [m["eq"] or m["math"]] if m["eq"] or m["math"] else []
            figs += [m["fig"]] if m["fig"] else []
        for m in re.finditer(r"^\s*\(([^()\s]+)\)=\s*\n+\s*#+\s+(.*)$", text, re.M):
            found.labels[m[1]] = (f"{page}#{m[1]}", m[2].strip())
        for m in re.finditer(r"^\s*\(([^()\s]+)\)=\s*$", text, re.M):
            found.labels.setdefault(m[1], (f"{page}#{m[1]}", ""))
    for k, label in enumerate(eqs, 1):
        found.equations[label] = (f"{page}#equation-{label}", f"({n}.{k})")
    for k, label in enumerate(figs, 1):
        found.numbers[label] = (f"{page}#{label}", f"Fig. {n}.{k}")


# --- one chapter ---------------------------------------------------------------------------

@dataclass
class Book:
    """What every chapter's edition reads: the site, the sources' numbers, the references."""

    site: Site
    sources: Site
    refs: dict[str, Reference]
    url: str  # the repository
    ref: str  # the commit the install cell pins

    @property
    def base(self) -> str:
        return self.site.base


@dataclass
class Chapter:
    """One chapter's conversion: its glued values, and what it resolved and how."""

    book: Book
    page: str  # notebooks/NN_name.html
    values: dict[str, str]
    glued: list[tuple[str, str]] = field(default_factory=list)  # (key, text) in order
    from_sources: list[str] = field(default_factory=list)  # what the site lacked
    unresolved: list[str] = field(default_factory=list)
    attachments: dict[str, dict] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)  # glue key -> its output data

    def href(self, target: str) -> str:
        return self.book.base + target

    def lookup(self, table: str, label: str) -> tuple[str, str] | None:
        """(href, text) of a label: the site's, or the sources' (noted) where the site lacks
        it or numbers it otherwise (a site built before the notebooks changed: the page
        built from these notebooks will show the sources' number, tests/ check that they
        agree on a current site)."""
        site = getattr(self.book.site, table).get(label)
        source = getattr(self.book.sources, table).get(label)
        if site is None and source is not None:
            self.from_sources.append(f"{label}: not in the site; {source[1] or 'found'} "
                                     "in the sources")
            return source
        if site and source and table != "labels" and site[1] != source[1]:
            self.from_sources.append(f"{label}: the site shows {site[1]}, the sources "
                                     f"give {source[1]} (used)")
            return source
        return site

    # inline ---------------------------------------------------------------------------------

    def inline(self, text: str) -> str:
        """Text with every role, labelled equation and link to a label resolved."""
        text = INLINE.sub(self._inline_match, text)
        return EQ_LABEL.sub(self._tag, text)

    def _inline_match(self, m: re.Match) -> str:
        if m["code"]:
            return m["code"]
        if m["anchor"]:
            return f"]({self._label_href(m['anchor'])})"
        return self.role(m["role"], m["body"])

    def _tag(self, m: re.Match) -> str:
        hit = self.lookup("equations", m["label"])
        if hit is None:
            self.unresolved.append(f"equation label {m['label']}")
            return "$$"
        return f"\\tag{{{hit[1].strip('()')}}}$$"

    def _label_href(self, label: str) -> str:
        """A MyST link to a label: the page that holds the label (found in the sources,
        which know every target line), at the label's anchor."""
        hit = (self.book.sources.labels.get(label) or self.book.site.labels.get(label)
               or self.lookup("numbers", label))
        return self.href(hit[0] if hit else f"{self.page}#{label}")

    def role(self, name: str, body: str) -> str:
        """The Markdown that shows `{name}`body`` as the web page does."""
        if name in PY_ROLES:  # Sphinx's default domain is py: {func} is {py:func}
            name = f"py:{name}"
        kind = name.split(":")[0]
        handler = {"glue": self._glue, "cite": self._cite, "py": self._py, "ref": self._ref,
                   "numref": self._numref, "eq": self._eq, "doc": self._doc,
                   "math": lambda n, b: f"${b}$", "code": lambda n, b: f"`{b}`",
                   "sub": lambda n, b: f"<sub>{b}</sub>",
                   "sup": lambda n, b: f"<sup>{b}</sup>"}.get(kind)
        if handler is None:
            self.unresolved.append(f"role {{{name}}}`{body}`")
            return body
        return handler(name, body)

    def _glue(self, name: str, body: str) -> str:
        m = GLUE_ROLE.fullmatch(f"{{glue}}`{body}`")
        key, spec = (m[1], m[2]) if m else (body, None)
        if key not in self.values:
            self.unresolved.append(f"glued value {key}")
            return f"`{key}`"
        shown = prose_budget._formatted(self.values[key], spec)
        self.glued.append((key, shown))
        return _escape(shown)

    def _cite(self, name: str, body: str) -> str:
        textual = name.startswith(("cite:t", "cite:ct"))
        parts = []
        for key in self._cited_order([k.strip() for k in body.split(",")]):
            ref = self.book.refs.get(key)
            if ref is None:
                self.unresolved.append(f"citation {key}")
                parts.append(key)
                continue
            href = self.href(self.book.site.bib.get(key, "book/bibliography.html"))
            shown = f"{ref.authors} ({ref.year})" if textual else f"{ref.authors} {ref.year}"
            parts.append(f"[{_escape(shown)}]({href})")
        return ", ".join(parts) if textual else f"({'; '.join(parts)})"

    def _cited_order(self, keys: list[str]) -> list[str]:
        """The keys of one citation in the page's order: sphinxcontrib-bibtex lists them as
        the bibliography page does (by author, year, title), not as the source names them."""
        rank = self.book.site.bib_rank
        refs = self.book.refs

        def place(key):
            ref = refs.get(key)
            fallback = (ref.names[:1], ref.year, ref.title) if ref else ((key,), "", "")
            return (rank.get(key, -1) if rank else 0, fallback)

        return sorted(keys, key=place)

    def _py(self, name: str, body: str) -> str:
        title, target = _titled(body)
        target = target.lstrip("!")
        short = target.lstrip("~.")
        shown = title or (short.split(".")[-1] if target.startswith("~") else short)
        if not title and name.split(":")[1] in ("func", "meth"):
            shown += "()"
        uri = self._py_uri(short)
        return f"[`{shown}`]({self.href(uri)})" if uri else f"`{shown}`"

    def _py_uri(self, name: str) -> str | None:
        site = self.book.site
        if name in site.py:
            return site.py[name]
        ends = [k for k in site.py if k.endswith("." + name)]
        if len(ends) == 1:
            return site.py[ends[0]]
        # not in the site's inventory (older than the package): autodoc's anchor on the page
        # of the longest module that holds it
        modules = [m for m in site.modules if name.startswith(m + ".")]
        if modules:
            self.from_sources.append(f"{name}: not in the site's inventory")
            return f"{site.modules[max(modules, key=len)]}#{name}"
        self.unresolved.append(f"API name {name}")
        return None

    def _ref(self, name: str, body: str) -> str:
        title, label = _titled(body)
        hit = self.lookup("labels", label)
        if hit is None:
            self.unresolved.append(f"label {label}")
            return _escape(title or label)
        return f"[{_escape(title or hit[1] or label)}]({self.href(hit[0])})"

    def _numref(self, name: str, body: str) -> str:
        title, label = _titled(body)
        hit = self.lookup("numbers", label) or self.lookup("equations", label)
        if hit is None:
            self.unresolved.append(f"numbered label {label}")
            return _escape(title or label)
        number = hit[1].split(" ", 1)[-1]
        shown = title.replace("{number}", number) if title else hit[1]
        return f"[{_escape(shown)}]({self.href(hit[0])})"

    def _eq(self, name: str, body: str) -> str:
        title, label = _titled(body)
        hit = self.lookup("equations", label)
        if hit is None:
            self.unresolved.append(f"equation {label}")
            return _escape(title or label)
        return f"[{_escape(title or hit[1])}]({self.href(hit[0])})"

    def _doc(self, name: str, body: str) -> str:
        title, target = _titled(body)
        doc = target.lstrip("/") if target.startswith("/") else \
            Path("notebooks", target).as_posix()
        doc = re.sub(r"[^/]+/\.\./", "", doc).removesuffix(".md").removesuffix(".ipynb")
        page, shown = self.book.site.docs.get(doc, (f"{doc}.html", doc))
        return f"[{_escape(title or shown)}]({self.href(page)})"

    # blocks ---------------------------------------------------------------------------------

    def markdown(self, text: str) -> str:
        """A Markdown cell of the book as Colab shows it."""
        out = guard_display_math("".join(self.blocks(text.split("\n"))).rstrip("\n"))
        return out + "\n" if text.endswith("\n") else out

    def blocks(self, lines: list[str]) -> list[str]:
        """Lines of MyST as pieces of CommonMark: text resolved, directives converted, code
        fences kept; in document order, so that the glued values are met in order."""
        out, prose, i, in_math = [], [], 0, False

        def flush():
            if prose:
                out.append(self.inline("\n".join(prose)) + "\n")
                prose.clear()

        while i < len(lines):
            line = lines[i]
            m = FENCE.match(line)
            if m and not in_math and (m["fence"][0] == "`" or m["info"].strip()[:1] == "{"):
                end = _fence_end(lines, i)
                flush()
                if m["info"].strip()[:1] == "{":
                    out += self.directive(m, lines[i + 1:end])
                else:
                    out.append("\n".join(lines[i:end + 1]) + "\n")
                i = end + 1
                continue
            if not in_math and TARGET_LINE.match(line):
                prose.append("")  # a target line also ends a paragraph
            elif not (not in_math and COMMENT_LINE.match(line)):
                prose.append(line)
            in_math ^= line.count("$$") % 2 == 1
            i += 1
        flush()
        return out

    def directive(self, m: re.Match, body: list[str]) -> list[str]:
        """A MyST directive as Markdown (or HTML around Markdown)."""
        indent = m["indent"]
        name, arg = re.match(r"\{([^}]+)\}\s*(.*)$", m["info"].strip()).groups()
        options, body = _options(_dedent(body, indent))
        classes = options.get("class", "").split()
        if name in CODE_DIRECTIVES:
            return [_indented(f"```{arg}\n" + "\n".join(body) + "\n```", indent) + "\n"]
        if name in SILENT_DIRECTIVES:
            return []
        if name == "math":
            return [self._math(body, options.get("label") or options.get("name"), indent)]
        if name in ("figure", "image"):
            return [self._figure(name, arg, options, body, indent)]
        if name.startswith("glue"):
            return [self._glue_directive(name, arg, options, body, indent)]
        if name == "raw":
            return ["\n".join(body) + "\n"] if arg.strip() == "html" else []
        if name not in ADMONITIONS:
            self.unresolved.append(f"directive {{{name}}} (shown as a block quote)")
        title = arg or ADMONITIONS.get(name) or name.replace("-", " ").capitalize()
        if name in DROPDOWNS or "dropdown" in classes:
            return [f"{indent}<details>\n{indent}<summary>{self._html_title(title)}</summary>"
                    "\n\n", *self.blocks(_indent_lines(body, indent)),
                    f"\n{indent}</details>\n\n"]
        return [f"{indent}<blockquote>\n\n{indent}**{self.inline(title)}**\n\n",
                *self.blocks(_indent_lines(body, indent)), f"\n{indent}</blockquote>\n\n"]

    def _html_title(self, title: str) -> str:
        """A title for inside an HTML element: roles resolved, Markdown made HTML, maths
        left for MathJax (escaped only)."""
        title = self.inline(title)
        parts, last = [], 0
        for m in INLINE_MATH.finditer(title):
            parts += [MD.renderInline(title[last:m.start()]), html.escape(m[0], quote=False)]
            last = m.end()
        return "".join(parts + [MD.renderInline(title[last:])]).strip()

    def _math(self, body: list[str], label: str | None, indent: str) -> str:
        tag = ""
        if label:
            hit = self.lookup("equations", label)
            tag = f"\\tag{{{hit[1].strip('()')}}}" if hit else ""
            if not hit:
                self.unresolved.append(f"equation label {label}")
        return _indented("$$\n" + "\n".join(body).strip("\n") + f"\n{tag}$$", indent) + "\n"

    def _figure(self, name: str, arg: str, options: dict, body: list[str], indent: str) -> str:
        src = arg.strip()
        if not re.match(r"^[a-z]+:", src):  # a path in the repository, at the pinned commit
            owner_name = self.book.url.removeprefix("https://github.com/")
            src = (f"https://raw.githubusercontent.com/{owner_name}/{self.book.ref}/"
                   f"{(Path('notebooks') / src).as_posix()}")
        text = f"![{_escape(options.get('alt', ''))}]({src})"
        caption = "\n".join(body).strip()
        if name == "figure" and caption:
            text += "\n\n" + self.caption(caption, options.get("name"))
        return _indented(text, indent) + "\n"

    def caption(self, caption: str, label: str | None) -> str:
        """A figure's caption as a paragraph, led by its number when it has one."""
        hit = self.lookup("numbers", label) if label else None
        lead = f"**{hit[1]}.** " if hit else ""
        return lead + self.inline(caption)

    def _glue_directive(self, name: str, key: str, options: dict, body: list[str],
                        indent: str) -> str:
        key = key.strip()
        data = self.outputs.get(key, {})
        if name == "glue:figure" or "image/png" in data and name in ("glue", "glue:any"):
            if "image/png" not in data:
                self.unresolved.append(f"glued figure {key}")
                return ""
            png = data["image/png"]
            self.attachments[f"{key}.png"] = {"image/png": "".join(png) if isinstance(
                png, list) else png}
            text = f"![{_escape(options.get('alt', key))}](attachment:{key}.png)"
            caption = "\n".join(body).strip()
            if caption:
                text += "\n\n" + self.caption(caption, options.get("name"))
            return _indented(text, indent) + "\n"
        value = self._glue("glue", key)
        if name == "glue:math":
            return _indented(f"$$\n{value}\n$$", indent) + "\n"
        return _indented(value, indent) + "\n"


DISPLAY = re.compile(r"\$\$.+?\$\$", re.S)
LIST_START = re.compile(r"^([ \t]*)([-+*]|\d{1,9}[.)])(?=[ \t]|$)", re.M)


def guard_display_math(text: str) -> str:
    """Lines inside `$$` that start with `+ `, `- `, `* ` or `1. ` open with TeX's empty
    group `{}`: a renderer that parses the Markdown before it takes the maths out would
    read them as list items (Jupyter and Colab take the maths out first; this holds
    either way, and `{}+` is TeX's own idiom for a binary operator at a line's start)."""
    return DISPLAY.sub(lambda m: LIST_START.sub(r"\1{}\2", m[0]), text)


def _titled(body: str) -> tuple[str, str]:
    """(explicit title or "", target) of a role's `title <target>` or `target`."""
    m = TITLED.match(body.strip())
    return (m["title"].strip(), m["target"].strip()) if m and m["title"] else ("", body.strip())


def _escape(text: str) -> str:
    """Plain text safe inside Markdown: the characters that would start markup escaped."""
    return re.sub(r"([\\`*_\[\]<>$|#])", r"\\\1", text)


def _fence_end(lines: list[str], start: int) -> int:
    """The index of the line that closes the fence opened at `start`. Inside a directive,
    a fence that opens with an info string (a nested directive, a code block) is skipped
    whole; a code block holds nothing nested."""
    opener = FENCE.match(lines[start])
    char, size = opener["fence"][0], len(opener["fence"])
    nests = opener["info"].strip().startswith("{")
    i = start + 1
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and not m["info"].strip() and m["fence"][0] == char and len(m["fence"]) >= size:
            return i
        if nests and m and m["info"].strip():
            i = _fence_end(lines, i)
        i += 1
    return len(lines)


def _options(body: list[str]) -> tuple[dict[str, str], list[str]]:
    """A directive's `:key: value` options (or YAML block) and the rest of its body."""
    options, i = {}, 0
    if body[:1] == ["---"] and "---" in body[1:]:
        end = body.index("---", 1)
        for line in body[1:end]:
            key, _, value = line.partition(":")
            options[key.strip()] = value.strip()
        return options, body[end + 1:]
    while i < len(body) and (m := OPTION.match(body[i])):
        options[m["key"]] = m["value"].strip()
        i += 1
    return options, body[i:]


def _dedent(lines: list[str], indent: str) -> list[str]:
    return [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines]


def _indent_lines(lines: list[str], indent: str) -> list[str]:
    return [indent + line if line.strip() else line for line in lines]


def _indented(text: str, indent: str) -> str:
    return "\n".join(_indent_lines(text.split("\n"), indent))


# --- the notebook --------------------------------------------------------------------------

def run_description(nb: dict) -> str:
    """'profile P on D' from the stored run's `book.execution` metadata."""
    ex = nb.get("metadata", {}).get("book", {}).get("execution", {})
    cpus, machine = ex.get("cpus"), ex.get("machine", "").replace("_", "-")
    where = f"a {cpus}-core {machine} machine".replace("  ", " ") if cpus else "one machine"
    if ex.get("gpu_memory_peak_mib") or ex.get("cuda_peak_mib"):
        where = f"a GPU on {where}"
    return f"the `{ex.get('profile_env', '?')}` profile on {where}"


def edition(path: Path, book: Book) -> tuple[dict, Chapter]:
    """The Colab edition of one chapter notebook, and what its conversion met."""
    nb = json.loads(Path(path).read_text())
    chapter = Chapter(book, f"notebooks/{Path(path).stem}.html",
                      prose_budget.glued_values(nb), outputs=_glue_outputs(nb))
    cells, first = [], True
    for cell in nb["cells"]:
        cell = copy.deepcopy(cell)
        if cell["cell_type"] == "markdown":
            cell["source"] = _markdown_cell(cell, chapter, first, nb, path)
            first = False
            if chapter.attachments:
                cell["attachments"] = dict(sorted(chapter.attachments.items()))
                chapter.attachments = {}
        elif cell["cell_type"] == "code":
            cell["source"] = _code_cell(cell, book)
        cells.append(cell)
        cells += _caption_cell(cell, chapter)
    nb["cells"] = cells
    return nb, chapter


def _markdown_cell(cell: dict, chapter: Chapter, first: bool, nb: dict, path: Path) -> str:
    text = chapter.markdown(_source(cell))
    rel = f"notebooks/{Path(path).name}"
    text = colab.BADGE_RE.sub(lambda m: colab.badge(rel), text)
    if first and GLUE_ROLE.search(_cells_text(nb)):
        sentence = RUN_SENTENCE.format(run=run_description(nb))
        m = colab.BADGE_RE.search(text)
        at = m.end() if m else len(text.rstrip("\n"))
        text = text[:at] + "\n\n" + sentence + text[at:]
    return text


def _code_cell(cell: dict, book: Book) -> str:
    """The code as Colab runs it: pinned install, hidden code as a form."""
    source = colab.SPEC_RE.sub(f"'companion @ git+{book.url}@{book.ref}'", _source(cell))
    tags = cell.get("metadata", {}).get("tags", [])
    tag = next((t for t in FORM_TITLES if t in tags), None)
    if tag is None:
        return source
    title = FORM_TITLES[tag]
    if tag == "remove-cell" and "glue(" not in source:
        title = BOOKKEEPING_CHECKS
    cell["metadata"]["cellView"] = "form"
    return f"# @title {title}\n{source}"


def _caption_cell(cell: dict, chapter: Chapter) -> list[dict]:
    """A code cell's figure caption (the page shows it under the figure) as a cell after it."""
    figure = cell.get("metadata", {}).get("mystnb", {}).get("figure", {})
    if cell["cell_type"] != "code" or not figure.get("caption"):
        return []
    text = chapter.caption(figure["caption"], figure.get("name"))
    return [{"cell_type": "markdown", "id": f"{cell.get('id', 'cell')}-caption"[:64],
             "metadata": {}, "source": text}]


def _glue_outputs(nb: dict) -> dict[str, dict]:
    """glue key -> the data of the output that glued it (its image, for glue:figure)."""
    found = {}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None:
                found[name] = {k.removeprefix("application/papermill.record/"): v
                               for k, v in out.get("data", {}).items()}
    return found


# --- the checker ---------------------------------------------------------------------------

ROLE_END = re.compile(r"\{[a-z][\w:+.-]*\}$")
ROLE_ANYWHERE = re.compile(r"\{[a-z][\w:+.-]*\}`")


def problems(markdown: str, site: Site | Path | str | None = None) -> list[str]:
    """What Colab would show wrong in a Markdown cell, read as CommonMark (markdown-it-py):
    MyST left raw (roles, directive fences, colon fences, target lines, comments,
    equation labels outside `\\tag`), unbalanced `$` or `$$`, links to anchors of the
    notebook (Colab has none) and, given the built site, links to the online book whose
    page or anchor the site lacks."""
    own, links = checked(markdown, site)
    return own + links


def checked(markdown: str, site: Site | Path | str | None = None) -> tuple[list, list]:
    """problems() in two lists: what Colab shows wrong, and the links the site lacks."""
    tokens = MD.parse(markdown)
    lines = markdown.split("\n")
    code = {n for t in tokens if t.type in ("fence", "code_block") and t.map
            for n in range(*t.map)}
    found = [f"line {t.map[0] + 1}: a directive fence ```{t.info.strip()}" for t in tokens
             if t.type == "fence" and t.info.strip().startswith("{")]
    prose = [(n + 1, line) for n, line in enumerate(lines) if n not in code]
    found += _line_problems(prose)
    found += _role_problems(tokens)
    found += _dollar_problems("\n".join(line for _, line in prose))
    links = _link_problems(tokens, _as_site(site))
    own = [p for p in links if p.startswith("a link to an anchor of the notebook")]
    return found + own, [p for p in links if p not in own]


def _line_problems(prose: list[tuple[int, str]]) -> list[str]:
    found, in_math = [], False
    for n, line in prose:
        if re.match(r"^\s*:{3,}\s*\{", line):
            found.append(f"line {n}: a colon fence {line.strip()}")
        if TARGET_LINE.match(line):
            found.append(f"line {n}: a target line {line.strip()}")
        if not in_math and COMMENT_LINE.match(line):
            found.append(f"line {n}: a MyST comment {line.strip()[:40]}")
        if EQ_LABEL.search(line):
            found.append(f"line {n}: an equation label outside \\tag: {line.strip()[-40:]}")
        in_math ^= line.count("$$") % 2 == 1
    return found


def _role_problems(tokens) -> list[str]:
    found = []
    for t in tokens:
        if t.type == "html_block" and ROLE_ANYWHERE.search(t.content):
            found.append(f"line {t.map[0] + 1}: a MyST role in HTML: {t.content.strip()[:60]}")
        kids = t.children or []
        for a, b in zip(kids, kids[1:], strict=False):
            if a.type == "text" and b.type == "code_inline" and ROLE_END.search(a.content):
                role = ROLE_END.search(a.content)[0]
                found.append(f"line {t.map[0] + 1}: a MyST role {role}`{b.content}`")
    return found


def _dollar_problems(text: str) -> list[str]:
    """Odd counts of `$$` or `$` outside code spans (a `\\$` is a dollar sign)."""
    text = re.sub(r"(`+)(?!`).+?(?<!`)\1(?!`)", "", text, flags=re.S).replace("\\$", "")
    doubles = text.count("$$")
    singles = text.replace("$$", "").count("$")
    found = []
    if doubles % 2:
        found.append(f"unbalanced $$: {doubles} of them")
    if singles % 2:
        found.append(f"unbalanced $: {singles} of them")
    return found


def _links(tokens) -> list[str]:
    hrefs = []
    for t in tokens:
        if t.type == "html_block":
            hrefs += re.findall(r'\b(?:href|src)="([^"]*)"', t.content)
        for kid in t.children or []:
            if kid.type in ("link_open", "image"):
                hrefs.append(kid.attrs.get("href") or kid.attrs.get("src") or "")
            elif kid.type == "html_inline":
                hrefs += re.findall(r'\b(?:href|src)="([^"]*)"', kid.content)
    return hrefs


def _link_problems(tokens, site: Site | None) -> list[str]:
    found = []
    for href in _links(tokens):
        if href.startswith("#"):
            found.append(f"a link to an anchor of the notebook, which Colab lacks: {href}")
        elif site and site.root and href.startswith(site.base):
            page, _, anchor = href.removeprefix(site.base).partition("#")
            ids = site.ids(page or "index.html")
            if ids is None:
                found.append(f"a link to a page the built site lacks: {href}")
            elif anchor and anchor not in ids:
                found.append(f"a link to an anchor the built site lacks: {href}")
    return found


def _as_site(site) -> Site | None:
    if site is None or isinstance(site, Site):
        return site
    return Site(online_book(), Path(site))


# --- counts and the command ----------------------------------------------------------------

def myst_counts(markdown: str) -> dict[str, int]:
    """The raw MyST constructs of a text: roles, directives, labels (targets, equations)."""
    return {"roles": len(ROLE_ANYWHERE.findall(markdown)),
            "directives": len(re.findall(r"^\s*(?:`{3,}|:{3,})\s*\{", markdown, re.M)),
            "labels": len(re.findall(r"^\s*\([^()\s]+\)=\s*$", markdown, re.M))
            + len(EQ_LABEL.findall(markdown))}


def _cells_text(nb: dict) -> str:
    return "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")


def head_commit() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


def changed_since_site(site: Site, paths) -> list[str]:
    """The chapters (stems) whose notebook differs from the commit the site was built from
    (objects.inv's version, `git describe`): their pages are older than their sources.
    All of them when that commit is unknown."""
    stems = [Path(p).stem for p in paths]
    m = re.search(r"(?:^|-g)([0-9a-f]{7,40})(?:-dirty)?$", site.version)
    if not m:
        return stems
    run = subprocess.run(["git", "diff", "--name-only", m[1], "--", "notebooks/*.ipynb"],
                         cwd=ROOT, capture_output=True, text=True)
    if run.returncode:
        return stems
    changed = {Path(line).stem for line in run.stdout.split()}
    return [s for s in stems if s in changed]


def uncommitted() -> list[str]:
    """The notebooks and package files that differ from HEAD (the edition is built from the
    working tree, its install cell pins HEAD's package)."""
    run = subprocess.run(["git", "status", "--porcelain", "--", "notebooks/*.ipynb", "companion"],
                         cwd=ROOT, capture_output=True, text=True)
    return [line[3:] for line in run.stdout.splitlines()]


def load_book(site_root: Path | None, ref: str | None = None) -> Book:
    url = colab.repository(ROOT)[0]
    refs = bibliography()
    site = load_site(site_root, online_book(url), refs)
    sources = index_sources(sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
    return Book(site, sources, refs, url, ref or head_commit())


def write_edition(path: Path, book: Book, out: Path) -> tuple[Path, dict, Chapter]:
    """Build one chapter's edition, validate it and write it under `out`/notebooks."""
    nb, chapter = edition(path, book)
    node = nbformat.from_dict(nb)
    nbformat.validate(node)
    target = Path(out) / "notebooks" / Path(path).name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(nbformat.writes(node) + "\n")
    return target, nb, chapter


@dataclass
class Report:
    """One chapter's line of the summary."""

    name: str
    before: dict[str, int]
    after: dict[str, int]
    forms: int
    problems: list[str]  # what Colab would show wrong
    links: list[str]  # links to the online book that the built site lacks
    chapter: Chapter

    def line(self) -> str:
        counts = ", ".join(f"{k} {n} -> {self.after[k]}" for k, n in self.before.items())
        return (f"{self.name}: {counts}; {self.forms} forms; "
                f"{len(self.chapter.glued)} glued values")

    def row(self) -> list[str]:
        return [self.name, *(f"{n} -> {self.after[k]}" for k, n in self.before.items()),
                str(self.forms), str(len(self.problems)), str(len(self.links))]


def build(path: Path, book: Book, out: Path) -> Report:
    """Write one chapter's edition and check it."""
    source = json.loads(Path(path).read_text())
    _, nb, chapter = write_edition(path, book, out)
    found = [checked(_source(c), book.site) for c in nb["cells"]
             if c["cell_type"] == "markdown"]
    return Report(Path(path).stem, myst_counts(_cells_text(source)),
                  myst_counts(_cells_text(nb)),
                  sum(c.get("metadata", {}).get("cellView") == "form" for c in nb["cells"]),
                  [p for own, _ in found for p in own],
                  list(dict.fromkeys(p for _, links in found for p in links)), chapter)


def table(reports: list[Report]) -> str:
    """The before -> after counts of every chapter, and their total."""
    head = ["chapter", "roles", "directives", "labels", "forms", "problems",
            "links the site lacks"]
    keys = list(reports[0].before) if reports else []
    total = ["total", *(f"{sum(r.before[k] for r in reports)} -> "
                        f"{sum(r.after[k] for r in reports)}" for k in keys),
             *(str(sum(int(r.row()[i]) for r in reports)) for i in (4, 5, 6))]
    rows = [head, *(r.row() for r in reports), total]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def staleness(book: Book, reports: list[Report], paths) -> list[str]:
    """What the tool resolved from the sources because the built site is older."""
    out = []
    changed = changed_since_site(book.site, paths)
    if changed:
        out.append(f"The built site is from {book.site.version or 'an unknown commit'}; "
                   f"{len(changed)} chapter notebooks changed since: {', '.join(changed)}.")
    stale = [f"  {r.name}: {s}" for r in reports for s in dict.fromkeys(r.chapter.from_sources)]
    if stale:
        out.append(f"{len(stale)} names the built site lacks or numbers otherwise, resolved "
                   "from the sources (run `make book`):")
    return out + stale


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "_build" / "colab")
    ap.add_argument("--site", type=Path, default=ROOT / "_build" / "html")
    ap.add_argument("--ref", help="the commit or tag the install cell pins (default HEAD)")
    ap.add_argument("--to-run", action="store_true",
                    help="an edition to execute only (make test-colab): without a built "
                         "site, numbers from the sources and links unchecked")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    has_site = (args.site / "objects.inv").is_file()
    if not has_site and not args.to_run:
        print(f"no built site in {args.site}: run `make book` first", file=sys.stderr)
        return 2
    book = load_book(args.site if has_site else None, args.ref)
    if not args.ref and (dirty := uncommitted()):
        print(f"note: the install cells pin HEAD, but these differ from it: {', '.join(dirty)}")
    reports = []
    for path in paths:
        reports.append(report := build(path, book, args.out))
        print(report.line())
        for p in report.problems + report.links + report.chapter.unresolved:
            print(f"  {p}")
    print(f"\n{table(reports)}\n\nwritten to {args.out / 'notebooks'}")
    if not has_site:
        print("no built site: the numbers are the sources' and no link was checked "
              "(an edition to run, not to publish)")
    for line in staleness(book, reports, paths) if has_site else []:
        print(line)
    if args.to_run:  # what runs is the code, which no name on the page changes
        return 1 if any(r.problems for r in reports) else 0
    return 1 if any(r.problems or r.chapter.unresolved for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())

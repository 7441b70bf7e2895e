"""Where the Colab edition's links go, and what they land on (tools/colab_edition.py).

The built site gives the numbers and anchors (objects.inv, the chapter pages' equation
numbers and captions, the bibliography page); the notebooks give them again, counted as
Sphinx counts, for a site older than the notebooks. From a chapter's edition, a link goes
where a student who has the notebook open in Colab can follow it (`route`):

- into the same chapter: `#name`, a target inside the notebook. Colab follows a `#name`
  link to an `<a name>` in a Markdown cell, so the generator writes one (`target`) where
  the equation (before its `$$`), the figure (its caption, under it), the labelled
  paragraph or heading is, named as the web page's anchor (`equation-LABEL`, `LABEL`);
- into another chapter: that chapter's edition on the edition branch (what its badge
  opens), with the same `#name` after it;
- to a cited work: `#KEY`, its entry in the references the edition ends with
  (`references`). The cite key is stable where Sphinx's generated `#id13` changes as the
  bibliography grows;
- anywhere else (the API pages, the book's other pages): the online book.

`hrefs` lists a Markdown text's links, `link_problems` the ones that go astray: an anchor
the notebook lacks, a chapter's web page (the edition's own chapter or another), and,
given the built site, a page or anchor of the online book the site lacks.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTER_PAGE = re.compile(r"^notebooks/(?P<stem>\d\d_[\w-]+)\.html$")
TARGET = re.compile(r'<a\b[^>]*?\b(?:name|id)="([^"]+)"')


def _load(name: str, path: Path):
    """A module from its file (tools/ is no package; companion/run/colab.py without
    `companion`'s torch import)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


colab = sys.modules.get("companion.run.colab") or _load("companion_run_colab",
                                                        ROOT / "companion" / "run" / "colab.py")


def escape(text: str) -> str:
    """Plain text safe inside Markdown: the characters that would start markup escaped."""
    return re.sub(r"([\\`*_\[\]<>$|#])", r"\\\1", text)


# --- where a link goes ---------------------------------------------------------------------

def target(name: str) -> str:
    """The place a `#name` link lands on in Colab: an empty `<a>` in a Markdown cell (`name`
    for Colab and older renderers, `id` for the others)."""
    return f'<a id="{name}" name="{name}"></a>'


def edition_url(repository_url: str, branch: str) -> str:
    """The Colab address of a chapter's edition, with `{stem}` for the notebook's name
    (companion.run.colab.colab_url's, for any repository)."""
    owner_name = repository_url.removeprefix("https://github.com/").strip("/")
    return (f"https://colab.research.google.com/github/{owner_name}/blob/{branch}/"
            "notebooks/{stem}.ipynb")


def route(href: str, page: str, base: str, edition: str) -> str:
    """Where a link to `href` (a page of the site and its anchor) goes from the edition of
    `page`: an anchor of this notebook, another chapter's edition (`edition`, with `{stem}`)
    at that anchor, or the online book (`base`)."""
    where, _, anchor = href.partition("#")
    if where == page and anchor:
        return f"#{anchor}"
    m = CHAPTER_PAGE.match(where)
    if m:
        return edition.format(stem=m["stem"]) + (f"#{anchor}" if anchor else "")
    return base + href


def targets(markdown: str) -> list[str]:
    """The names of the targets (`<a name>` or `<a id>`) in a Markdown text, in order."""
    return TARGET.findall(markdown)


def markdown_outputs(nb: dict) -> list[str]:
    """The Markdown a notebook's code cells show (an evidence table, whose rows are link
    targets: companion.compare.Evidence)."""
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text = out.get("data", {}).get("text/markdown")
            if text:
                texts.append("".join(text) if isinstance(text, list) else text)
    return texts


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


def bib_entries(page: str) -> dict[str, str]:
    """id -> the HTML of its entry, on the bibliography page."""
    return {m[1]: m[2] for m in
            re.finditer(r'<div class="citation" id="([^"]+)"[^>]*>(.*?)</div>', page, re.S)}


def bib_anchors(page: str, refs: dict[str, Reference]) -> dict[str, str]:
    """key -> the id of its entry on the bibliography page. sphinxcontrib-bibtex numbers the
    ids, so each key is found by its title, then by its first author and its year while
    more than one entry holds the title ("Consistency models" is in two)."""
    entries = [(i, _letters(text)) for i, text in bib_entries(page).items()]
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
    bib_text: dict[str, str] = field(default_factory=dict)  # key -> its entry, as Markdown
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
        entries = bib_entries(text)
        site.bib_text = {k: entry_markdown(entries[a]) for k, a in anchors.items()}
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


# --- numbers from the sources, for a site older than the notebooks -----------------------

def source(cell: dict) -> str:
    """A cell's text (nbformat stores it as one string or as a list of lines)."""
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
        text = source(cell)
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


# --- the references an edition ends with ---------------------------------------------------

ENTRY_MARKUP = re.compile(r'<a\b[^>]*\bhref="(?P<href>[^"]+)"[^>]*>(?P<link>.*?)</a>'
                          r"|<em>(?P<em>.*?)</em>", re.S)


def _plain(fragment: str) -> str:
    """HTML as plain text, escaped for Markdown."""
    return escape(html.unescape(re.sub(r"<[^>]+>", "", fragment)))


def entry_markdown(entry: str) -> str:
    """A bibliography entry of the site (its `<p>`) as Markdown: the titles the page sets in
    italics in italics, its links (DOIs, arXiv) as links, the rest as plain text."""
    entry = re.search(r"<p>(.*?)</p>", entry, re.S)[1] if "<p>" in entry else entry
    parts, last = [], 0
    for m in ENTRY_MARKUP.finditer(entry):
        parts.append(_plain(entry[last:m.start()]))
        if m["href"]:
            parts.append(f"[{_plain(m['link']).strip()}]({html.unescape(m['href'])})")
        else:
            parts.append(f"*{_plain(m['em']).strip()}*")
        last = m.end()
    parts.append(_plain(entry[last:]))
    return " ".join("".join(parts).split())  # no-break spaces too: one line, plain spaces


def cited_order(keys: list[str], refs: dict[str, Reference], site: Site) -> list[str]:
    """Cite keys in the bibliography page's order (by author, year, title), which is the
    order sphinxcontrib-bibtex gives the keys of one citation, whatever the source's."""
    def place(key):
        ref = refs.get(key)
        fallback = (ref.names[:1], ref.year, ref.title) if ref else ((key,), "", "")
        return (site.bib_rank.get(key, -1) if site.bib_rank else 0, fallback)

    return sorted(keys, key=place)


def references(keys: list[str], refs: dict[str, Reference], site: Site) -> str:
    """The Markdown cell of the works a chapter cites, each entry at its cite key's target
    (where the citations link), as the bibliography page writes it (the sources' authors,
    year and title where the site lacks the entry), in its order, then the link to it."""
    lines = ["## References", ""]
    for key in cited_order(keys, refs, site):
        ref = refs[key]
        text = site.bib_text.get(key) or escape(
            f"{', '.join(ref.names)} ({ref.year}). {ref.title}.")
        lines.append(f"- {target(key)}{text}")
    lines += ["", f"All the works the book cites: [the bibliography]"
              f"({site.base}book/bibliography.html)."]
    return "\n".join(lines)


# --- the checks ----------------------------------------------------------------------------

def hrefs(tokens) -> list[str]:
    """The addresses of the links and images of a text parsed by markdown-it."""
    found = []
    for t in tokens:
        if t.type == "html_block":
            found += re.findall(r'\b(?:href|src)="([^"]*)"', t.content)
        for kid in t.children or []:
            if kid.type in ("link_open", "image"):
                found.append(kid.attrs.get("href") or kid.attrs.get("src") or "")
            elif kid.type == "html_inline":
                found += re.findall(r'\b(?:href|src)="([^"]*)"', kid.content)
    return found


def link_problems(links: list[str], site: Site | None, names: set[str]) -> list[str]:
    """The links that go astray from an edition whose targets are `names`: an anchor the
    notebook lacks, a chapter's web page (the student has the notebook open: its own
    chapter is in it, the others are editions too) and, where the site was built, a page
    or anchor of the online book that the site lacks."""
    found = []
    for href in links:
        if href.startswith("#"):
            if href[1:] not in names:
                found.append(f"a link to an anchor the notebook lacks: {href}")
        elif site and site.base and href.startswith(site.base) and CHAPTER_PAGE.match(
                href.removeprefix(site.base).partition("#")[0]):
            found.append(f"a link to a chapter's web page, not to its edition: {href}")
        elif site and site.root and href.startswith(site.base):
            page, _, anchor = href.removeprefix(site.base).partition("#")
            ids = site.ids(page or "index.html")
            if ids is None:
                found.append(f"a link to a page the built site lacks: {href}")
            elif anchor and anchor not in ids:
                found.append(f"a link to an anchor the built site lacks: {href}")
    return found

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
  "Author (Year)", each linked to its entry in the references the edition ends with (at
  the cite key); `{py:func}` and the other `py` roles the short name in code font, linked
  to the API page; `{eq}`, `{numref}`, `{ref}` and `{doc}` the number or title the web page
  shows, linked as MyST's links to a label (`[text](#label)`) are: into the notebook for
  this chapter, to that chapter's edition for another (tools/colab_links.py says where
  each link goes, and why).
- Numbers and anchors come from the built site (_build/html: objects.inv, the equation
  numbers and figure captions of the chapter pages, the bibliography page). A label the
  site lacks or numbers otherwise (a site older than the notebooks) takes the number the
  sources give, counted as Sphinx counts (the tests check both agree on a current site),
  and the tool says so: run `make book` and build again.
- A labelled display equation `$$ ... $$ (label)` gets `\\tag{N}` with the page's number,
  after the target (`<a name>`) its links land on; a `(label)=` target line becomes that
  target, at the end of the heading or the start of the paragraph it labels; `%` comments
  go. An inline formula `$...$` is joined onto one line.
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

`notebook_problems(nb, site)` is the checker the tests run on every edition
(`problems(markdown, site)` on one text): the MyST Colab would show raw, unbalanced maths,
inline formulas across lines, links to an anchor without its target or to a chapter's web
page, and links to the online book that the built site lacks. The tool prints one line
per chapter (MyST constructs before -> after) and a table, then what it resolved from the
sources because the site is older; it exits 1 when an edition has a problem or an
unresolved name (links the site lacks only warn: `make book`).
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
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    """A module of tools/ from its file (tools/ is no package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


links = _load("colab_links", ROOT / "tools" / "colab_links.py")  # the site and where links go
colab = links.colab  # companion/run/colab.py, without `companion`'s torch import
prose_budget = _load("prose_budget", ROOT / "tools" / "prose_budget.py")
Site, Reference, online_book = links.Site, links.Reference, links.online_book
bibliography, load_site, index_sources = links.bibliography, links.load_site, links.index_sources
_source, _escape = links.source, links.escape

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
# A labelled display, `$$ ... $$ (label)`: its body holds no `$$`, so a match never starts
# at the closing `$$` of an earlier display (an opening `$$` is never followed by a label).
LABELLED = re.compile(r"\$\$(?P<body>(?:(?!\$\$).)*?)\$\$[ \t]*\((?P<label>[^()\s]+)\)[ \t]*$",
                      re.M | re.S)
# One scan over a text, left to right: a role, a code span (left as it is) or a link to a
# label of MyST's (`](#label)`).
INLINE = re.compile(r"\{(?P<role>[a-z][\w:+.-]*)\}(?P<ticks>`+)(?P<body>.+?)(?P=ticks)"
                    r"|(?P<code>(?P<cticks>`+).+?(?P=cticks))"
                    r"|\]\(#(?P<anchor>[^)\s]+)\)", re.S)
TITLED = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$", re.S)
INLINE_MATH = re.compile(r"\$\$.+?\$\$|\$[^$]+\$", re.S)
MD = MarkdownIt("commonmark")


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

    @property
    def edition(self) -> str:
        """The Colab address of a chapter's edition, `{stem}` for its name."""
        return links.edition_url(self.url, EDITION_BRANCH)


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
    cited: list[str] = field(default_factory=list)  # the cite keys, first citation first

    def link(self, href: str) -> str:
        """Where a link to `href` (a page of the site#anchor) goes from this notebook: an
        anchor in it, another chapter's edition, or the online book (links.route)."""
        return links.route(href, self.page, self.book.base, self.book.edition)

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
        return LABELLED.sub(self._tag, text)

    def _inline_match(self, m: re.Match) -> str:
        if m["code"]:
            return m["code"]
        if m["anchor"]:
            return f"]({self._label_href(m['anchor'])})"
        return self.role(m["role"], m["body"])

    def _tag(self, m: re.Match) -> str:
        """A labelled display with the page's number as its `\\tag`, after the target its
        links land on."""
        hit = self.lookup("equations", m["label"])
        if hit is None:
            self.unresolved.append(f"equation label {m['label']}")
            return f"$${m['body']}$$"
        return f"{_target(hit[0])}$${m['body']}\\tag{{{hit[1].strip('()')}}}$$"

    def _label_href(self, label: str) -> str:
        """A MyST link to a label: the page that holds the label (found in the sources,
        which know every target line), at the label's anchor."""
        hit = (self.book.sources.labels.get(label) or self.book.site.labels.get(label)
               or self.lookup("numbers", label))
        return self.link(hit[0] if hit else f"{self.page}#{label}")

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
        keys = [k.strip() for k in body.split(",")]
        for key in links.cited_order(keys, self.book.refs, self.book.site):
            ref = self.book.refs.get(key)
            if ref is None:
                self.unresolved.append(f"citation {key}")
                parts.append(key)
                continue
            if key not in self.cited:
                self.cited.append(key)
            shown = f"{ref.authors} ({ref.year})" if textual else f"{ref.authors} {ref.year}"
            parts.append(f"[{_escape(shown)}](#{key})")  # its entry in the references cell
        return ", ".join(parts) if textual else f"({'; '.join(parts)})"

    def _py(self, name: str, body: str) -> str:
        title, target = _titled(body)
        target = target.lstrip("!")
        short = target.lstrip("~.")
        shown = title or (short.split(".")[-1] if target.startswith("~") else short)
        if not title and name.split(":")[1] in ("func", "meth"):
            shown += "()"
        uri = self._py_uri(short)
        return f"[`{shown}`]({self.link(uri)})" if uri else f"`{shown}`"

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
        return f"[{_escape(title or hit[1] or label)}]({self.link(hit[0])})"

    def _numref(self, name: str, body: str) -> str:
        title, label = _titled(body)
        hit = self.lookup("numbers", label) or self.lookup("equations", label)
        if hit is None:
            self.unresolved.append(f"numbered label {label}")
            return _escape(title or label)
        number = hit[1].split(" ", 1)[-1]
        shown = title.replace("{number}", number) if title else hit[1]
        return f"[{_escape(shown)}]({self.link(hit[0])})"

    def _eq(self, name: str, body: str) -> str:
        title, label = _titled(body)
        hit = self.lookup("equations", label)
        if hit is None:
            self.unresolved.append(f"equation {label}")
            return _escape(title or label)
        return f"[{_escape(title or hit[1])}]({self.link(hit[0])})"

    def _doc(self, name: str, body: str) -> str:
        title, target = _titled(body)
        doc = target.lstrip("/") if target.startswith("/") else \
            Path("notebooks", target).as_posix()
        doc = re.sub(r"[^/]+/\.\./", "", doc).removesuffix(".md").removesuffix(".ipynb")
        page, shown = self.book.site.docs.get(doc, (f"{doc}.html", doc))
        return f"[{_escape(title or shown)}]({self.link(page)})"

    # blocks ---------------------------------------------------------------------------------

    def markdown(self, text: str) -> str:
        """A Markdown cell of the book as Colab shows it."""
        out = "".join(self.blocks(text.split("\n"))).rstrip("\n")
        out = join_inline_math(guard_display_math(out))
        return out + "\n" if text.endswith("\n") else out

    def blocks(self, lines: list[str]) -> list[str]:
        """Lines of MyST as pieces of CommonMark: text resolved, directives converted, code
        fences kept; in document order, so that the glued values are met in order. A target
        line `(label)=` becomes the target of the label's links, on the next block."""
        out, prose, i, in_math = [], [], 0, False
        labels = []  # of the target lines not yet placed

        def flush():
            if prose:
                out.append(self.inline("\n".join(prose)) + "\n")
                prose.clear()
            if labels and not in_math:  # before a fence: on a line of their own
                out.append("".join(map(links.target, labels)) + "\n\n")
                labels.clear()

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
            target = None if in_math else TARGET_LINE.match(line)
            if target:
                prose.append("")  # a target line also ends a paragraph
                labels.append(target["label"])
            elif not in_math and COMMENT_LINE.match(line):
                pass  # a MyST comment: not shown
            elif labels and line.strip() and not in_math:
                prose += _anchored(line, labels)
                labels.clear()
            else:
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
        tag = mark = ""
        if label:
            hit = self.lookup("equations", label)
            tag, mark = (f"\\tag{{{hit[1].strip('()')}}}", _target(hit[0])) if hit else ("", "")
            if not hit:
                self.unresolved.append(f"equation label {label}")
        return _indented(f"{mark}$$\n" + "\n".join(body).strip("\n") + f"\n{tag}$$",
                         indent) + "\n"

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
        elif options.get("name"):  # no caption to hold the target: the image does
            text = links.target(options["name"]) + text
        return _indented(text, indent) + "\n"

    def caption(self, caption: str, label: str | None) -> str:
        """A figure's caption as a paragraph, led by its number when it has one, and by the
        target of the links to the figure (right under it) when it has a label."""
        hit = self.lookup("numbers", label) if label else None
        lead = f"{_target(hit[0])}**{hit[1]}.** " if hit else ""
        if label and not hit:
            lead = links.target(label)
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


# One scan of prose, left to right: a code span, an escaped dollar, a display, an inline
# formula (its body in `inline`).
MATH_SCAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)|\\\$|\$\$.+?\$\$|\$(?P<inline>[^$]+)\$", re.S)


def join_inline_math(text: str) -> str:
    """Every inline formula `$...$` on one line: CommonMark renderers that take the maths
    out first (Jupyter's, Colab's) accept one across a line break, line-oriented ones do
    not, and a continuation line such as `- x$` could be read as a list item."""
    def one(m: re.Match) -> str:
        if not m["inline"] or "\n" not in m["inline"]:
            return m[0]
        return "$" + re.sub(r"[ \t]*\n[ \t]*", " ", m["inline"]) + "$"

    return _in_prose(text, lambda prose: MATH_SCAN.sub(one, prose))


def broken_inline_math(text: str) -> list[str]:
    """The inline formulas of a Markdown text that span a line break."""
    found = []

    def collect(prose: str) -> str:
        found.extend(m[0] for m in MATH_SCAN.finditer(prose) if m["inline"] and "\n" in m[0])
        return prose

    _in_prose(text, collect)
    return found


def _in_prose(text: str, change) -> str:
    """`text` with `change` applied to each run of lines outside code blocks."""
    lines = text.split("\n")
    code = {n for t in MD.parse(text) if t.type in ("fence", "code_block") and t.map
            for n in range(*t.map)}
    out, run = [], []
    for n, line in enumerate(lines):
        if n in code:
            out += change("\n".join(run)).split("\n") if run else []
            out.append(line)
            run = []
        else:
            run.append(line)
    out += change("\n".join(run)).split("\n") if run else []
    return "\n".join(out)


def _anchored(line: str, labels: list[str]) -> list[str]:
    """The first line of a block, with the targets of the labels of the target lines before
    it: at the end of a heading (Colab's table of contents shows its text), at the start of
    a paragraph, or on a line of their own before anything else (a table, a list, HTML, a
    display), where a prefix would change what the line is."""
    marks = "".join(map(links.target, labels))
    if re.match(r"^ {0,3}#{1,6}\s", line):
        return [f"{line.rstrip()} {marks}"]
    if re.match(r"^\s*([|>$<]|[-+*](\s|$)|\d{1,9}[.)](\s|$))", line):
        return [marks, "", line]
    return [re.sub(r"^\s*", lambda m: m[0] + marks, line, count=1)]


def _target(href: str) -> str:
    """The target of the links to `href` (page#anchor): its anchor, in this notebook."""
    return links.target(href.partition("#")[2])


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
    nb["cells"] = cells + _references_cell(chapter)
    return nb, chapter


def _references_cell(chapter: Chapter) -> list[dict]:
    """The works the chapter cites, as a last Markdown cell: its citations link there."""
    if not chapter.cited:
        return []
    book = chapter.book
    text = links.references(chapter.cited, book.refs, book.site)
    return [{"cell_type": "markdown", "id": "colab-references", "metadata": {},
             "source": text}]


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


def problems(markdown: str, site: Site | Path | str | None = None,
             names: set[str] | None = None) -> list[str]:
    """What Colab would show wrong in a Markdown cell, read as CommonMark (markdown-it-py):
    MyST left raw (roles, directive fences, colon fences, target lines, comments,
    equation labels outside `\\tag`), unbalanced `$` or `$$`, an inline formula across a
    line break, a link to an anchor without a target among `names` (the notebook's; the
    cell's own by default) and, given a site, a link to a chapter's web page and links to
    the online book whose page or anchor the built site lacks."""
    own, lacking = checked(markdown, site, names)
    return own + lacking


def checked(markdown: str, site: Site | Path | str | None = None,
            names: set[str] | None = None) -> tuple[list, list]:
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
    found += [f"an inline formula across a line break: {f[:60]}" for f in
              broken_inline_math(markdown)]
    names = set(links.targets(markdown)) if names is None else names
    astray = links.link_problems(links.hrefs(tokens), _as_site(site), names)
    lacking = [p for p in astray if "the built site lacks" in p]
    return found + [p for p in astray if p not in lacking], lacking


def notebook_problems(nb: dict, site: Site | None = None) -> tuple[list, list]:
    """checked() of every Markdown cell of an edition, its anchors looked up in the whole
    notebook (its Markdown cells and the Markdown its code shows); the site's missing links
    once each."""
    cells = [_source(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    names = {n for text in cells + links.markdown_outputs(nb) for n in links.targets(text)}
    found = [checked(text, site, names) for text in cells]
    return ([p for own, _ in found for p in own],
            list(dict.fromkeys(p for _, lacking in found for p in lacking)))


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
    own, lacking = notebook_problems(nb, book.site)
    return Report(Path(path).stem, myst_counts(_cells_text(source)),
                  myst_counts(_cells_text(nb)),
                  sum(c.get("metadata", {}).get("cellView") == "form" for c in nb["cells"]),
                  own, lacking, chapter)


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
    changed = links.changed_since_site(book.site, paths)
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

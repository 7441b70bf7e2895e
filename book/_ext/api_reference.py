"""The API reference's build-time side (book/api/*.md): autodoc imports *this* checkout's
`companion`, never an installed copy, and the reference pages are listed in one place.

Autodoc imports the package while Sphinx reads book/api/<module>.md. An editable install
(`pip install -e .`) may point at another checkout, and a regular install at a stale copy;
so this extension puts the book's root first on sys.path before anything imports
`companion`, and fails the build if `companion` was already imported from elsewhere.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
from pathlib import Path

from sphinx.errors import ExtensionError

PACKAGE = "companion"


RUN = f"{PACKAGE}.run"  # the machinery's wing: listed after the mathematics


def public_modules(root: Path) -> list[str]:
    """Every module of `companion` whose dotted name has no part starting with "_": the
    mathematics sorted, then the machinery (companion.run) sorted. The subpackages hold
    modules only: their pages are their modules'."""
    sys.path.insert(0, str(root))
    try:
        pkg = importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
    names = []
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{PACKAGE}."):
        if info.ispkg or any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(names, key=lambda name: (is_machinery(name), name))


def is_machinery(module: str) -> bool:
    """Whether `module` belongs to the part "Running the book" (companion.run)."""
    return module == RUN or module.startswith(f"{RUN}.")


def page_name(module: str) -> str:
    """book/api/<page>.md for a module: companion.kl -> kl, companion.models.vae -> models/vae,
    companion.run.checks -> run/checks."""
    return module.removeprefix(f"{PACKAGE}.").replace(".", "/")


def _import_from_the_book(app) -> None:
    root = Path(app.srcdir).resolve()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None:
        where = Path(loaded.__file__).resolve()
        if root not in where.parents:
            raise ExtensionError(
                f"{PACKAGE} was imported from {where} before the API reference could point "
                f"autodoc at {root / PACKAGE}: the pages would document another copy. "
                f"Run the build with PYTHONPATH={root}.")




# --- docstrings: plain text for help(), safe reStructuredText for the page -----------------
# companion's docstrings are written for help() and the source: formulas in plain text
# (|x|^2, KL(p || q), z_>i, *args), and indented blocks of aligned formulas. Read as reST,
# `|...|` is a substitution, `z_` a link target, a lone `*` starts emphasis, and an indented
# block after a line of text is an error. clean_docstring makes them safe before napoleon
# reads them: text keeps its words (the characters above escaped), an indented block becomes
# a `text` literal block (drawn as written, monospaced; the book's CSS wraps it in the
# column), and napoleon's sections (Args:, Returns:, ...) and `backticked` spans pass as
# they are. Deliberate emphasis (*words*, **words**) is kept.
NAPOLEON_SECTION = re.compile(
    r"^\s*(Args|Arguments|Parameters|Other Parameters|Keyword Args|Keyword Arguments|"
    r"Returns?|Yields?|Raises|Warns|Attributes|Methods|Notes?|Examples?|Warnings?|"
    r"References|See Also|Todo|Tip|Hint|Important|Caution|Danger|Error|Attention|"
    r"Receives?):\s*$")
_BACKTICKS = re.compile(r"(?::[\w:+-]+:)?`[^`]*`_{0,2}")
_EMPHASIS = re.compile(r"(?<![\w*\\])(\*{1,2})([A-Za-z][A-Za-z0-9 ',-]*[A-Za-z0-9])\1(?![\w*])")
_TRAILING_UNDERSCORE = re.compile(r"(?<=\w)_(?=[\s\-.,:;!?\\/'\")\]}>]|$)")


def _escape_text(text: str) -> str:
    """Escape |, * and trailing _ outside `...` spans and deliberate *emphasis*."""
    out, pos = [], 0
    for m in _BACKTICKS.finditer(text):
        out.append(_escape_plain(text[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
        if pos < len(text) and text[pos].isalnum():
            out.append("\\ ")  # `prefix`es: an escaped space ends the span, shows nothing
    out.append(_escape_plain(text[pos:]))
    return "".join(out)


def _escape_plain(text: str) -> str:
    kept = []

    def keep(m):
        kept.append(m.group(0))
        return f"\0{len(kept) - 1}\0"

    text = _EMPHASIS.sub(keep, text)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")
    text = _TRAILING_UNDERSCORE.sub(r"\\_", text)
    return re.sub(r"\0(\d+)\0", lambda m: kept[int(m.group(1))], text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def clean_docstring(lines: list[str]) -> list[str]:
    """A plain-text docstring (its lines, dedented as inspect.getdoc does) as safe reST."""
    out: list[str] = []
    text: list[str] = []  # lines of running text, escaped together (spans cross lines)

    def flush():
        if text:
            out.extend(_escape_text("\n".join(text)).split("\n"))
            text.clear()

    i, section_indent = 0, None
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            text.append(line)
            i += 1
            continue
        ind = _indent(line)
        if section_indent is not None and ind <= section_indent:
            section_indent = None
        if NAPOLEON_SECTION.match(line):
            section_indent = ind
            text.append(line)
            i += 1
            continue
        prev = next((p for p in reversed(out + text) if p.strip()), None)
        if section_indent is None and prev is not None and ind > _indent(prev):
            # an indented block of formulas: a literal block, drawn as written
            block = []
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) >= ind):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            flush()
            while out and not out[-1].strip():
                out.pop()
            base = _indent(out[-1]) if out else 0
            out.extend(["", " " * base + ".. code-block:: text", ""])
            out.extend(" " * (base + 4) + b[ind:] if b.strip() else "" for b in block)
            out.append("")
            continue
        text.append(line)
        i += 1
    flush()
    return out


def _process_docstring(app, what, name, obj, options, lines):
    lines[:] = clean_docstring(list(lines))
    if what in ("attribute", "data", "property") and lines:
        # napoleon reads an attribute's first line as "type: description"; companion's
        # say "L_0 per image (nats): ...". An empty comment first keeps the line text.
        first = _BACKTICKS.sub("", next((x for x in lines if x.strip()), ""))
        if re.search(r"(?<!:):(?!:)", first):
            lines[:0] = ["..", ""]


def _dataclass_defaults(app, what, name, obj, options, signature, return_annotation):
    """A dataclass field's default_factory as its call, `models: list[GaussianMixture] =
    list()`: autodoc writes `= <factory>`, which is no Python, so Sphinx gives up parsing the
    whole signature and prints its types as raw text (`list[~companion.toy.GaussianMixture]`,
    one unbreakable word on a phone)."""
    if what != "class" or not signature or "<factory>" not in signature:
        return None
    for field in getattr(obj, "__dataclass_fields__", {}).values():
        factory = getattr(field, "default_factory", None)
        if callable(factory):
            signature = re.sub(rf"(\b{field.name}\b[^=]*?= )<factory>",
                               rf"\g<1>{factory.__name__}()", signature, count=1)
    return signature, return_annotation


def _public_bases(app, name, obj, options, bases):
    """Show a private base class (_Codec) as the public classes it derives from."""
    i = 0
    while i < len(bases):
        base = bases[i]
        if base.__name__.startswith("_") and base.__module__.startswith(PACKAGE):
            bases[i:i + 1] = [b for b in base.__bases__ if b not in bases]
        else:
            i += 1


def setup(app):
    _import_from_the_book(app)
    # before napoleon (priority 500), which turns Args: sections into field lists
    app.connect("autodoc-process-docstring", _process_docstring, priority=400)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-signature", _dataclass_defaults)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

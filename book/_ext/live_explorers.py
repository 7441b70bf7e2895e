"""Explorers that move on the web page: no kernel, no server, no CDN.

A chapter's explorer cell (the one that calls `kl_explorer(...)` and friends, which only
move in Jupyter or Colab) names its web explorer in its metadata:

    explorer: {name: kl, args: {...}, widget: true}

With `widget: true` the cell's output (the ipywidget, which needs a kernel) is replaced by
the explorer; without it (a diffusion chapter's figure or table, which stays as the static
view) the explorer follows the cell's output.

At build time, for the HTML builders only, this extension computes the explorer's states
with `companion.page_explorers.page_state(name, **args)` (the same companion functions the
notebook's widget calls), and puts them in the cell's place of the widget's output as JSON
inside a `<div class="book-explorer" hidden>`. book/_ext/live_explorers/explorers.js, added
only to pages that have an explorer, draws the controls and the figure from them; without
JavaScript the div stays hidden, a line says that a live version needs JavaScript, and the
static snapshot figure that follows each explorer in the chapter is what the reader sees (and what the PDF shows: other builders are left
alone). The states are cached by a hash of companion's sources and the arguments, under
the doctree folder, so an incremental build does not compute them again.

The chapters' Colab badges, images on colab.research.google.com, are served from the
book's own _static folder (a local drawing of the badge, `colab-badge.svg`); the link to
Font Awesome 4 on a CDN that matplotlib's animations (`to_jshtml`) carry is dropped, since
the theme's local Font Awesome draws their buttons' icons.

The ipywidgets embed manager and require.js, which myst-nb would load from two CDNs on
pages with saved widget state, are switched off in _config.yml (`nb_ipywidgets_js: {}`):
their sliders could not run the Python callbacks, and the book makes no external request.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import sys
from pathlib import Path

from docutils import nodes
from sphinx.util import logging

ROOT = Path(__file__).resolve().parents[2]
STATIC = Path(__file__).resolve().parent / "live_explorers"
logger = logging.getLogger(__name__)
SCRIPT, STYLE, BADGE = "book-explorers.js", "book-explorers.css", "colab-badge.svg"
JSHTML_ICONS = "maxcdn.bootstrapcdn.com/font-awesome/"
JSHTML_ICONS_LINK = re.compile(r'<link rel="stylesheet"\s+href="https://'
                               + re.escape(JSHTML_ICONS) + r'[^"]*">')


def _this_checkout() -> None:
    """companion is imported from the book's root, whatever is installed."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def _source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted((ROOT / "companion").rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def state_json(name: str, args: dict, cache: Path | None = None) -> str:
    """The explorer's state as JSON text, from the cache when companion has not changed (nor
    the stored arrays that args["stored"], a path from the book's root, names)."""
    stored = ""
    if "stored" in args:
        path_ = ROOT / args["stored"]
        stored = hashlib.sha256(path_.read_bytes()).hexdigest()
        args = {**args, "stored": str(path_)}
    key = hashlib.sha256(json.dumps([name, args, _source_hash(), stored],
                                    sort_keys=True).encode())
    path = cache / f"{name}-{key.hexdigest()[:16]}.json" if cache else None
    if path is not None and path.exists():
        return path.read_text()
    _this_checkout()
    import torch

    from companion.page_explorers import page_state

    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)  # small tensors: threads only pay for synchronization
    try:
        text = json.dumps(page_state(name, **args), separators=(",", ":"))
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


NOSCRIPT = ("An explorer that moves this figure's parameters appears here when JavaScript "
            "is on; the chapter's own static view is in this cell or the next one.")


def explorer_html(name: str, text: str) -> str:
    """The explorer's hidden div with its state, and, for a reader with JavaScript off, one
    line saying what they miss (the div stays hidden for them)."""
    safe = text.replace("</", "<\\/")  # nothing in the JSON can close the script element
    return (f'<div class="book-explorer" data-explorer="{html.escape(name)}" hidden>'
            f'<script type="application/json" class="book-explorer-state">{safe}</script>'
            f'</div><noscript><p class="bx-noscript">{html.escape(NOSCRIPT)}</p></noscript>')


def _insert_explorers(app, doctree, docname) -> None:
    if app.builder.format != "html":
        return
    cache = Path(app.doctreedir) / "live-explorers"
    for cell in doctree.findall(nodes.container):
        meta = cell.get("cell_metadata") or {}
        spec = meta.get("explorer")
        if cell.get("nb_element") != "cell_code" or not spec:
            continue
        name, args = spec["name"], spec.get("args", {})
        if "stored" in args and not (ROOT / args["stored"]).exists():
            # the arrays come from the chapter's run: until it has saved them the cell keeps
            # its static view (and test_every_widget_has_a_web_explorer lists it as open)
            logger.info(f"live_explorers: {args['stored']} is absent, no {name} explorer")
            continue
        raw = nodes.raw("", explorer_html(name, state_json(name, args, cache)), format="html")
        if spec.get("widget"):  # the cell shows the Jupyter widget: no kernel here to move it
            for out in [c for c in cell.children if c.get("nb_element") == "cell_code_output"]:
                cell.remove(out)
        cell.append(nodes.container("", raw, classes=["cell_output", "book-explorer-output"],
                                    nb_element="cell_code_output"))


def _page_assets(app, pagename, templatename, context, doctree) -> None:
    if app.builder.format != "html":
        return
    if 'class="book-explorer"' in context.get("body", ""):
        app.add_js_file(SCRIPT, defer="defer")
        app.add_css_file(STYLE)
    # Each chapter's Colab badge is an image on colab.research.google.com: the page shows a
    # local copy instead, so that opening the book sends no request off the machine.
    _this_checkout()
    from companion.run.colab import BADGE_IMAGE

    if "body" in context and BADGE_IMAGE in context["body"]:
        context["body"] = context["body"].replace(
            BADGE_IMAGE, context["pathto"]("_static/" + BADGE, 1))
    # matplotlib's animations (FuncAnimation.to_jshtml) link Font Awesome 4 from a CDN for
    # their buttons' icons; the theme's own Font Awesome (a local script) draws them.
    if "body" in context and JSHTML_ICONS in context["body"]:
        context["body"] = JSHTML_ICONS_LINK.sub("", context["body"])


def _static_path(app, config) -> None:
    config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("config-inited", _static_path)
    # doctree-resolved: each builder's own copy of the page, never the pickled doctree that
    # the next builder (make pdf's LaTeX) would read again
    app.connect("doctree-resolved", _insert_explorers)
    app.connect("html-page-context", _page_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""Figures of panels side by side shown one under the other on a phone (issue 95).

A figure's PNG made by the book's style carries where its panels are
(companion.panels: a text chunk). For each such image on a page this adds, after it, the
same image once per panel, each in a box that shows only that panel: on a phone
(book/_static/code-cells.css, under 600 px) the whole image is hidden and the panels stack
in reading order, each at most its own width; on a wider screen the panels are hidden. One
file, no script: a panel is the whole PNG moved inside a box (CSS percentages; a margin's
percentage is of the box's width, top and left alike), so the PDF, the Colab edition and a
page without CSS keep the one image. The box's `data-text-px` (the smallest text in the
panel, PNG px) is what the browser test measures on a phone.
"""

from __future__ import annotations

import html
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from companion import panels  # noqa: E402

IMG = re.compile(r'<img [^>]*src="(?P<src>[^"]*_images/(?P<name>[^"/]+\.png))"[^>]*?/?>')


def _px(text: float) -> str:
    """A panel's smallest text for data-text-px: JavaScript's parseFloat reads "Infinity"
    (a panel without text), not Python's "inf"."""
    return f"{text:g}" if math.isfinite(text) else "Infinity"


def _panels(tag: str, src: str, layout: panels.Layout) -> str:
    """The image's tag, marked as the whole, and its panels' boxes in reading order."""
    alt = re.search(r'alt="([^"]*)"', tag)
    label = f' aria-label="{alt.group(1)}"' if alt else ""
    width = layout.size[0]
    boxes = []
    for (x0, y0, x1, y1), text in zip(layout.boxes, layout.text_px, strict=True):
        w = x1 - x0
        boxes.append(
            f'<div class="book-panel" style="max-width: {w}px" data-text-px="{_px(text)}">'
            f'<div style="aspect-ratio: {w} / {y1 - y0}"><img src="{html.escape(src)}" '
            f'alt="" style="width: {100 * width / w:.4f}%; '
            f'margin-left: -{100 * x0 / w:.4f}%; margin-top: -{100 * y0 / w:.4f}%"></div></div>')
    whole = tag.replace("<img ", f'<img data-text-px="{_px(min(layout.text_px))}" '
                        'class="book-whole" ', 1)
    return (whole + f'<div class="book-panels" role="img"{label}>' + "".join(boxes)
            + "</div>")


def stack(app, pagename, templatename, context, doctree) -> None:
    body = context.get("body")
    if not body or "_images/" not in body:
        return
    files = {dest: src for src, dest in app.builder.images.items()}

    def swap(m: re.Match) -> str:
        source = files.get(m.group("name"))
        if source is None:
            return m.group(0)
        layout = panels.read(Path(app.srcdir, source))
        if layout is None:
            return m.group(0)
        if len(layout.boxes) < 2:
            return m.group(0).replace("<img ", f'<img data-text-px="{_px(layout.text_px[0])}" ', 1)
        return _panels(m.group(0), m.group("src"), layout)

    context["body"] = IMG.sub(swap, body)


def setup(app):
    app.connect("html-page-context", stack)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

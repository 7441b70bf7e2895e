"""Figures of panels side by side shown one under the other on a phone (issue 95).

A figure's PNG made by the book's style carries where its columns of panels are
(companion.panels: a text chunk). For each such image on a page this adds, after it, the
same image once per column, each in a box that shows only its column: on a phone
(book/_static/code-cells.css, under 600 px) the whole image is hidden and the columns stack,
each at most its own width; on a wider screen the columns are hidden. One file, no
script: the columns are the whole PNG moved inside a box (CSS percentages), so the PDF, the
Colab edition and a page without CSS keep the one image. The box's `data-text-px` (the
smallest text in the column, PNG px) is what the browser test measures on a phone.
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
    """A column's smallest text for data-text-px: JavaScript's parseFloat reads "Infinity"
    (a column without text), not Python's "inf"."""
    return f"{text:g}" if math.isfinite(text) else "Infinity"


def _columns(tag: str, src: str, layout: panels.Layout) -> str:
    """The image's tag, marked as the whole, and its columns' boxes."""
    alt = re.search(r'alt="([^"]*)"', tag)
    label = f' aria-label="{alt.group(1)}"' if alt else ""
    width = layout.size[0]
    boxes = []
    for (x0, x1), text in zip(layout.cuts, layout.text_px, strict=True):
        w = x1 - x0
        shift = 100 * x0 / w
        boxes.append(
            f'<div class="book-panel" style="max-width: {w}px" '
            f'data-text-px="{_px(text)}"><div style="aspect-ratio: {w} / {layout.size[1]}">'
            f'<img src="{html.escape(src)}" alt="" loading="lazy" '
            f'style="width: {100 * width / w:.4f}%; margin-left: -{shift:.4f}%"></div></div>')
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
        if len(layout.cuts) < 2:
            return m.group(0).replace("<img ", f'<img data-text-px="{_px(layout.text_px[0])}" ', 1)
        return _columns(m.group(0), m.group("src"), layout)

    context["body"] = IMG.sub(swap, body)


def setup(app):
    app.connect("html-page-context", stack)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

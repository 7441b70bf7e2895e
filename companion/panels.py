"""Where a figure's columns of panels sit in its PNG, written into the PNG, so that a phone
can show them one under the other.

A figure of panels side by side is one PNG. Shrunk whole to a phone's column (PHONE_PX) its
labels are drawn at 4-6 px. `layout(fig)` cuts the PNG into its columns of panels (axes
whose boxes overlap across, a colorbar with the axes before it; the cut halfway between
one column's box and the next) and finds the smallest text in each. `png(fig)`, the
notebook's PNG of a figure once `companion.plot.use_style()` ran, carries that layout in a
PNG text chunk (KEY); the book's page (book/_ext/panels.py) shows the columns stacked on a
phone, each at most its own width, and the browser test measures the text each one shows.

A figure with text of its own (a suptitle, a figure legend, `fig.text`) stays whole: that
text spans the columns and would be cut.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

KEY = "companion:panels"
PHONE_PX = 342  # a 390-px phone's article column, inside the figure's padding
DESKTOP_PX = 688  # the article column at a 1280-px window (companion.plot.COLUMN_PX)


@dataclass(frozen=True)
class Layout:
    """A PNG of `size` (width, height) px cut into columns `cuts` [(x0, x1), ...] (px, left
    to right, covering the width); `text_px[i]`: the smallest text in column i in PNG
    pixels (font points * dpi / 72; inf where it has none)."""

    size: tuple[int, int]
    cuts: tuple[tuple[int, int], ...]
    text_px: tuple[float, ...]

    def shown_text_px(self, column_px: float = PHONE_PX, stacked: bool = True) -> list[float]:
        """Each column's smallest text in CSS px on a column `column_px` wide: stacked, a
        column is shrunk only when it is wider than the column; whole, all of them by the
        PNG's width."""
        whole = min(1.0, column_px / self.size[0])
        return [t * (min(1.0, column_px / (x1 - x0)) if stacked else whole)
                for (x0, x1), t in zip(self.cuts, self.text_px, strict=True)]

    def to_json(self) -> str:
        text = [round(t, 1) if math.isfinite(t) else None for t in self.text_px]
        return json.dumps({"size": list(self.size), "cuts": [list(c) for c in self.cuts],
                           "text_px": text}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Layout:
        d = json.loads(text)
        return cls(tuple(d["size"]), tuple(tuple(c) for c in d["cuts"]),
                   tuple(math.inf if t is None else float(t) for t in d["text_px"]))


def _figure_text(fig) -> bool:
    """True if the figure draws text outside every axes: a suptitle or sup-label, a figure
    legend, fig.text."""
    own = list(fig.texts) + list(fig.legends)
    own += [getattr(fig, a, None) for a in ("_suptitle", "_supxlabel", "_supylabel")]
    return any(t is not None and t.get_visible() and
               (not hasattr(t, "get_text") or t.get_text().strip()) for t in own)


def _columns(spans: list[tuple[float, float, bool]]) -> list[list[float]]:
    """Spans (x0, x1, is_colorbar) sorted by x0 merged into columns [x0, x1]: a span that
    overlaps the column before it, or a colorbar, joins it."""
    columns: list[list[float]] = []
    for x0, x1, colorbar in sorted(spans):
        if columns and (x0 < columns[-1][1] or colorbar):
            columns[-1][1] = max(columns[-1][1], x1)
        else:
            columns.append([x0, x1])
    return columns


def layout(fig) -> Layout:
    """The columns of `fig`'s PNG as the notebook stores it (bbox_inches="tight" at the
    figure's dpi, savefig.pad_inches around), with the smallest text in each."""
    import matplotlib as mpl

    from .plot import _texts

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    dpi = fig.dpi
    box = fig.get_tightbbox(renderer).padded(mpl.rcParams["savefig.pad_inches"])
    width, height = int(box.width * dpi), int(box.height * dpi)  # as Agg sizes it

    def px(x_display: float) -> float:  # display px -> px of the PNG
        return (x_display / fig.dpi - box.x0) * dpi

    spans = [(px(b.x0), px(b.x1), hasattr(ax, "_colorbar"))
             for ax in fig.axes if ax.get_visible()
             for b in [ax.get_tightbbox(renderer)] if b is not None]
    columns = [] if _figure_text(fig) else _columns(spans)
    if len(columns) < 2:
        cuts = [(0, width)]
    else:
        edges = [0] + [round((a[1] + b[0]) / 2) for a, b in zip(columns, columns[1:], strict=False)]
        cuts = list(zip(edges, edges[1:] + [width], strict=True))
    text_px = [math.inf] * len(cuts)
    for t in _texts(fig, renderer):
        e = t.get_window_extent(renderer)
        x = px((e.x0 + e.x1) / 2)
        i = next((i for i, (_, x1) in enumerate(cuts) if x < x1), len(cuts) - 1)
        text_px[i] = min(text_px[i], t.get_fontsize() * dpi / 72)
    return Layout((width, height), tuple(cuts), tuple(text_px))


def png(fig) -> str | None:
    """The figure's PNG as IPython's inline formatter returns it (base64), with its
    layout in the text chunk KEY; None for an empty figure, as IPython does."""
    from IPython.core.pylabtools import print_figure

    if not fig.axes and not fig.lines:
        return None
    return print_figure(fig, "png", bbox_inches="tight", base64=True,
                        metadata={KEY: layout(fig).to_json()})


def read(path) -> Layout | None:
    """The layout a PNG file carries, or None (no chunk: a figure stored before it, or not
    a figure of the book's)."""
    from PIL import Image

    with Image.open(path) as im:
        text = getattr(im, "text", {}).get(KEY)
    return Layout.from_json(text) if text else None


def use_png() -> None:
    """Inside IPython, make the PNG of every matplotlib figure `png(fig)`."""
    try:
        from IPython import get_ipython
        from matplotlib.figure import Figure
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None:
        ip.display_formatter.formatters["image/png"].for_type(Figure, png)

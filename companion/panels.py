"""Where a figure's panels sit in its PNG, written into the PNG, so that a phone can show
them one under the other in reading order.

A figure of panels side by side is one PNG. Shrunk whole to a phone's column (PHONE_PX) its
labels are drawn at 4-6 px. `layout(fig)` cuts the PNG into boxes, one per panel in reading
order (row by row, left to right), and finds the smallest text in each. The panels are
found from the axes: axes whose boxes overlap across make one column (a colorbar joins the
axes before it), axes whose boxes overlap down make one row, and the cuts fall halfway
between neighbouring columns and rows. A figure of one column stays whole: its rows keep
their order and none of them is wider than the figure. `png(fig)`, the notebook's PNG of
a figure once `companion.plot.use_style()` ran, carries the layout in a PNG text chunk
(KEY); the book's page (book/_ext/panels.py) stacks the boxes on a phone, each at most its
own width, and the browser test measures the text each one shows.

A figure with text of its own (a suptitle, a figure legend, `fig.text`) stays whole: that
text spans the panels and would be cut.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from matplotlib.text import Text

KEY = "companion:panels"
PHONE_PX = 342  # a 390-px phone's article column, inside the figure's padding


@dataclass(frozen=True)
class Layout:
    """A PNG of `size` (width, height) px cut into `boxes` [(x0, y0, x1, y1), ...] (px, y
    down, in reading order, covering every panel); `text_px[i]`: the smallest text in box i
    in PNG pixels (font points * dpi / 72; inf where it has none)."""

    size: tuple[int, int]
    boxes: tuple[tuple[int, int, int, int], ...]
    text_px: tuple[float, ...]

    def shown_text_px(self, column_px: float = PHONE_PX, stacked: bool = True) -> list[float]:
        """Each box's smallest text in CSS px on a column `column_px` wide: stacked, a box
        is shrunk only when it is wider than the column; whole, all of them by the PNG's
        width."""
        whole = min(1.0, column_px / self.size[0])
        return [t * (min(1.0, column_px / (x1 - x0)) if stacked else whole)
                for (x0, _, x1, _), t in zip(self.boxes, self.text_px, strict=True)]

    def to_json(self) -> str:
        text = [round(t, 1) if math.isfinite(t) else None for t in self.text_px]
        return json.dumps({"size": list(self.size), "boxes": [list(b) for b in self.boxes],
                           "text_px": text}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Layout:
        d = json.loads(text)
        return cls(tuple(d["size"]), tuple(tuple(b) for b in d["boxes"]),
                   tuple(math.inf if t is None else float(t) for t in d["text_px"]))


def drawn_texts(fig, renderer) -> list:
    """The visible, non-empty texts the figure draws."""
    found = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    out = []
    for t in found:
        # tick labels of ticks outside the view are kept but not drawn
        if t.axes is not None and t in _all_ticklabels(t.axes) \
                and t not in _drawn_ticklabels(t.axes):
            continue
        if t.get_window_extent(renderer).width > 0:
            out.append(t)
    return out


def _all_ticklabels(ax):
    return {lab for axis in (ax.xaxis, ax.yaxis)
            for tick in axis.get_major_ticks() + axis.get_minor_ticks()
            for lab in (tick.label1, tick.label2)}


def _drawn_ticklabels(ax):
    return {lab for axis in (ax.xaxis, ax.yaxis)
            for lab in axis.get_ticklabels(which="both") if lab.get_visible()}


def _figure_text(fig) -> bool:
    """True if the figure draws text outside every axes: a suptitle or sup-label, a figure
    legend, fig.text."""
    own = list(fig.texts) + list(fig.legends)
    own += [getattr(fig, a, None) for a in ("_suptitle", "_supxlabel", "_supylabel")]
    return any(t is not None and t.get_visible() and
               (not hasattr(t, "get_text") or t.get_text().strip()) for t in own)


def _merged(spans: list[tuple[float, float, bool]]) -> list[list[float]]:
    """Spans (a, b, joins) sorted by a merged into bands [a, b]: a span that overlaps the
    band before it, or one that joins (a colorbar), goes into it."""
    bands: list[list[float]] = []
    for a, b, joins in sorted(spans):
        if bands and (a < bands[-1][1] or joins):
            bands[-1][1] = max(bands[-1][1], b)
        else:
            bands.append([a, b])
    return bands


def _cuts(bands: list[list[float]], end: int) -> list[tuple[int, int]]:
    """The intervals [0, end) cut halfway between neighbouring bands."""
    edges = [0] + [round((a[1] + b[0]) / 2) for a, b in zip(bands, bands[1:], strict=False)]
    return list(zip(edges, edges[1:] + [end], strict=True))


def _distance(box, x: float, y: float) -> float:
    """From (x, y) to the centre of box (x0, y0, x1, y1), along the axes."""
    x0, y0, x1, y1 = box
    return abs(x - (x0 + x1) / 2) + abs(y - (y0 + y1) / 2)


def _shows(ax) -> bool:
    """Whether axes `ax` draws anything: its axis, or an artist or title of its own (an
    `ax.axis("off")` slot left empty in a grid draws nothing)."""
    return bool(ax.axison or ax.images or ax.lines or ax.collections or ax.patches
                or ax.texts or ax.tables or ax.get_title() or ax.get_legend())


def layout(fig) -> Layout:
    """The panels of `fig`'s PNG as the notebook stores it (bbox_inches="tight" at the
    figure's dpi, savefig.pad_inches around), in reading order, with the smallest text in
    each."""
    import matplotlib as mpl

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    dpi = fig.dpi
    box = fig.get_tightbbox(renderer).padded(mpl.rcParams["savefig.pad_inches"])
    width, height = int(box.width * dpi), int(box.height * dpi)  # as Agg sizes it

    def px(x: float, y: float) -> tuple[float, float]:  # display px -> PNG px, y down
        return (x / fig.dpi - box.x0) * dpi, (box.y1 - y / fig.dpi) * dpi

    found = [(px(b.x0, b.y1), px(b.x1, b.y0), hasattr(ax, "_colorbar"))
             for ax in fig.axes if ax.get_visible() and _shows(ax)
             for b in [ax.get_tightbbox(renderer)] if b is not None]
    spans = [(p0[0], p1[0], bar) for p0, p1, bar in found]
    columns = [] if _figure_text(fig) else _merged(spans)
    if len(columns) < 2:
        boxes = [(0, 0, width, height)]
    else:
        rows = _merged([(p0[1], p1[1], False) for p0, p1, _ in found])
        grid = [(x0, y0, x1, y1) for y0, y1 in _cuts(rows, height)
                for x0, x1 in _cuts(columns, width)]
        # a cell of the grid with no panel (a row one panel short) is left out: on a
        # phone it would be a blank screen between two panels
        centres = [((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2) for p0, p1, _ in found]
        boxes = [b for b in grid
                 if any(b[0] <= x < b[2] and b[1] <= y < b[3] for x, y in centres)]
    text_px = [math.inf] * len(boxes)
    for t in drawn_texts(fig, renderer):
        e = t.get_window_extent(renderer)
        x, y = px((e.x0 + e.x1) / 2, (e.y0 + e.y1) / 2)
        i = next((i for i, (x0, y0, x1, y1) in enumerate(boxes)
                  if x0 <= x < x1 and y0 <= y < y1), None)
        if i is None:  # on an edge of the image
            i = min(range(len(boxes)), key=lambda j, x=x, y=y: _distance(boxes[j], x, y))
        text_px[i] = min(text_px[i], t.get_fontsize() * dpi / 72)
    return Layout((width, height), tuple(boxes), tuple(text_px))


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

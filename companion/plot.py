"""Figures in one consistent style: image grids, loss curves, densities.

The convention. The book's text column is COLUMN_PX = 688 pixels wide at a 1280-px
window, and a figure wider than that is shrunk to fit, text and all. On a 390-px phone the
column is 342 px (companion.panels.PHONE_PX): a figure of panels side by side shows them one
under the other (companion.panels), each shrunk only if it is wider than that, and a
figure of one panel shrinks whole. So a figure of several panels is made as wide as the
column and one panel about two thirds of it (`subplots`), its text is set in points that
stay readable on both, and `show` refuses a figure whose smallest text would be drawn
under MIN_TEXT_PX pixels on either, or whose axes have numbered ticks but no label.
"""

from __future__ import annotations

import re

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

from . import panels
from .run import checks

PALETTE = ["#1f5fa8", "#d1495b", "#2e933c", "#edae49", "#6c4f9c", "#00798c"]
COLUMN_PX = 688  # the article column of the site at a 1280-px window
DPI = 100  # figure.dpi and savefig.dpi of the style: 1 inch = 100 px
COLUMN_INCHES = COLUMN_PX / DPI
MIN_TEXT_PX = 9.0  # smallest readable text on screen, in CSS pixels
# a figure of one column of panels, as a fraction of COLUMN_PX: shrunk whole to a phone's
# 342-px column, its 9-pt (12.5-px) labels must keep 9 px, so it is at most 475 px wide
ONE_PANEL = 0.66


_PHONE = True  # use_style(phone=...): figures drawn and checked for a phone as well


def use_style(phone: bool = True) -> None:
    """The book's matplotlib style; PNG output (SVG changes every run and breaks nbval).

    phone=False keeps the figures of a page stored before they were drawn for a phone
    (chapters 6-20 until their re-execution): `subplots` makes one column of panels as
    wide as the column, shared axes hide their inner tick labels, legends are unframed,
    and `check` holds figures to the desktop column only. Their stored outputs, figure
    sizes included, stay what nbval compares.
    """
    global _PHONE
    _PHONE = bool(phone)
    mpl.rcParams.update({
        "figure.figsize": (COLUMN_INCHES, 3.6),
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.25,
        "axes.prop_cycle": mpl.cycler(color=PALETTE),
        "font.size": 10,
        "legend.fontsize": 9,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        # a legend drawn over data stays readable (on a phone a panel is small)
        "legend.frameon": phone,
        "legend.framealpha": 0.85,
        "legend.edgecolor": "none",
        "image.cmap": "gray",
        "svg.hashsalt": "companion",
    })
    try:  # inside IPython only
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("png")
    except Exception:
        pass
    panels.use_png()  # the PNG says where its columns of panels are, for a phone


def image_grid(x: torch.Tensor, nrow: int = 8, ax=None, title: str | None = None,
               pad: int = 1, background: float = 1.0):
    """Show a batch of images in a grid.

    x: (B, C, H, W) with values in [0, 1] (C = 1 or 3). background: the grey level of the
    gaps between images (1.0 white; 0.5 frames images that have white pixels at their edge).
    Returns the axes.
    """
    if x is None or isinstance(x, (str, bytes)):
        raise checks.ArgumentError(f"x must be images (B, C, H, W), got {x!r:.40}")
    nrow = checks.count("nrow", nrow)
    x = torch.as_tensor(x).detach().float().cpu()
    if x.numel() and (x.isnan().any() or x.max() > 2 or (x < -0.25).float().mean() > 0.1):
        # 0..255 bytes, or [-1, 1] images (most pixels dark at -1): what clamping would
        # show as a white or a black square; checks.images says how to convert. A Gaussian
        # decoder's draws, f(z) + sigma eps, overshoot a little and are clamped.
        checks.images("x", x)
    x = x.clamp(0, 1)
    if x.dim() != 4:
        raise ValueError(f"image_grid expects (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    ncol = min(nrow, b)
    nrows = int(np.ceil(b / ncol))
    background = checks.real("background (a grey level in [0, 1])", background, low=0.0,
                             high=1.0)
    canvas = torch.full((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad), background)
    for i in range(b):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        canvas[:, top:top + h, left:left + w] = x[i]
    if ax is None:
        _, ax = plt.subplots(figsize=(ncol * 0.6 + 0.4, nrows * 0.6 + 0.4))
    img = canvas[0] if c == 1 else canvas.permute(1, 2, 0)
    ax.imshow(img.numpy(), cmap="gray" if c == 1 else None, vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title)
    return ax


def smooth(values, window: int) -> np.ndarray:
    """Moving average over `window` points (the first ones average what exists)."""
    window = checks.count("window", window)
    if values is None or np.ndim(values) != 1:
        raise checks.ArgumentError(f"values must be a sequence of numbers, got "
                                   f"{type(values).__name__}")
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) < 2:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def loss_curves(history: dict, keys=("loss",), ax=None, window: int | None = None,
                xkey: str = "step", title: str | None = None, logy: bool = False,
                ylabel: str | None = None):
    """Plot history[key] against history[xkey] for each key, smoothed. Returns the axes.

    ylabel: default the key when there is one, else "loss".
    """
    for key in (*keys, xkey):
        if key not in history:
            raise KeyError(f"history has no {key!r}; it has {sorted(history)}")
    if ax is None:
        _, ax = plt.subplots()
    x = np.asarray(history[xkey])
    for key in keys:
        y = np.asarray(history[key], dtype=float)
        w = window or max(1, len(y) // 50)
        ax.plot(x[: len(y)], smooth(y, w), label=key)
    ax.set_xlabel(xkey)
    ax.set_ylabel(ylabel or (keys[0] if len(keys) == 1 else "loss"))
    if logy:
        ax.set_yscale("log")
    if len(keys) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    return ax


def subplots(nrows: int = 1, ncols: int = 1, height: float | None = None,
             width: float | None = None, **kwargs):
    """`plt.subplots` with the figure as wide as the text column (one column of panels:
    ONE_PANEL of it, so that its 9-pt labels stay 9 px on a phone).

    height: inches (default 2.6 per row of panels); width: a fraction of the column, for
    a figure that needs less. Constrained layout unless `layout` is given. With panels
    side by side every panel keeps its tick labels, shared axes or not: a phone shows the
    panels one under the other (companion.panels). Returns (fig, axes) like `plt.subplots`.
    """
    nrows, ncols = checks.count("nrows", nrows), checks.count("ncols", ncols)
    if width is None:
        width = ONE_PANEL if ncols == 1 and _PHONE else 1.0
    if not 0 < width <= 1:
        raise ValueError(f"width is a fraction of the column, in (0, 1]; got {width}")
    if height is None:
        height = 0.4 + 2.6 * nrows
    kwargs.setdefault("layout", "constrained")
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * COLUMN_INCHES, height), **kwargs)
    if ncols > 1 and _PHONE:  # on a phone each panel stands alone: all keep tick labels
        for ax in np.atleast_1d(axes).flat:
            ax.tick_params(labelleft=True, labelbottom=True)
    return fig, axes


# where `label_points` tries a label, in points from its point to the text's baseline:
# right, left, above, below, then the diagonals a row further out (rows of a 9-pt label's
# height apart, so that labels in neighbouring rows never touch)
_PLACES = ((5, -3), (-5, -3), (0, 8), (0, -14), (6, 19), (-6, 19), (6, -26), (-6, -26),
           (8, 30), (-8, 30), (8, -37), (-8, -37))


def log_labels(ax, axis: str = "y", mantissas=(1, 2, 3, 5)) -> None:
    """Label a log axis in plain numbers (300, not 3 x 10^2) at the ticks m x 10^k with m in
    `mantissas`, minor ticks included, so that a value between two decades can be read off;
    the other ticks stay, unlabelled. Call it after the axis is set to log."""
    if axis not in ("x", "y"):
        raise ValueError(f"axis is 'x' or 'y', got {axis!r}")
    which = ax.xaxis if axis == "x" else ax.yaxis
    if which.get_scale() != "log":
        raise ValueError(f"the {axis} axis is {which.get_scale()!r}, not 'log': set "
                         f"ax.set_{axis}scale('log') first")
    keep = {float(m) for m in mantissas}

    def text(value, _):
        if value <= 0:
            return ""
        m = value / 10.0 ** np.floor(np.log10(value) + 1e-9)
        return f"{value:g}" if any(abs(m - k) < 1e-6 for k in keep) else ""

    formatter = mpl.ticker.FuncFormatter(text)
    which.set_major_formatter(formatter)
    which.set_minor_formatter(formatter)


def label_points(ax, points, labels, *, colors=None, fontsize: float = 9) -> list:
    """Write labels[i] beside points[i] = (x, y) in data coordinates, each where it covers
    no earlier label and no point: the places `_PLACES` lists are tried in turn, and a label
    that fits nowhere takes the one where it covers least. Call it last, after everything
    else is drawn on the figure: it fixes the figure's layout as it is then. Returns the
    text objects.

    colors: one colour per label (default: the text colour)."""
    points, labels = list(points), [str(t) for t in labels]
    if len(points) != len(labels):
        raise ValueError(f"label_points needs one label per point: {len(points)} points, "
                         f"{len(labels)} labels")
    colors = [None] * len(labels) if colors is None else list(colors)
    renderer = _renderer(ax.figure)
    # the layout as drawn now stays: a layout engine run again later would move the points
    # and not the labels' offsets, and labels placed apart would meet
    ax.figure.set_layout_engine("none")
    r = fontsize * ax.figure.dpi / 72 / 3  # about a marker's half-width, in pixels
    marks = [mpl.transforms.Bbox.from_extents(x - r, y - r, x + r, y + r)
             for x, y in ax.transData.transform(np.asarray(points, dtype=float))]
    frame = ax.get_window_extent(renderer)
    placed, texts = [], []

    def write(point, label, color, dx, dy):
        scale = fontsize / 9  # the places are a 9-pt label's
        far = abs(dy) > 15  # a row out: a thin line says whose label it is
        t = ax.annotate(label, point, xytext=(dx * scale, dy * scale),
                        textcoords="offset points", fontsize=fontsize, color=color,
                        ha="left" if dx > 0 else "right" if dx < 0 else "center",
                        arrowprops=dict(arrowstyle="-", lw=0.6, color=color or "0.3",
                                        shrinkA=0, shrinkB=3) if far else None)
        t.update_positions(renderer)
        return t, mpl.text.Text.get_window_extent(t, renderer)  # the words, not the line

    def covered(box, others) -> float:
        """The area of `box` over others and outside the frame, in square pixels."""
        inside = mpl.transforms.Bbox.intersection(box, frame)
        out = box.width * box.height - (inside.width * inside.height if inside else 0)
        return out + sum(b.width * b.height for o in others
                         if (b := mpl.transforms.Bbox.intersection(box, o)) is not None)

    for i, (point, label, color) in enumerate(zip(points, labels, colors, strict=True)):
        others = placed + marks[:i] + marks[i + 1:]
        tried = []
        for dx, dy in _PLACES:
            t, box = write(point, label, color, dx, dy)
            cover = covered(box, others)
            if cover == 0:
                break
            tried.append((cover, dx, dy))
            t.remove()
        else:  # nowhere free: where it covers least
            _, dx, dy = min(tried)
            t, box = write(point, label, color, dx, dy)
        placed.append(box)
        texts.append(t)
    return texts


def _renderer(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def displayed_scale(fig, column_px: float = COLUMN_PX) -> float:
    """The factor the page shrinks `fig` by: its PNG (tight box, as the notebook stores
    it) is drawn at most `column_px` wide."""
    dpi = mpl.rcParams["savefig.dpi"]
    dpi = fig.dpi if dpi == "figure" else float(dpi)
    box = fig.get_tightbbox(_renderer(fig))
    natural = (box.width + 2 * mpl.rcParams["savefig.pad_inches"]) * dpi
    return min(1.0, column_px / natural)


def smallest_text(fig, column_px: float = COLUMN_PX) -> tuple[float, str]:
    """(pixels, text): the smallest text of `fig` as drawn on the page.

    pixels = font size in points * dpi / 72 * displayed_scale(fig).
    """
    renderer = _renderer(fig)
    scale = displayed_scale(fig, column_px)
    dpi = fig.dpi
    texts = panels.drawn_texts(fig, renderer)
    if not texts:
        return float("inf"), ""
    t = min(texts, key=lambda t: t.get_fontsize())
    return t.get_fontsize() * dpi / 72 * scale, t.get_text()


# a tick label that shows a number: 0.5, −2, 1e-3, $\\mathdefault{10^{-2}}$, 25%
_NUMBER = re.compile(r"[$]?(\\mathdefault\{)?[-−+]?[\d.,]+([eE][-−+]?\d+)?"
                     r"(\^\{[-−+]?\d+\})?\}?[$]?%?")


def unlabelled_axes(fig) -> list[str]:
    """Axes that show numbered ticks on an axis without a label, as 'x of "title"'."""
    missing = []
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible() or not ax.axison or hasattr(ax, "_colorbar"):
            continue
        for name, axis, label in (("x", ax.xaxis, ax.get_xlabel()),
                                  ("y", ax.yaxis, ax.get_ylabel())):
            shown = [lab for lab in axis.get_ticklabels() if lab.get_visible()
                     and _NUMBER.fullmatch(lab.get_text().strip())]
            if shown and not label.strip():
                missing.append(f"{name} of axes {i} ({ax.get_title()!r})")
    return missing


def check(fig, column_px: float = COLUMN_PX, min_px: float = MIN_TEXT_PX) -> None:
    """Raise ValueError if `fig` breaks the convention: text drawn under `min_px`
    pixels on a `column_px` column, or numbered ticks without an axis label."""
    px, text = smallest_text(fig, column_px)
    problems = []
    if px < min_px:
        w, _ = fig.get_size_inches()
        problems.append(
            f"its smallest text, {text[:40]!r}, would be drawn {px:.1f} px high "
            f"(under {min_px:g} px): the figure is {w:.1f} in wide and the page "
            f"shrinks it by {displayed_scale(fig, column_px):.2f}. Make it with "
            "companion.plot.subplots (column width) or use larger fonts"
        )
    layout = panels.layout(fig)
    phone = layout.shown_text_px(panels.PHONE_PX)
    if _PHONE and min(phone) < min_px:
        i = phone.index(min(phone))
        where = "the figure" if len(phone) == 1 else f"its panel {i + 1} of {len(phone)}"
        (x0, _, x1, _) = layout.boxes[i]
        problems.append(
            f"on a phone's {panels.PHONE_PX}-px column {where} ({x1 - x0} px wide) draws "
            f"its smallest text {min(phone):.1f} px high (under {min_px:g} px). Make a "
            "figure of one column of panels at most two thirds of the column wide "
            "(companion.plot.subplots does), put panels side by side, or use larger fonts")
    missing = unlabelled_axes(fig)
    if missing:
        problems.append("numbered ticks without an axis label on "
                        + ", ".join(missing) + ": set one with ax.set(xlabel=...)")
    if problems:
        raise ValueError("figure breaks the plotting convention: "
                         + "; ".join(problems))


def show(fig=None) -> None:
    """Check `fig` (default: every open figure) against the convention, then show."""
    figs = [fig] if fig is not None else [plt.figure(n) for n in plt.get_fignums()]
    for f in figs:
        check(f)
    plt.show()


def animation_html(anim, alt: str, default_mode: str = "once") -> str:
    """The HTML of matplotlib animation `anim` (FuncAnimation.to_jshtml): every frame
    drawn in advance, a slider and buttons that work on the page without a kernel.

    Two things to_jshtml leaves out are added: `alt`, the text a screen reader says (and a
    browser shows) for the frame image, which must say what the frames show in at least
    three words; and a max-width on the frames and the slider, which to_jshtml draws at
    their pixel size, so that they shrink to a phone's column."""
    import html

    if len(alt.split()) < 3:
        raise ValueError(f"alt text {alt!r}: say what the animation shows (at least "
                         "three words)")
    page = anim.to_jshtml(default_mode=default_mode)
    frame = re.compile(r'<img id="_anim_img')
    if len(frame.findall(page)) != 1 or page.count("<style>") != 1:
        raise ValueError("to_jshtml's HTML has changed: expected one <style> and one "
                         "frame <img id=\"_anim_img...\">")
    page = frame.sub(f'<img alt="{html.escape(alt, quote=True)}" id="_anim_img', page)
    return page.replace(
        "<style>",
        "<style>\n.animation, .animation img, .anim-slider {max-width: 100%;}", 1)

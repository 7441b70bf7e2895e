"""Figures in one consistent style: image grids, loss curves, densities."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

PALETTE = ["#1f5fa8", "#d1495b", "#2e933c", "#edae49", "#6c4f9c", "#00798c"]


def use_style() -> None:
    """The book's matplotlib style; PNG output (SVG changes every run and breaks nbval)."""
    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.6),
        "figure.dpi": 100,
        "savefig.dpi": 100,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.25,
        "axes.prop_cycle": mpl.cycler(color=PALETTE),
        "font.size": 10,
        "legend.frameon": False,
        "image.cmap": "gray",
        "svg.hashsalt": "companion",
    })
    try:  # inside IPython only
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("png")
    except Exception:
        pass


def image_grid(x: torch.Tensor, nrow: int = 8, ax=None, title: str | None = None,
               pad: int = 1):
    """Show a batch of images in a grid.

    x: (B, C, H, W) with values in [0, 1] (C = 1 or 3). Returns the axes.
    """
    x = torch.as_tensor(x).detach().float().cpu().clamp(0, 1)
    if x.dim() != 4:
        raise ValueError(f"image_grid expects (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    ncol = min(nrow, b)
    nrows = int(np.ceil(b / ncol))
    canvas = torch.ones(c, nrows * (h + pad) + pad, ncol * (w + pad) + pad)
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
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) < 2:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def loss_curves(history: dict, keys=("loss",), ax=None, window: int | None = None,
                xkey: str = "step", title: str | None = None, logy: bool = False):
    """Plot history[key] against history[xkey] for each key, smoothed. Returns the axes."""
    if ax is None:
        _, ax = plt.subplots()
    x = np.asarray(history[xkey])
    for key in keys:
        if key not in history:
            raise KeyError(f"history has no {key!r}; it has {sorted(history)}")
        y = np.asarray(history[key], dtype=float)
        w = window or max(1, len(y) // 50)
        ax.plot(x[: len(y)], smooth(y, w), label=key)
    ax.set_xlabel(xkey)
    if logy:
        ax.set_yscale("log")
    if len(keys) > 1:
        ax.legend()
    if title:
        ax.set_title(title)
    return ax
